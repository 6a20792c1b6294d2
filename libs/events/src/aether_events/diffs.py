"""The git broker's read API answer for a diff: written by the broker, read by the gateway.

A contract between two services, kept here once, like the events.
"""

from __future__ import annotations

import msgspec


class FileDiff(msgspec.Struct, frozen=True, kw_only=True):
    """One changed file: unified-diff lines (``+``, ``-``, `` ``, ``@@ …``); a binary
    file has none, a file cut short is ``truncated``."""

    path: str
    change: str
    added: int
    removed: int
    lines: list[str]
    binary: bool = False
    truncated: bool = False


class CommitDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What ``head_sha`` changed against ``base_sha``."""

    base_sha: str
    head_sha: str
    added: int
    removed: int
    files: list[FileDiff]
    truncated: bool = False
