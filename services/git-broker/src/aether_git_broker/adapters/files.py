"""The text of files at a commit, for the read API (the planner's view of a repository).

Read from the commit's tree, never from a checkout: nothing the repository holds is run
or followed (a symbolic link is not read through), and no working tree's state, an
agent's edits in progress among them, is ever what is answered.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

from dulwich.errors import NotTreeError
from dulwich.objects import Blob, Tree
from dulwich.repo import Repo

from aether_events.diffs import RepositoryFiles
from aether_git_broker.adapters.diff import commit_of

# What one request may ask for, and how much of each file it gets.
MAX_PATHS = 64
MAX_PATH_CHARS = 1024
MAX_FILE_BYTES = 20_000


class InvalidPath(ValueError):
    """A path that cannot name a file of a tree; the message says why."""


def checked_path(path: str) -> str:
    """``path`` if it can name a file of a tree: relative, ``/``-separated, with no empty,
    ``.`` or ``..`` part and no NUL; else ``InvalidPath``."""
    if not path:
        raise InvalidPath("a path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidPath(f"a path is longer than {MAX_PATH_CHARS} characters")
    if "\0" in path:
        raise InvalidPath("a path holds a NUL character")
    if path.startswith("/"):
        raise InvalidPath(f"{path[:80]!r} is absolute (paths are relative to the repository)")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidPath(f"{path[:80]!r} has an empty, '.' or '..' part")
    return path


def read_texts(
    repo: Repo, commit_sha: str, paths: Iterable[str], max_bytes: int = MAX_FILE_BYTES
) -> RepositoryFiles:
    """The text of ``paths`` at ``commit_sha`` (``DiffError`` when it names no commit);
    each path is read as it is in the commit's tree, whatever is checked out."""
    commit = commit_of(repo, commit_sha)
    tree = repo[commit.tree]
    assert isinstance(tree, Tree)
    files: dict[str, str] = {}
    truncated: list[str] = []
    omitted: dict[str, str] = {}
    for path in paths:
        try:
            mode, sha = tree.lookup_path(repo.object_store.__getitem__, path.encode())
            found = repo[sha]
        except (KeyError, NotTreeError):
            omitted[path] = "missing"
            continue
        if not isinstance(found, Blob) or not stat.S_ISREG(mode):
            omitted[path] = "not a file"
            continue
        data = found.data
        if b"\0" in data[:max_bytes]:
            omitted[path] = "binary"
            continue
        if len(data) > max_bytes:
            truncated.append(path)
        files[path] = data[:max_bytes].decode("utf-8", errors="replace")
    return RepositoryFiles(commit_sha=commit_sha, files=files, truncated=truncated, omitted=omitted)
