"""A task branch's diff against its base, read from the mission's repository with
dulwich (read-only: nothing is checked out, no hook or filter runs).

The gateway can read the repository when it is a directory on the gateway's own
machine (the local stack); for any other repository the diff is not available here and
the caller says so.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import msgspec
from dulwich.diff_tree import tree_changes
from dulwich.errors import NotGitRepository
from dulwich.objects import Blob, Commit, TreeEntry
from dulwich.refs import Ref
from dulwich.repo import Repo

# Bounds: a diff is for a person to read in a browser, not an export.
MAX_FILES = 200
MAX_LINES_PER_FILE = 2000
MAX_LINES = 20000
MAX_BLOB_BYTES = 1_000_000


class FileDiff(msgspec.Struct, frozen=True, kw_only=True):
    """One changed file: unified-diff lines (``+``, ``-``, `` ``, ``@@ …``)."""

    path: str
    change: str
    added: int
    removed: int
    lines: list[str]
    binary: bool = False
    truncated: bool = False


class TaskDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What a task's commit changed against the integration head it started from."""

    mission_id: str
    task_id: str
    base_sha: str
    head_sha: str
    added: int
    removed: int
    files: list[FileDiff]
    truncated: bool = False


class DiffUnavailable(Exception):
    """The repository or one of the commits cannot be read from here."""


def _blob(repo: Repo, entry: TreeEntry | None) -> bytes:
    if entry is None or entry.sha is None:
        return b""
    obj = repo[entry.sha]
    return obj.data if isinstance(obj, Blob) else b""


def _text(data: bytes) -> list[str] | None:
    if b"\0" in data[:8000] or len(data) > MAX_BLOB_BYTES:
        return None
    return data.decode("utf-8", errors="replace").splitlines()


def _commit(repo: Repo, sha: str) -> Commit:
    try:
        found = repo[sha.encode()]
    except (KeyError, ValueError):
        raise DiffUnavailable(f"commit {sha[:12]} is not in the repository") from None
    if not isinstance(found, Commit):
        raise DiffUnavailable(f"{sha[:12]} is not a commit")
    return found


def task_diff(repository: str, mission_id: str, task_id: str, base: str, head: str) -> TaskDiff:
    """The diff of ``head`` against ``base`` in the repository at ``repository``."""
    path = Path(repository)
    if not path.is_absolute() or not path.is_dir():
        raise DiffUnavailable("the mission's repository is not readable from the gateway")
    try:
        repo = Repo(str(path))
    except NotGitRepository:
        raise DiffUnavailable("the mission's repository is not a git repository") from None
    with repo:
        old, new = _commit(repo, base), _commit(repo, head)
        files: list[FileDiff] = []
        total = added_all = removed_all = 0
        truncated_all = False
        changes = sorted(
            tree_changes(repo.object_store, old.tree, new.tree),
            key=lambda c: c.new.path if c.new and c.new.path else c.old.path if c.old else b"",
        )
        for change in changes:
            if len(files) >= MAX_FILES or total >= MAX_LINES:
                truncated_all = True
                break
            named = change.new if change.new is not None and change.new.path else change.old
            name = (named.path or b"").decode("utf-8", "replace") if named is not None else ""
            before, after = _text(_blob(repo, change.old)), _text(_blob(repo, change.new))
            if before is None or after is None:
                files.append(
                    FileDiff(
                        path=name, change=change.type, added=0, removed=0, lines=[], binary=True
                    )
                )
                continue
            lines = [
                line.rstrip("\n") for line in difflib.unified_diff(before, after, lineterm="", n=3)
            ][2:]  # the ---/+++ header: the path is shown already
            added = sum(1 for x in lines if x.startswith("+"))
            removed = sum(1 for x in lines if x.startswith("-"))
            added_all += added
            removed_all += removed
            cut = len(lines) > MAX_LINES_PER_FILE or total + len(lines) > MAX_LINES
            keep = min(MAX_LINES_PER_FILE, MAX_LINES - total)
            shown = lines[:keep]
            total += len(shown)
            files.append(
                FileDiff(
                    path=name,
                    change=change.type,
                    added=added,
                    removed=removed,
                    lines=shown,
                    truncated=cut,
                )
            )
        return TaskDiff(
            mission_id=mission_id,
            task_id=task_id,
            base_sha=base,
            head_sha=head,
            added=added_all,
            removed=removed_all,
            files=files,
            truncated=truncated_all,
        )


def default_branch(repository: str) -> str:
    """The branch ``HEAD`` names in the repository at ``repository`` (a local directory)."""
    path = Path(repository)
    if not path.is_absolute() or not path.is_dir():
        raise DiffUnavailable("the repository is not a directory the gateway can read")
    try:
        repo = Repo(str(path))
    except NotGitRepository:
        raise DiffUnavailable("the directory is not a git repository") from None
    with repo:
        target = repo.refs.read_ref(Ref(b"HEAD"))
    prefix = b"ref: refs/heads/"
    if target is None or not target.startswith(prefix):
        raise DiffUnavailable("the repository's HEAD names no branch")
    return target[len(prefix) :].decode("utf-8", "replace")
