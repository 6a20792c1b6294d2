"""The git broker's read API answers: a diff (written by the broker, read by the gateway)
and files at a commit (read by the planner).

Contracts between services, kept here once, like the events.
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


class RepositoryFiles(msgspec.Struct, frozen=True, kw_only=True):
    """The text of files at ``commit_sha``: ``files`` maps each path read to its text
    (UTF-8, undecodable bytes replaced), cut at the broker's bound where ``truncated``
    names it; ``omitted`` says why a path asked for has no text (``missing``,
    ``binary``, ``not a file``: a directory, a symbolic link, a submodule)."""

    commit_sha: str
    files: dict[str, str]
    truncated: list[str] = msgspec.field(default_factory=list)
    omitted: dict[str, str] = msgspec.field(default_factory=dict)
