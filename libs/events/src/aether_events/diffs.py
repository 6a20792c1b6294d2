"""The git broker's read API answers: a diff (written by the broker, read by the gateway)
and files at a commit (read by the planner).

Contracts between services, kept here once, like the events.
"""

from __future__ import annotations

import msgspec

_C_ESCAPES = {
    0x07: "\\a",
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0B: "\\v",
    0x0C: "\\f",
    0x0D: "\\r",
}
_C_ESCAPES |= {0x22: '\\"', 0x5C: "\\\\"}


def shown_path(path: bytes) -> str:
    """A path of a tree as git shows it (``core.quotePath`` off): as it is when it is
    valid UTF-8 with no control character, double quote or backslash; else in double
    quotes, C-style, every such byte escaped (``"bad\\377name"``, ``"two\\nlines"``). Two
    different paths are never shown alike, and what is shown holds no newline: a name
    a command made cannot pass for another file's or start a line of its own."""
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not any(
        ord(c) < 0x20 or c in '"\\\x7f' or 0x80 <= ord(c) < 0xA0 or c in "\u2028\u2029"
        for c in text
    ):
        return text
    out: list[str] = []
    for char in path.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\{code - 0xDC00:03o}")
        elif code in _C_ESCAPES:
            out.append(_C_ESCAPES[code])
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or char in "\u2028\u2029":
            out.extend(f"\\{byte:03o}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


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
