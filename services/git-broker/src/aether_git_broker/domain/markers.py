"""Conflict markers a commit adds to a file, free of I/O.

A resolution attempt starts from files holding both sides of each conflict between
git-style markers, and an agent can commit them as they are. The broker refuses a commit
that *adds* a complete block of markers to a text file: a line ``<<<<<<<``, then (after an
optional ``|||||||``) a line ``=======``, then a line ``>>>>>>>``, each marker being those
seven characters alone or followed by white space, as git's own check (``git diff
--check``) reads them. A line of seven such characters followed by anything else is not a
marker, and neither is an unfinished block.

What the file held before does not count: a block whose marker lines the file already
held, as many times, is the file's own (documentation of conflicts, a test's fixture).
Blocks are compared by their marker lines, not by position, so moving such a block or
editing what lies between its markers adds nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_BINARY_PROBE = 8000  # git's FIRST_FEW_BYTES: a NUL in them makes a file binary
_START, _BASE, _SEPARATOR, _END = b"<", b"|", b"=", b">"
_WHITE = b" \t\r\n\v\f"

# Bounds of a refusal's text: places named, and characters of one path.
MAX_PLACES = 20
MAX_PATH = 120


@dataclass(frozen=True)
class Block:
    """A complete block of markers: the line its ``<<<<<<<`` is on (from 1), and its
    marker lines (without their line ends), which say whether two blocks are the same."""

    line: int
    markers: tuple[bytes, ...]


def _marker(line: bytes) -> bytes | None:
    """The marker's character when ``line`` is a conflict marker, else ``None``."""
    first = line[:1]
    if first not in (_START, _BASE, _SEPARATOR, _END) or line[:7] != first * 7:
        return None
    if len(line) > 7 and line[7] not in _WHITE:
        return None
    return first


def may_hold_markers(content: bytes) -> bool:
    """A quick look: ``False`` when ``content`` can hold no block of markers."""
    return b"<<<<<<<" in content and b">>>>>>>" in content


def is_binary(content: bytes) -> bool:
    return b"\0" in content[:_BINARY_PROBE]


def marker_blocks(content: bytes) -> list[Block]:
    """Every complete block of conflict markers in ``content``, in order."""
    if not may_hold_markers(content):
        return []
    blocks: list[Block] = []
    start: int | None = None
    held: list[bytes] = []
    separated = False
    for number, line in enumerate(content.split(b"\n"), start=1):
        kind = _marker(line)
        if kind is None:
            continue
        text = line.rstrip(b"\r")
        if kind == _START:
            # A second start before the end begins the block again.
            start, held, separated = number, [text], False
        elif start is None:
            continue
        elif kind == _BASE and not separated:
            held.append(text)
        elif kind == _SEPARATOR and not separated:
            held.append(text)
            separated = True
        elif kind == _END and separated:
            blocks.append(Block(start, (*held, text)))
            start, held, separated = None, [], False
    return blocks


def added_marker_lines(before: bytes | None, after: bytes) -> tuple[int, ...]:
    """The lines (from 1) of ``after`` where a block of markers starts that ``before``
    (the file's content at the base, ``None`` when it had none) does not account for.
    Binary content holds no markers."""
    if is_binary(after):
        return ()
    blocks = marker_blocks(after)
    if not blocks:
        return ()
    own = Counter(block.markers for block in marker_blocks(before or b""))
    added: list[int] = []
    for block in blocks:
        if own[block.markers] > 0:
            own[block.markers] -= 1
        else:
            added.append(block.line)
    return tuple(added)


def markers_refusal(found: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    """Why a commit that adds markers is refused, naming the files and lines (at most
    ``MAX_PLACES`` of them, each path cut at ``MAX_PATH`` characters)."""
    places = [f"{_cut(path)}:{line}" for path, lines in found for line in lines]
    shown = ", ".join(places[:MAX_PLACES])
    if len(places) > MAX_PLACES:
        shown += f" and {len(places) - MAX_PLACES} more"
    return (
        f"conflict markers left in {len(found)} file(s): {shown}\n"
        "The commit adds blocks of conflict markers ('<<<<<<<', '=======', '>>>>>>>') to "
        "these files. Resolve each conflict so that both sides keep their intent, remove "
        "every marker line, and commit again."
    )


def _cut(path: str) -> str:
    return path if len(path) <= MAX_PATH else path[: MAX_PATH - 1] + "…"
