"""What one commit changed against another, read with dulwich from a repository the broker
holds (read-only: nothing is checked out, no hook, filter or configuration runs).

The answer is bounded for a person reading it in a browser or a terminal: at most
``MAX_FILES`` files and ``MAX_LINES`` lines in all (``MAX_LINES_PER_FILE`` per file),
each line at most ``MAX_LINE_CHARS`` characters and ``MAX_CHARS`` in all (a minified
file is one enormous line); a file over ``MAX_BLOB_BYTES`` or with a NUL byte near its
start is marked binary and not shown; whatever is cut is marked ``truncated``. The time
is bounded too: a file of more than ``MAX_DIFF_INPUT_LINES`` lines (both sides together),
or one past ``MAX_INPUT_LINES`` over the whole answer, is not aligned line by line (a
worst case costs seconds a file) but counted as lines in and out, shown without lines and
marked ``truncated``. A path is shown as git shows it (``shown_path``: escaped and quoted
when it is not valid UTF-8 or holds a control character), a gitlink as the commit it names.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter

from dulwich.diff_tree import TreeChange, tree_changes
from dulwich.objects import Blob, Commit, ObjectID, TreeEntry
from dulwich.repo import Repo

from aether_events.diffs import CommitDiff, FileDiff, shown_path
from aether_git_broker.adapters.objects import ObjectIO

MAX_FILES = 200
MAX_LINES_PER_FILE = 2000
MAX_LINES = 20000
MAX_BLOB_BYTES = 1_000_000
MAX_LINE_CHARS = 1000
MAX_CHARS = 4_000_000
MAX_DIFF_INPUT_LINES = 20_000
MAX_INPUT_LINES = 200_000
_GITLINK = 0o160000
_SHA = re.compile(r"^[0-9a-f]{40}$")


class DiffError(Exception):
    """A commit that is not in the repository (or not a commit); the message says which."""


def is_sha(text: str) -> bool:
    """A full lower-case hexadecimal object id (nothing else names a commit here)."""
    return bool(_SHA.match(text))


def _blob(repo: Repo, sizes: ObjectIO, entry: TreeEntry | None) -> bytes | None:
    """The blob's content; None for one too long to show, whose length its header
    gives without reading it (a pushed file of hundreds of megabytes is never read)."""
    if entry is None or entry.sha is None:
        return b""
    if entry.mode == _GITLINK:  # a commit of another repository: not in this one
        return b"Subproject commit " + entry.sha + b"\n"
    if sizes.size(entry.sha) > MAX_BLOB_BYTES:
        return None
    obj = repo[entry.sha]
    return obj.data if isinstance(obj, Blob) else b""


def _text(data: bytes | None) -> list[str] | None:
    if data is None or b"\0" in data[:8000] or len(data) > MAX_BLOB_BYTES:
        return None
    return data.decode("utf-8", errors="replace").splitlines()


def commit_of(repo: Repo, sha: str) -> Commit:
    """The commit ``sha`` names, or ``DiffError`` saying why there is none."""
    if not is_sha(sha):
        raise DiffError(f"{sha[:40]!r} is not a commit id (40 hexadecimal digits)")
    try:
        found = repo[ObjectID(sha.encode())]
    except KeyError:
        raise DiffError(f"commit {sha[:12]} is not in the repository") from None
    if not isinstance(found, Commit):
        raise DiffError(f"{sha[:12]} is not a commit")
    return found


def _path_of(change: TreeChange) -> bytes:
    if change.new is not None and change.new.path:
        return change.new.path
    return change.old.path if change.old is not None and change.old.path else b""


def commit_diff(repo: Repo, base: str, head: str) -> CommitDiff:
    """The diff of ``head`` against ``base`` in ``repo`` (``DiffError`` when either is not
    a commit there)."""
    old, new = commit_of(repo, base), commit_of(repo, head)
    sizes = ObjectIO(repo.object_store)
    try:
        return _diff(repo, sizes, old, new)
    finally:
        sizes.close()


def _diff(repo: Repo, sizes: ObjectIO, old: Commit, new: Commit) -> CommitDiff:
    files: list[FileDiff] = []
    total = added_all = removed_all = chars = aligned = 0
    truncated_all = False
    for change in sorted(tree_changes(repo.object_store, old.tree, new.tree), key=_path_of):
        if len(files) >= MAX_FILES or total >= MAX_LINES or chars >= MAX_CHARS:
            truncated_all = True
            break
        name = shown_path(_path_of(change))
        before, after = _text(_blob(repo, sizes, change.old)), _text(_blob(repo, sizes, change.new))
        if before is None or after is None:
            files.append(
                FileDiff(path=name, change=change.type, added=0, removed=0, lines=[], binary=True)
            )
            continue
        size = len(before) + len(after)
        if size > MAX_DIFF_INPUT_LINES or aligned + size > MAX_INPUT_LINES:
            gone, came = Counter(before), Counter(after)
            added, removed = (came - gone).total(), (gone - came).total()
            added_all += added
            removed_all += removed
            files.append(
                FileDiff(
                    path=name,
                    change=change.type,
                    added=added,
                    removed=removed,
                    lines=[],
                    truncated=True,
                )
            )
            continue
        aligned += size
        lines = [
            line.rstrip("\n") for line in difflib.unified_diff(before, after, lineterm="", n=3)
        ][2:]  # the ---/+++ header: the path is shown already
        added = sum(1 for x in lines if x.startswith("+"))
        removed = sum(1 for x in lines if x.startswith("-"))
        added_all += added
        removed_all += removed
        keep = min(MAX_LINES_PER_FILE, MAX_LINES - total)
        shown: list[str] = []
        cut = False
        for line in lines[:keep]:
            if chars >= MAX_CHARS:
                break
            if len(line) > MAX_LINE_CHARS:
                line, cut = line[:MAX_LINE_CHARS] + "…", True
            shown.append(line)
            chars += len(line)
        total += len(shown)
        files.append(
            FileDiff(
                path=name,
                change=change.type,
                added=added,
                removed=removed,
                lines=shown,
                truncated=cut or len(shown) < len(lines),
            )
        )
    return CommitDiff(
        base_sha=old.id.decode(),
        head_sha=new.id.decode(),
        added=added_all,
        removed=removed_all,
        files=files,
        truncated=truncated_all,
    )
