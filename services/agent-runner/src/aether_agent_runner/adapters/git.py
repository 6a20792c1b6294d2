"""The agent's side of git: committing the work on the task branch, finding that commit
again after a restart, and starting over cleanly — without running anything the agent
could have written.

Nothing here goes through dulwich's ``Repo``, its porcelain or a worktree object, which
would run the repository's hooks (``pre-commit``, ``commit-msg``, ``post-commit``), apply
filter drivers named by ``.gitattributes`` and configured in any git configuration file,
and read the worktree's ``.git`` file. Instead the objects are written to the object
store and the branch moved with a compare-and-swap, from paths the runner holds in its
own records (``GitDir``): the worktree's ``.git`` file, which a command in the worktree
can rewrite, is never read. No git configuration is read at all.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import itertools
import os
import stat
import struct
import sys
import threading
import time
import zlib
from binascii import unhexlify
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from dulwich.file import FileLocked, GitFile
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.refs import DiskRefsContainer, Ref, check_ref_format

from aether_agent_runner.adapters.safefs import Refused, write_all
from aether_agent_runner.adapters.safefs import Tree as Files
from aether_agent_runner.adapters.scan import (
    END_EXTENSION,
    GITLINK,
    OFFSETS_EXTENSION,
    SYMLINK,
    Extras,
    Found,
    StatCache,
    TooDeep,
    TreeDirs,
    changes,
    read_entry,
    scan,
    scan_ways,
)
from aether_events.diffs import shown_path
from aether_sandbox.trees import remove_tree

AUTHOR = b"Aether Agent <agent@aether.invalid>"


class GitDirError(Exception):
    """The worktree's git directory is not where the runner's records say, or not usable."""


class CommitRefused(Exception):
    """The work is not committed: too many files, a blob too large, a hard link."""


@dataclass(frozen=True)
class CommitLimits:
    """The most one commit may carry: changed paths, bytes of one blob, bytes of all."""

    max_files: int = 2_000
    max_blob_bytes: int = 10_000_000
    max_total_bytes: int = 100_000_000


@dataclass(frozen=True)
class GitDir:
    """Where a worktree's git data lives, from the runner's own records.

    ``admin`` holds the worktree's ``HEAD``, index and the runner's journal; ``common``
    the objects and refs. For a linked worktree the git broker names ``admin`` in the
    event (``<common>/worktrees/<id>``); for a clone the runner made, both are its
    ``.git`` directory.
    """

    worktree: Path
    admin: Path
    common: Path
    branch: str

    @classmethod
    def linked(cls, worktree: Path, admin: Path, branch: str) -> GitDir:
        admin = Path(os.path.abspath(admin))
        worktree = Path(os.path.abspath(worktree))
        if admin.parent.name != "worktrees":
            raise GitDirError(f"{admin} is not a linked worktree's git directory")
        if admin.is_relative_to(worktree):
            raise GitDirError(f"{admin} is inside the worktree it would describe")
        found = cls(worktree, admin, admin.parent.parent, branch)
        found.check()
        return found

    @classmethod
    def clone(cls, directory: Path, branch: str) -> GitDir:
        git = Path(os.path.abspath(directory)) / ".git"
        found = cls(git.parent, git, git, branch)
        found.check()
        return found

    @classmethod
    def discover(cls, worktree: Path, branch: str) -> GitDir:
        """For an event from before the broker named the git directory: the ``.git``
        file read once, and believed only if the directory it names is a linked
        worktree's outside this one that points back at it."""
        try:
            pointer = (worktree / ".git").read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise GitDirError(f"{worktree} has no usable .git file: {error}") from None
        if not pointer.startswith("gitdir: "):
            raise GitDirError(f"{worktree}/.git does not name a git directory")
        admin = Path(os.path.realpath(pointer.removeprefix("gitdir: ")))
        found = cls.linked(Path(os.path.realpath(worktree)), admin, branch)
        try:
            back = (admin / "gitdir").read_text().strip()
        except OSError:
            back = ""
        if os.path.realpath(os.path.dirname(back)) != os.path.realpath(worktree):
            raise GitDirError(f"{admin} belongs to another worktree")
        return found

    def check(self) -> None:
        for path in {self.admin, self.common}:
            try:
                st = os.lstat(path)
            except OSError as error:
                raise GitDirError(f"{path} is not usable: {error.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise GitDirError(f"{path} is not a directory")
        if not (self.common / "objects").is_dir():
            raise GitDirError(f"{self.common} is not a git directory")

    @property
    def ref(self) -> Ref:
        return Ref(b"refs/heads/" + self.branch.encode())

    def store(self) -> DiskObjectStore:
        return DiskObjectStore(str(self.common / "objects"))

    def refs(self) -> DiskRefsContainer:
        return DiskRefsContainer(str(self.common), worktree_path=str(self.admin))


def head_sha(git: GitDir) -> str:
    return git.refs()[git.ref].decode()


# Recently read commits by id (read-only, shared): an attempt reads its base commit for
# the repository view, the check for changes and the commit, each a loose object found,
# inflated and parsed again. An id names its content, as the trees' caches below rely on.
_COMMITS: OrderedDict[ObjectID, Commit] = OrderedDict()
_COMMITS_KEPT = 64


def _commit(store: DiskObjectStore, sha: str | bytes) -> Commit:
    key = ObjectID(sha if isinstance(sha, bytes) else sha.encode())
    known = _recalled(_COMMITS, key)
    if known is not None:
        return known
    commit = store[key]
    if not isinstance(commit, Commit):
        raise GitDirError(f"{sha!r} is not a commit")
    with _TREES_LOCK:
        _COMMITS[key] = commit
        while len(_COMMITS) > _COMMITS_KEPT:
            _COMMITS.popitem(last=False)
    return commit


def commit_message_trailers(sha: str, store: DiskObjectStore) -> dict[str, str]:
    """The ``Key: value`` trailers of a commit's message."""
    message = _commit(store, sha).message.decode("utf-8", errors="replace")
    trailers: dict[str, str] = {}
    for line in message.strip().splitlines()[::-1]:
        key, sep, value = line.partition(": ")
        if not sep or " " in key:
            break
        trailers[key] = value
    return trailers


def own_commit(git: GitDir, base_sha: str, task_id: str, attempt: int) -> str | None:
    """The sha of this attempt's commit when the task branch's head is one, else ``None``."""
    head = head_sha(git)
    if head == base_sha:
        return None
    trailers = commit_message_trailers(head, git.store())
    if trailers.get("Aether-Task") == task_id and trailers.get("Aether-Attempt") == str(attempt):
        return head
    return None


# The files of recently read trees. A tree id names its content, so what was read once
# is true for good: a task's reset, check for changes and commit, which all compare the
# worktree with the same base tree, read it from the object store once.
TreeFiles = Mapping[bytes, tuple[int, ObjectID]]  # a tree's files: path -> (mode, blob id)
_TREES: OrderedDict[ObjectID, TreeFiles] = OrderedDict()
_TREES_KEPT = 16
_TREES_LOCK = threading.Lock()  # the runner works several attempts in worker threads
_K = TypeVar("_K")
_V = TypeVar("_V")


def _recalled(cache: OrderedDict[_K, _V], key: _K) -> _V | None:
    """What one of these caches keeps for ``key``, marked as just used (``None``: not
    kept)."""
    with _TREES_LOCK:
        known = cache.get(key)
        if known is not None:
            cache.move_to_end(key)
        return known


# The tree each object store's files were last read for: the next task of a repository
# starts from the integration head, which is that tree and the few files merged since.
# (As many stores as trees are kept: a store whose last tree left the cache is no help.)
_LAST_TREE: OrderedDict[str, ObjectID] = OrderedDict()


def _files_of(store: DiskObjectStore, tree: ObjectID) -> TreeFiles:
    """Every file of ``tree`` by path: its mode and blob id (read-only, shared).

    A tree not read before is read as the difference from the one last read from the
    same store, when that one is still known: the subtrees the two share (by id) are
    not read again, so a task's base tree costs what was merged since the last task,
    not the whole repository (a repository of 682 files: 2.1 ms instead of 22.6)."""
    key = str(store.path)
    with _TREES_LOCK:
        known = _TREES.get(tree)
        if known is not None:
            _TREES.move_to_end(tree)
            _read_last(key, tree)
            return known
        near = _LAST_TREE.get(key)
        near_files = _TREES.get(near) if near is not None else None
    if near is not None and near_files is not None:
        files = MappingProxyType(_moved(store, near, near_files, tree))
    else:
        files = MappingProxyType(
            {
                entry.path: (entry.mode, entry.sha)
                for entry in store.iter_tree_contents(tree)
                if entry.path is not None and entry.mode is not None and entry.sha is not None
            }
        )
    with _TREES_LOCK:
        _TREES[tree] = files
        _read_last(key, tree)
        while len(_TREES) > _TREES_KEPT:
            _TREES.popitem(last=False)
    return files


def _read_last(store: str, tree: ObjectID) -> None:
    """Note ``tree`` as the last one read from ``store`` (under ``_TREES_LOCK``)."""
    _LAST_TREE[store] = tree
    _LAST_TREE.move_to_end(store)
    while len(_LAST_TREE) > _TREES_KEPT:
        _LAST_TREE.popitem(last=False)


def forget_trees() -> None:
    """Drop every tree and directory kept in memory: the next tree is read whole (tests
    and benchmarks that time or check a first read)."""
    global _entries_held, _listings_held
    with _TREES_LOCK:
        _TREES.clear()
        _LAST_TREE.clear()
        _COMMITS.clear()
        _ENTRIES.clear()
        _LISTINGS.clear()
        _listings_held = 0
        _entries_held = 0


def _moved(
    store: DiskObjectStore, old: ObjectID, old_files: TreeFiles, new: ObjectID
) -> dict[bytes, tuple[int, ObjectID]]:
    """``new``'s files, from ``old``'s and the changes between the two trees.

    The two trees are compared directory by directory, entry by entry: a subtree with
    the same id on both sides is skipped, one whose id changed is compared in turn, and
    a file that became a directory (or the other way round) swaps that file for the
    directory's files. (dulwich's ``tree_changes`` does the same walk with an object and
    a joined path per entry: about twice the CPU on a directory of a few hundred files,
    which every task's reset pays on the critical path.)"""
    files = dict(old_files)
    _apply_changes(store, b"", old, new, files)
    return files


def _apply_changes(
    store: DiskObjectStore,
    prefix: bytes,
    old: ObjectID,
    new: ObjectID,
    files: dict[bytes, tuple[int, ObjectID]],
) -> None:
    before, after = _entries(store, old), _entries(store, new)
    for name, (mode, sha) in before.items():
        now = after.get(name)
        if now == (mode, sha):
            continue
        path = prefix + name
        if stat.S_ISDIR(mode):
            if now is not None and stat.S_ISDIR(now[0]):
                _apply_changes(store, path + b"/", sha, now[1], files)
                continue
            for entry in store.iter_tree_contents(sha):
                if entry.path is not None:
                    files.pop(path + b"/" + entry.path, None)
        else:
            files.pop(path, None)
    for name, (mode, sha) in after.items():
        was = before.get(name)
        if was == (mode, sha):
            continue
        path = prefix + name
        if not stat.S_ISDIR(mode):
            files[path] = (mode, sha)
        elif was is None or not stat.S_ISDIR(was[0]):
            for entry in store.iter_tree_contents(sha):
                if entry.path is not None and entry.mode is not None and entry.sha is not None:
                    files[path + b"/" + entry.path] = (entry.mode, entry.sha)


# The entries of recently compared directories (name -> (mode, id)), by tree id: the
# next task's comparison starts from the tree this one ended on. Bounded by entries, not
# directories, so that a few huge directories cannot hold much memory.
_ENTRIES: OrderedDict[ObjectID, dict[bytes, tuple[int, ObjectID]]] = OrderedDict()
_ENTRIES_KEPT = 50_000
_entries_held = 0


def _entries(store: DiskObjectStore, tree: ObjectID) -> dict[bytes, tuple[int, ObjectID]]:
    """The entries of directory ``tree`` (read-only, shared)."""
    known = _recalled(_ENTRIES, tree)
    if known is not None:
        return known
    found = store[tree]
    if not isinstance(found, Tree):
        raise GitDirError(f"{tree!r} is not a tree")
    entries = {name: (mode, ObjectID(sha)) for name, mode, sha in found.iteritems()}
    _remember_entries(tree, entries)
    return entries


def _remember_entries(tree: ObjectID, entries: dict[bytes, tuple[int, ObjectID]]) -> None:
    """Keep a directory's entries by its tree id (one read, or one just written: the next
    task's base is often the tree this one's commit built)."""
    global _entries_held
    with _TREES_LOCK:
        if tree not in _ENTRIES:
            _ENTRIES[tree] = entries
            _entries_held += len(entries)
            while _entries_held > _ENTRIES_KEPT and len(_ENTRIES) > 1:
                _, dropped = _ENTRIES.popitem(last=False)
                _entries_held -= len(dropped)


# The listings of recently listed directories (``tree_listing``), by tree id and what
# a listing keeps: a task's base differs from the last one's in the few directories
# merged since, and only those are listed again. Bounded by the paths they hold (each
# directory's listing holds up to the map's limit of its files and its subdirectories').
_LISTINGS: OrderedDict[tuple[ObjectID, int, frozenset[str]], tuple[tuple[bytes, ...], int]] = (
    OrderedDict()
)
_LISTINGS_KEPT = 100_000
_listings_held = 0
# Directories nested deeper than this are not listed (the scan walks no deeper).
_LISTING_DEPTH = 200


def tree_listing(
    git: GitDir, sha: str, limit: int, skipped: frozenset[str]
) -> tuple[list[str], int]:
    """The first ``limit`` file paths of commit ``sha``'s tree, in the order a walk of its
    checkout meets them (in each directory its files, then its subdirectories, each by
    name), and how many more there are. A directory named in ``skipped`` (dependency
    and cache directories) is left out; a submodule has no files here, a symbolic link
    is a file."""
    store = git.store()
    paths, count = _listing(store, _commit(store, sha).tree, limit, skipped, 0)
    return [_text(p) for p in paths], count - len(paths)


def _listing(
    store: DiskObjectStore, tree: ObjectID, limit: int, skipped: frozenset[str], depth: int
) -> tuple[tuple[bytes, ...], int]:
    key = (tree, limit, skipped)
    known = _recalled(_LISTINGS, key)
    if known is not None:
        return known
    entries = _entries(store, tree)
    files: list[bytes] = []
    directories: list[tuple[bytes, ObjectID]] = []
    for name, (mode, sha) in entries.items():
        if name.lower() == b".git" or mode == GITLINK:
            continue
        if not stat.S_ISDIR(mode):
            files.append(name)
        elif os.fsdecode(name) not in skipped and depth < _LISTING_DEPTH:
            directories.append((name, sha))
    files.sort()
    paths = files[:limit]
    count = len(files)
    for name, sha in sorted(directories):
        inner, inner_count = _listing(store, sha, limit, skipped, depth + 1)
        count += inner_count
        room = limit - len(paths)
        if room > 0:
            paths.extend(name + b"/" + path for path in inner[:room])
    listed = (tuple(paths), count)
    global _listings_held
    with _TREES_LOCK:
        if key not in _LISTINGS:
            _LISTINGS[key] = listed
            _listings_held += len(paths) + 1
            while _listings_held > _LISTINGS_KEPT and len(_LISTINGS) > 1:
                _, (dropped, _) = _LISTINGS.popitem(last=False)
                _listings_held -= len(dropped) + 1
    return listed


@dataclass(frozen=True)
class _State:
    """The worktree against a commit: the commit's tree and files, what the scan found
    and the paths that differ."""

    store: DiskObjectStore
    tree: ObjectID
    tracked: Mapping[bytes, tuple[int, ObjectID]]
    found: dict[bytes, Found]
    changed: list[bytes]
    # The worktree's index as the scan read it: the stat data of the files it did not
    # look at, for the next index.
    index: StatCache
    # The paths only writes to which happened since the worktree held exactly the tree
    # (``scan``'s ``written``), when the scan looked only on the ways to them: ``found``
    # then holds what it found there, and every other tracked file is as the tree has it.
    written: frozenset[tuple[str, ...]] | None = None
    # What a whole scan passed by that no commit holds (``written`` is then ``None``).
    extras: Extras | None = None


def _state(
    git: GitDir, at: bytes, max_hash: int, written: Iterable[tuple[str, ...]] | None = None
) -> _State:
    store = git.store()
    tree = _commit(store, at).tree
    tracked = _files_of(store, tree)
    index = StatCache(git.admin / "index")
    if written is None:
        extras = Extras()
        found = scan(git.worktree, git.common, tracked, max_hash, index, extras=extras)
        return _State(store, tree, tracked, found, changes(tracked, found), index, None, extras)
    ways = frozenset(written)
    look = scan_ways(
        git.worktree, git.common, tracked, max_hash, _directories_of(store, tree), ways
    )
    changed = set(look.deleted)
    for path, entry in look.found.items():
        if tracked.get(path) != (entry.mode, entry.sha):
            changed.add(path)
    return _State(store, tree, tracked, look.found, sorted(changed), index, ways)


def _directories_of(
    store: DiskObjectStore, tree: ObjectID
) -> Callable[[bytes], Mapping[bytes, tuple[int, ObjectID]] | None]:
    """The entries of ``tree``'s directories by path (trailing slash; the root ``b""``),
    read as they are asked for."""

    def entries(directory: bytes) -> Mapping[bytes, tuple[int, ObjectID]] | None:
        current = tree
        for name in directory.split(b"/")[:-1] if directory else []:
            entry = _entries(store, current).get(name)
            if entry is None or not stat.S_ISDIR(entry[0]):
                return None
            current = entry[1]
        return _entries(store, current)

    return entries


def _text(path: bytes) -> str:
    """A path as it is shown (to the model, in events and reasons): as git shows it,
    escaped and quoted when it is not valid UTF-8 or holds a control character."""
    return shown_path(path)


def _fs_name(path: bytes) -> str:
    """A path as the file system is asked for it: its very bytes (``os.fsdecode``), never
    a name with a byte replaced, which would be another file's or none (a command can
    make a name that is not UTF-8)."""
    return os.fsdecode(path)


@dataclass(frozen=True)
class Snapshot:
    """The worktree against the task branch's head as one scan found it (``snapshot``),
    for ``commit_all`` to commit without scanning again when nothing wrote to the
    worktree in between."""

    head: bytes
    max_hash: int
    state: _State

    @property
    def changed(self) -> bool:
        return bool(self.state.changed)


def snapshot(
    git: GitDir,
    max_hash: int = CommitLimits.max_blob_bytes,
    written: Iterable[tuple[str, ...]] | None = None,
) -> Snapshot:
    """Scan the worktree against the task branch's head; with ``written``, only the
    ways to those paths (``scan``: the worktree held exactly the head's tree, and
    nothing but writes to them happened to it since)."""
    head = git.refs()[git.ref]
    return Snapshot(head, max_hash, _state(git, head, max_hash, written))


def changed_paths(git: GitDir) -> list[str]:
    """Every path that differs from the head commit: modified, deleted or new (and not
    ignored)."""
    return [_text(p) for p in snapshot(git).state.changed]


def commit_files(git: GitDir, sha: str) -> list[str]:
    """The paths a commit changed relative to its first parent."""
    store = git.store()
    commit = _commit(store, sha)
    parent_tree = _commit(store, commit.parents[0]).tree if commit.parents else None
    paths: set[str] = set()
    for (old, new), _, _ in store.tree_changes(parent_tree, commit.tree):
        for path in (old, new):
            if path is not None:
                paths.add(_text(path))
    return sorted(paths)


def commit_all(
    git: GitDir,
    message: str,
    limits: CommitLimits | None = None,
    scanned: Snapshot | None = None,
    settled: bool = False,
) -> tuple[str | None, list[str]]:
    """Commit every change of the worktree on the task branch; ``(None, [])`` when nothing
    changed. Raises ``CommitRefused`` (nothing written to the branch) when the change is
    over ``limits`` or holds a file that is not the worktree's own (a hard link).

    ``scanned``: the caller's ``snapshot`` of the worktree, taken with nothing written to
    it since, so the changes are the ones it found (a worktree of thousands of files is
    scanned once rather than twice); ignored unless taken against the branch's head
    with these limits. Each changed file is still read when committed, by descriptor.

    ``settled``: nothing of the agent runs any more, nor ran since the scan (its
    commands' processes are gone), so after a scan of every file the worktree is known
    whole: the commit's tree and what the scan passed by (``Extras``), which the index
    then says (``_write_index``'s ``extras``)."""
    limits = limits or CommitLimits()
    refs = git.refs()
    head = refs[git.ref]
    if scanned is not None and scanned.head == head and scanned.max_hash == limits.max_blob_bytes:
        state = scanned.state
    else:
        try:
            state = _state(git, head, limits.max_blob_bytes)
        except TooDeep as error:
            raise CommitRefused(str(error)) from None
    store, tracked, found, changed = state.store, state.tracked, state.found, state.changed
    if not changed:
        return None, []
    if len(changed) > limits.max_files:
        raise CommitRefused(
            f"the change touches {len(changed):,} files, more than the {limits.max_files:,} "
            "one commit may hold (generated or dependency files? add them to .gitignore)"
        )
    # On the ways (``state.written``), only what changed: the tree and the index are
    # the base's with those paths replaced.
    entries = dict(tracked) if state.written is None else {}
    total = 0
    files = Files(str(git.worktree))
    blobs: list[Blob] = []
    for path in changed:
        entry = found.get(path)
        if entry is None:
            entries.pop(path, None)
            continue
        if entry.mode == SYMLINK and _is_dot_gitmodules(os.path.basename(path)):
            raise CommitRefused(
                f"{_text(path)} is a symbolic link; git refuses a linked .gitmodules "
                "(write the file itself)"
            )
        assert entry.st is not None  # a changed file is one the scan looked at
        size = entry.st.st_size
        if size > limits.max_blob_bytes:
            raise CommitRefused(
                f"{_text(path)} has {size:,} bytes, more than the {limits.max_blob_bytes:,} "
                "one file may have in a commit"
            )
        total += size
        if total > limits.max_total_bytes:
            raise CommitRefused(
                f"the change holds more than {limits.max_total_bytes:,} bytes of files"
            )
        blob = Blob.from_string(_content(files, path, entry.mode))
        blobs.append(blob)
        entries[path] = (entry.mode, blob.id)
    for blob in blobs:
        add_object(store, blob)
    tree = changed_tree(store, state.tree, entries, changed)
    commit = Commit()
    commit.tree = tree
    commit.parents = [head]
    commit.author = commit.committer = AUTHOR
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = message.encode()
    add_object(store, commit)
    if not move_branch(git, head, commit.id):
        raise GitDirError(f"the task branch {git.branch} moved while the work was committed")
    if state.written is None:
        extras = (
            _extras_claim(state.extras, _WithRoot(TreeDirs(_directories_of(store, tree))))
            if settled
            else None
        )
        clean = state.extras.clean if state.extras is not None else None
        tail = _extras_tail(extras, tree) if extras is not None else _no_tail
        if clean is None or not _write_spliced(git, entries, changed, state, tail, clean):
            _write_index(git, entries, found, state.index, base=tree, extras=extras)
    elif not _write_spliced(git, entries, changed, state, _ways_tail(state.written, state.tree)):
        whole = {**tracked, **entries}
        for path in changed:
            if path not in entries:
                whole.pop(path, None)
        _write_index(git, whole, found, state.index, state.written, state.tree)
    return commit.id.decode(), [_text(p) for p in changed]


# A worktree whose extras are more than this many paths is not claimed whole: the broker
# checks it file by file as before (a claim is read whole, and kept in the index).
MAX_EXTRAS = 10_000


def _extras_claim(extras: Extras | None, tree_dirs: Container[bytes]) -> list[bytes] | None:
    """What a worktree holds besides a tree, after a whole scan that found ``extras``:
    the outermost of its directories that the tree does not have (``tree_dirs``, with a
    trailing slash; the root ``b""``), made by a command and holding nothing committed
    (empty, or with only extras in them), and the extras in the tree's directories;
    ``None`` when the scan could not look at everything, or there are too many."""
    if extras is None or not extras.sure:
        return None
    out: list[bytes] = []
    for directory in extras.entered:
        if directory and directory not in tree_dirs and _parent(directory[:-1]) in tree_dirs:
            out.append(directory[:-1])
    out.extend(path for path in extras.paths if _parent(path) in tree_dirs)
    return sorted(out) if len(out) <= MAX_EXTRAS else None


class _WithRoot:
    """A tree's directories (``TreeDirs``), the root (``b""``) among them."""

    def __init__(self, dirs: TreeDirs) -> None:
        self._dirs = dirs

    def __contains__(self, directory: object) -> bool:
        return directory == b"" or directory in self._dirs


def _parent(path: bytes) -> bytes:
    """The directory ``path`` is in, with a trailing slash (the root: ``b""``)."""
    end = path.rfind(b"/")
    return path[: end + 1] if end >= 0 else b""


def changed_tree(
    store: DiskObjectStore,
    base: ObjectID,
    files: Mapping[bytes, tuple[int, ObjectID]],
    changed: Iterable[bytes],
) -> ObjectID:
    """The id of the tree of ``files`` (every file by path: mode and blob id), written to
    ``store``, when it differs from the tree ``base`` only at the paths ``changed``.

    Only the directories above a changed path are built, hashed and written; every other
    directory keeps its tree from ``base``. dulwich's ``commit_tree`` builds, hashes and
    looks up every directory of the tree, which for a worktree of thousands of files was
    most of a commit of a few. Same tree id as ``commit_tree(store, files)``, which
    ``services/agent-runner/tests/test_git.py`` checks over adds, edits, deletions and a
    file turned into a directory and back. A directory left with no files disappears, as
    git has no empty trees."""
    touched: dict[bytes, set[bytes]] = {b"": set()}  # directory → changed names in it
    for path in changed:
        directory, _, name = path.rpartition(b"/")
        touched.setdefault(directory, set()).add(name)
        while directory:  # each directory is a changed name of its parent
            parent, _, name = directory.rpartition(b"/")
            names = touched.setdefault(parent, set())
            if name in names:
                break
            names.add(name)
            directory = parent
    read: dict[bytes, ObjectID | None] = {b"": base}

    def base_items(directory: bytes) -> dict[bytes, tuple[int, ObjectID]]:
        tree_id = read.get(directory)
        if tree_id is None:
            return {}
        items = dict(_entries(store, tree_id))
        prefix = directory + b"/" if directory else b""
        # Only the changed names can be directories built below this one.
        for name in touched[directory]:
            entry = items.get(name)
            if entry is not None and stat.S_ISDIR(entry[0]) and prefix + name in touched:
                read[prefix + name] = entry[1]
        return items

    def build(directory: bytes) -> ObjectID | None:
        items = base_items(directory)
        prefix = directory + b"/" if directory else b""
        for name in touched[directory]:
            path = prefix + name
            items.pop(name, None)
            if path in touched and (sub := build(path)) is not None:
                items[name] = (stat.S_IFDIR, sub)
            elif (entry := files.get(path)) is not None:  # a directory turned file too
                items[name] = entry
        if not items:
            return None
        tree_id = write_tree(store, items)
        _remember_entries(tree_id, items)
        return tree_id

    built = build(b"")
    return built if built is not None else write_tree(store, {})


def _tree_order(item: tuple[bytes, tuple[int, ObjectID]]) -> bytes:
    """git's order of a tree's entries: by name, a directory's as if it ended in ``/``."""
    name, (mode, _) = item
    return name + b"/" if stat.S_ISDIR(mode) else name


def write_tree(store: DiskObjectStore, items: Mapping[bytes, tuple[int, ObjectID]]) -> ObjectID:
    """Store the tree of ``items`` (name → mode and object id) and return its id.

    Serialised here in one pass: dulwich's ``Tree`` adds its entries one call at a
    time and sorts them with a key made per entry when it serialises, which for a
    directory of a few hundred files took half a millisecond of each commit."""
    if store.object_format.name != "sha1":
        tree = Tree()
        for name, (mode, sha) in items.items():
            tree.add(name, mode, sha)
        add_object(store, tree)
        return tree.id
    content = b"".join(
        [
            b"%o %b\0%b" % (mode, name, unhexlify(sha))
            for name, (mode, sha) in sorted(items.items(), key=_tree_order)
        ]
    )
    return _add_loose(store, b"tree", content)


# The object directories (``objects/<xx>``) known to exist: each commit writes a few
# objects, and creating an object's directory again, failing, was a metadata operation
# of a few hundred microseconds on a loaded disk, as many as the object's own creation.
_FANOUTS: set[str] = set()
# A loose object is written under this prefix and renamed into place: git's own, which
# its prune removes when a killed writer leaves one.
_TEMPORARY = "tmp_obj_"
_LOOSE_LEVEL = 1  # git's core.looseCompression default (Z_BEST_SPEED), as the broker's


def add_object(store: DiskObjectStore, obj: ShaFile) -> None:
    """Store ``obj`` as a loose object, as dulwich's ``add_object`` does (one already
    there has its time refreshed, so an age-based prune spares it until a ref names it),
    with fewer file system operations and no lock file.

    A loose object is named by its content, so every writer of it writes the same
    bytes: it goes through a file of its own, renamed into place, and a writer killed
    half-way leaves only that file (dulwich's lock file, left by a killed runner, made
    every later write of the same object fail, so the task could never commit). Its
    directory is made only the first time this process writes into it, or when a prune
    has removed it since."""
    if store.object_format.name != "sha1":
        store.add_object(obj)
        return
    _write_loose(store, obj.id.decode("ascii"), obj.as_legacy_object)


def _add_loose(store: DiskObjectStore, type_name: bytes, content: bytes) -> ObjectID:
    """Store ``content`` as a loose object of ``type_name`` (as ``add_object`` does) and
    return its id."""
    whole = b"%b %d\0%b" % (type_name, len(content), content)
    hexsha = hashlib.sha1(whole, usedforsecurity=False).hexdigest()
    _write_loose(store, hexsha, lambda compression_level: zlib.compress(whole, compression_level))
    return ObjectID(hexsha.encode("ascii"))


def _write_loose(store: DiskObjectStore, hexsha: str, compressed: Callable[[int], bytes]) -> None:
    """Write object ``hexsha`` (``compressed``: its loose form at a compression level)
    unless it is there already; see ``add_object``."""
    directory = os.path.join(store.path, hexsha[:2])
    path = os.path.join(directory, hexsha[2:])
    if directory not in _FANOUTS:
        os.makedirs(directory, exist_ok=True)
        _FANOUTS.add(directory)
    try:
        os.utime(path, None)
        return
    except FileNotFoundError:
        pass
    data = compressed(_LOOSE_LEVEL)
    temporary = os.path.join(directory, f"{_TEMPORARY}{os.urandom(6).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o444)
    except FileNotFoundError:  # the directory was pruned since
        os.makedirs(directory, exist_ok=True)
        fd = os.open(temporary, flags, 0o444)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _is_dot_gitmodules(name: bytes) -> bool:
    """``.gitmodules`` as git reads it: any case, NTFS's trailing dots and spaces, its
    short name."""
    lowered = name.lower().rstrip(b". ")
    return lowered == b".gitmodules" or lowered.startswith(b"gitmod~")


def clear_leftover_locks(git: GitDir) -> list[str]:
    """Remove the lock files a killed holder of this attempt left on what, while the
    attempt is open, only the holder of its lock writes: its task branch's ref and its
    worktree's index (the git broker writes them before it hands the attempt out and
    after it has ended). Call it with the attempt's lock held, on an attempt taken over
    or resumed: a runner killed mid-commit leaves them, and every commit of the attempt
    after it would fail on them. Returns the paths removed."""
    removed = []
    for lock in (
        os.path.join(git.common, os.fsdecode(git.ref)) + ".lock",
        os.path.join(git.admin, "index.lock"),
    ):
        try:
            os.unlink(lock)
        except FileNotFoundError:
            continue
        removed.append(lock)
    return removed


def move_branch(git: GitDir, old: ObjectID | None, new: ObjectID) -> bool:
    """Point the task branch at ``new`` if it points at ``old`` (``None``: wherever it
    points); ``False`` when it does not.

    Done as git and the broker do it: ``<ref>.lock`` taken exclusively (``FileLocked``
    when it is held), the ref read again under it, the new id written and the lock renamed
    over the ref. dulwich's ``set_if_equals`` also syncs the ref, which would guard it
    against a machine that stops, where it buys nothing: the commit's objects are not
    synced either, nor is each event JetStream stores, so the branch, the objects and the
    events would roll back unevenly anyway; against a process that dies, a write that
    reached the kernel is enough (what resume reads is this ref and the journal). A
    packed or symbolic ref goes through dulwich."""
    if not check_ref_format(git.ref):
        raise GitDirError(f"{git.branch!r} cannot name a branch")
    path = os.path.join(git.common, os.fsdecode(git.ref))
    current = _read_ref(path)
    if current is None or current.startswith(b"ref: "):
        return git.refs().set_if_equals(git.ref, old, new)
    if old is not None and current != old:
        return False
    if current == new:
        return True
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise FileLocked(path, lock) from None
    try:
        try:
            moved = old is not None and _read_ref(path) != old
            if not moved:
                write_all(fd, new + b"\n")
        finally:
            os.close(fd)
        if moved:  # between the look and the lock
            os.unlink(lock)
            return False
        os.replace(lock, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        raise
    return True


def _read_ref(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _content(files: Files, path: bytes, mode: int) -> bytes:
    """The bytes to store for ``path``, read by descriptors (never through a symlink)."""
    text = _text(path)
    parts = tuple(_fs_name(path).split("/"))
    try:
        with files.directory(parts[:-1]) as parent:
            return read_entry(parent, parts[-1], text, mode)
    except Refused as error:
        raise CommitRefused(f"{text} cannot be committed: {error}") from None


def _write_index(
    git: GitDir,
    files: Mapping[bytes, tuple[int, ObjectID]],
    found: dict[bytes, Found],
    previous: StatCache,
    written: Iterable[tuple[str, ...]] | None = None,
    base: ObjectID | None = None,
    extras: list[bytes] | None = None,
) -> None:
    """The worktree's index for the tree of ``files``, with the stat data of the files
    that match it (so ``git status`` in the worktree trusts them without reading them);
    a file found without stat data (not looked at) keeps the ``previous`` index's entry.

    ``written``: the worktree holds exactly ``files`` but on the ways to these paths
    (nothing but writes to them happened since it held exactly a tree, and the commit
    took in every change they made that is not ignored). Said in the index's optional
    ``WRITTEN_EXTENSION`` for the git broker, which checks then only those ways when it
    reuses the worktree for another task (git skips an optional extension it does not
    know, and drops it when it writes the index itself). ``base``, the tree the worktree
    held before those writes, follows in ``BASE_EXTENSION``, and last a fixed-size
    ``END_EXTENSION`` gives where the first of them begins: the broker, which remembers
    the checkout it made of that tree, reads them from the end of the file without
    reading one entry.

    ``extras`` (without ``written``): the worktree holds exactly ``files``, the tree
    ``base``, and besides them only these paths (files, or directories with what is in
    them), none of which a commit holds (``_extras_claim``). Said the same way, with
    ``EXTRAS_EXTENSION`` in place of ``WRITTEN_EXTENSION``: the broker removes them and
    then reuses the worktree by what differs between ``base`` and the next tree, without
    looking at the other files, whose stat data this index has fresh from the scan.

    Written beside and renamed over, but not synced to disk: the index is a cache of stat
    data, never the record of anything. An index a machine crash leaves empty or torn is
    one ``StatCache`` cannot read, and every file is then read and compared with the tree
    (what resume trusts is the branch and the journal).

    Packed here in one pass (version 2, none of git's extensions), not entry by entry through
    dulwich's ``IndexEntry`` objects and writer, which cost more than the scan of a
    small worktree."""
    pack = _INDEX_ENTRY.pack
    chunks = [b"DIRC" + struct.pack(">LL", 2, len(files))]
    for path, (mode, sha) in sorted(files.items()):
        entry = found.get(path)
        if written is not None and entry is None:
            entry = Found(mode, sha, None)  # off the ways: as the tree has it
        if entry is not None and entry.st is None and mode != GITLINK:
            raw = previous.kept_raw(path, mode, sha)
            if raw is not None:
                chunks.append(raw)  # as the previous index stores it, name and padding too
                continue
            kept = previous.kept(path, mode, sha)
            if kept is not None:
                ctime, mtime = _seconds(kept.ctime), _seconds(kept.mtime)
                packed = pack(
                    *ctime,
                    *mtime,
                    kept.dev,
                    kept.ino,
                    mode,
                    kept.uid,
                    kept.gid,
                    kept.size,
                    unhexlify(sha),
                    min(len(path), 0xFFF),
                )
            else:
                packed = _unknown(mode, sha, path)
            chunks.append(packed + _name(path))
        else:
            chunks.append(_packed(path, mode, sha, entry))
    if written is not None:
        chunks.extend(_claim(sum(map(len, chunks)), written, base))
    elif extras is not None and base is not None:
        starts = list(itertools.accumulate(map(len, chunks[1:]), initial=len(chunks[0])))
        chunks.extend(_extras_tail(extras, base)(starts, _recent(files, found)))
    _replace_index(git, chunks)


def _claim(start: int, written: Iterable[tuple[str, ...]], base: ObjectID | None) -> list[bytes]:
    """The extensions saying only ``written`` was written since the worktree held exactly
    ``base``, for an index whose entries end at ``start``."""
    paths = b"\0".join(sorted(os.fsencode("/".join(parts)) for parts in written))
    chunks = [WRITTEN_EXTENSION + struct.pack(">L", len(paths)) + paths]
    if base is not None:
        chunks.extend(_base(start, base))
    return chunks


# What ends an index, given where its entries begin and where the last one ends (only
# the end, for a claim that needs no more) and the paths whose stat data was taken in
# the last ``RECENT_NS``.
Tail = Callable[[Sequence[int], list[bytes]], list[bytes]]


def _extras_tail(extras: list[bytes], base: ObjectID) -> Tail:
    """The extensions saying the worktree holds exactly ``base`` and ``extras``, after
    where each entry begins and the recent paths (``OFFSETS_EXTENSION``, as the broker
    writes it in its own index): the broker reads the index the claim is about without
    walking it entry by entry."""
    paths = b"\0".join(extras)
    claim = EXTRAS_EXTENSION + struct.pack(">L", len(paths)) + paths

    def tail(starts: Sequence[int], recent: list[bytes]) -> list[bytes]:
        table = array.array("I", starts)
        if sys.byteorder == "little":
            table.byteswap()
        told = struct.pack(">L", len(starts) - 1) + table.tobytes() + b"\0".join(recent)
        offsets = OFFSETS_EXTENSION + struct.pack(">L", len(told)) + told
        return [offsets, claim, *_base(starts[-1], base)]

    return tail


def _ways_tail(written: Iterable[tuple[str, ...]], base: ObjectID | None) -> Tail:
    def tail(starts: Sequence[int], recent: list[bytes]) -> list[bytes]:
        return _claim(starts[-1], written, base)

    return tail


def _no_tail(starts: Sequence[int], recent: list[bytes]) -> list[bytes]:
    return []


# How long before an index is written a file's stat data is taken as possibly not older
# than the index's own time (as the broker takes it).
RECENT_NS = 1_000_000_000


def _recent(paths: Iterable[bytes], found: Mapping[bytes, Found]) -> list[bytes]:
    """Of ``paths``, those found with stat data taken in the last ``RECENT_NS``, which
    may not be older than the index about to be written (racily clean)."""
    since = time.time_ns() - RECENT_NS
    out = []
    for path in paths:
        entry = found.get(path)
        if entry is not None and entry.st is not None and entry.st.st_mtime_ns >= since:
            out.append(path)
    return out


def _base(start: int, base: ObjectID) -> list[bytes]:
    """The base tree's extension and the trailer giving where the claim, at ``start``,
    begins."""
    return [
        BASE_EXTENSION + struct.pack(">L", len(base)) + base,
        END_EXTENSION + struct.pack(">LL", 4, start),
    ]


def _replace_index(git: GitDir, chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    data += hashlib.sha1(data, usedforsecurity=False).digest()
    out = GitFile(str(git.admin / "index"), "wb", fsync=False)
    try:
        out.write(data)
    except BaseException:
        out.abort()
        raise
    out.close()


def _write_spliced(
    git: GitDir,
    files: Mapping[bytes, tuple[int, ObjectID]],
    changed: list[bytes],
    state: _State,
    tail: Tail,
    clean: set[bytes] | None = None,
) -> bool:
    """``_write_index`` in time that follows what changed: the index read (the base's,
    as the broker wrote it) with the entries of the paths that changed (``files``: their
    entries, those still there) and of the other files looked at replaced, and any entry
    whose stat data cannot vouch for its file written without it; ``tail`` ends it (the
    claim). ``False`` when the index read cannot be copied so (the caller writes it
    whole).

    ``clean``, after a scan of every file: the tracked files whose entries in the index
    read vouched for them. Every other file was looked at and is replaced; the index
    read is copied only if its other entries are exactly those (it may not be the
    base's)."""
    previous = state.index.raw_entries()
    if previous is None or len(previous) != len(state.tracked):
        return False
    replaced: dict[bytes, bytes | None] = dict.fromkeys(changed)
    for path in changed:
        if (entry := files.get(path)) is not None:
            replaced[path] = _packed(path, *entry, state.found.get(path))
    skip = clean or ()
    for path, found in state.found.items():
        known = state.tracked.get(path)
        if (
            path not in replaced
            and found.st is not None
            and path not in skip
            and known == (found.mode, found.sha)
        ):
            assert known is not None
            replaced[path] = _packed(path, *known, found)
    for path in previous.unkept:
        if path not in replaced and (kept := state.tracked.get(path)) is not None:
            replaced[path] = _unknown(*kept, path) + _name(path)
    starts, data = previous.starts, previous.data
    chunks = [b""]
    # Where each new entry begins, from the end of the header: after a whole scan, for
    # the claim (on the ways, the claim needs only where the last one ends).
    offsets: list[int] = []
    told = clean is not None
    at_byte = _HEADER_SIZE

    def copy(first: int, end: int) -> None:
        nonlocal at_byte
        if told:
            shift = at_byte - starts[first]
            offsets.extend(start + shift for start in starts[first:end])
        chunks.append(data[starts[first] : starts[end]])
        at_byte += starts[end] - starts[first]

    count, done, copied = 0, 0, 0
    for path in sorted(replaced):
        at = previous.find(path, done)
        copy(done, at)
        count += at - done
        copied += at - done
        if at < len(previous) and previous.name(at) == path:
            if not previous.sound(at):
                return False
            done = at + 1
        else:
            done = at
        if (raw := replaced[path]) is not None:
            chunks.append(raw)
            if told:
                offsets.append(at_byte)
            at_byte += len(raw)
            count += 1
    copy(done, len(previous))
    count += len(previous) - done
    copied += len(previous) - done
    if clean is not None and copied != len(clean) - sum(path in clean for path in replaced):
        return False  # the index read held entries besides the clean files'
    chunks[0] = b"DIRC" + struct.pack(">LL", 2, count)
    offsets.append(at_byte)
    chunks.extend(tail(offsets, _recent(replaced, state.found)))
    _replace_index(git, chunks)
    return True


def _packed(path: bytes, mode: int, sha: ObjectID, entry: Found | None) -> bytes:
    """A new index entry as stored: with the stat data of the file looked at, when it
    is the file committed."""
    st = entry.st if entry is not None and entry.mode == mode and mode != GITLINK else None
    if st is None:
        return _unknown(mode, sha, path) + _name(path)
    return _INDEX_ENTRY.pack(
        int(st.st_ctime) & _U32,
        st.st_ctime_ns % 1_000_000_000,
        int(st.st_mtime) & _U32,
        st.st_mtime_ns % 1_000_000_000,
        st.st_dev & _U32,
        st.st_ino & _U32,
        mode,
        st.st_uid & _U32,
        st.st_gid & _U32,
        st.st_size & _U32,
        unhexlify(sha),
        min(len(path), 0xFFF),
    ) + _name(path)


def _name(path: bytes) -> bytes:
    """An entry's name and NUL padding, after its fixed part."""
    return path + b"\0" * (8 - (_INDEX_ENTRY.size + len(path)) % 8)


_INDEX_ENTRY = struct.Struct(">LLLLLLLLLL20sH")
_HEADER_SIZE = 12
_U32 = 0xFFFFFFFF
# The index extension naming the paths the file tools wrote (``_write_index``): an
# optional one, by git's rule (its signature begins with a capital letter). Its data is
# the paths, root-relative, separated by NUL bytes. The git broker reads it
# (``aether_git_broker.adapters.checkout``).
WRITTEN_EXTENSION = b"AETW"
# With it, the tree the worktree held before those writes (40 hexadecimal digits), and
# last the offset in the file of ``WRITTEN_EXTENSION``'s signature (4 bytes, big-endian):
# a fixed-size trailer the broker finds at the end without reading the entries.
BASE_EXTENSION = b"AETB"
# In its place, after a scan of every file with nothing of the agent running: the paths
# the worktree holds besides the tree (``_write_index``'s ``extras``), separated by NUL
# bytes, followed by the same two.
EXTRAS_EXTENSION = b"AETX"


def _unknown(mode: int, sha: ObjectID, path: bytes) -> bytes:
    """An index entry with no stat data: whoever reads the index reads the file."""
    return _INDEX_ENTRY.pack(0, 0, 0, 0, 0, 0, mode, 0, 0, 0, unhexlify(sha), min(len(path), 0xFFF))


def _seconds(value: int | float | tuple[int, int]) -> tuple[int, int]:
    """An index entry's time as the index stores it: seconds and nanoseconds."""
    if isinstance(value, tuple):
        return value[0] & _U32, max(value[1], 0)
    return int(value) & _U32, 0


def reset_to(git: GitDir, sha: str) -> bool:
    """Put the task branch, index and files back at ``sha``, removing untracked files
    that are not ignored. Returns whether anything had to change.

    Every file is removed and written by directory descriptors, without following a
    symlink, so links a command left in the worktree cannot redirect the writes."""
    refs = git.refs()
    target = ObjectID(sha.encode())
    state = _state(git, target, CommitLimits.max_blob_bytes)
    store, tracked, found, changed = state.store, state.tracked, state.found, state.changed
    if refs[git.ref] == target and not changed:
        return False
    files = Files(str(git.worktree))
    for path in sorted(p for p in changed if p in found):
        _remove(files, _fs_name(path))
    for path in changed:
        if path in found:
            _prune_empty(files, _fs_name(path), tracked)
    for path in sorted(p for p in changed if p in tracked):
        mode, blob_id = tracked[path]
        if mode == GITLINK:
            continue
        blob = store[blob_id]
        assert isinstance(blob, Blob)
        found[path] = _write(files, _fs_name(path), mode, blob.as_raw_string(), blob_id)
    move_branch(git, None, target)
    _write_index(git, tracked, found, state.index)
    return True


def _remove(files: Files, path: str) -> None:
    parts = tuple(path.split("/"))
    with (
        contextlib.suppress(FileNotFoundError, NotADirectoryError, Refused),
        files.directory(parts[:-1]) as parent,
    ):
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            remove_tree(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)


def _prune_empty(files: Files, path: str, tracked: Mapping[bytes, tuple[int, ObjectID]]) -> None:
    """Remove the now empty directories above a removed untracked file."""
    parts = path.split("/")[:-1]
    while parts:
        with contextlib.suppress(OSError, Refused), files.directory(tuple(parts[:-1])) as parent:
            os.rmdir(parts[-1], dir_fd=parent)
        parts.pop()


def _write(files: Files, path: str, mode: int, data: bytes, sha: ObjectID) -> Found:
    parts = tuple(path.split("/"))
    with files.directory(parts[:-1], create=True) as parent:
        name = parts[-1]
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                remove_tree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
        if mode == SYMLINK:
            os.symlink(os.fsdecode(data), name, dir_fd=parent)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o777 if mode & 0o100 else 0o666, dir_fd=parent)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        return Found(mode, sha, os.stat(name, dir_fd=parent, follow_symlinks=False))
