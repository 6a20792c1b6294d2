"""Writing a tree out as files, with its index, as fast as Python allows.

dulwich's ``reset_index`` does it file by file through its attribute and filter
machinery, reading each blob with a separate pack lookup: about 3 s for 10,000 files.
Here the tree is listed from the cached trees, the blobs are read in one pass in pack
order, each file is written with four system calls (open, write, fstat, close), and the
index (version 2, no extensions) is written in one go: about a third of that time.

Every file is written exactly as its blob stores it: no ``.gitattributes``, no filter,
diff or line-ending driver, no configuration is consulted, because any of them can name a
program to run (a ``filter.<x>.smudge`` in a configuration file is started by git for
each file whose attributes say ``filter=<x>``, and the attributes come with the agent's
commit). Names git would never check out (``..``, ``.git``, anything with a ``/``) are
refused: a commit made by an agent is not trusted to stay inside its directory.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import hashlib
import itertools
import os
import re
import stat
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from dulwich.index import validate_path_element_hfs, validate_path_element_ntfs
from dulwich.object_store import BaseObjectStore
from dulwich.objects import ObjectID, ShaFile
from dulwich.repo import Repo

from aether_git_broker.adapters.repository import RepositoryError
from aether_git_broker.adapters.treemerge import Entry, Trees
from aether_sandbox.trees import OWNER_ALL, owner_may, remove_tree

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_GITLINK = 0o160000
_SYMLINK = 0o120000


class UnsupportedRepository(RepositoryError):
    """A repository whose objects are not named by SHA-1 (its index would differ)."""


class UnsafePath(ValueError):
    """A tree entry whose name would escape the directory or overwrite git's own files."""


class FileEntry(NamedTuple):
    """A tree's non-directory entry, by its path below the tree (a tuple: a tree of
    thousands of files makes as many each checkout)."""

    path: bytes
    mode: int
    sha: ObjectID


def is_dot_git(name: bytes) -> bool:
    """Whether a file system git's users check out on reads ``name`` as ``.git``: any
    case, NTFS's trailing dots and spaces, its short name ``GIT~1`` and alternate data
    streams, and HFS+'s ignored code points (``.g\u200cit``). Written on Linux they are
    plain names, but the branch is merged and cloned elsewhere, where such a directory
    is the repository's own (its hooks run): git itself refuses them."""
    if name.lower() == b".git" or not validate_path_element_ntfs(name):
        return True
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False  # not a name HFS+ could hold, so not its .git either
    return not validate_path_element_hfs(name)


def is_dot_gitmodules(name: bytes) -> bool:
    """``.gitmodules`` as git reads it: any case, NTFS's trailing dots and spaces, its
    short name. git refuses to check one out as a symlink (its target would be read as
    the submodules' configuration), so no checkout or merge here writes one."""
    lowered = name.lower().rstrip(b". ")
    return lowered == b".gitmodules" or lowered.startswith(b"gitmod~")


def linked_gitmodules(files: Mapping[bytes, tuple[int, ObjectID] | None]) -> list[str]:
    """The paths of ``files`` (path → mode and object, or gone) that are a
    ``.gitmodules`` symlink."""
    return sorted(
        path.decode(errors="replace")
        for path, entry in files.items()
        if entry is not None
        and stat.S_ISLNK(entry[0])
        and is_dot_gitmodules(path.rpartition(b"/")[2])
    )


# Names found safe (``_unsafe``) that cannot be read as ``.gitmodules`` either: whether a
# name is safe depends on the name alone, and checking one (NTFS's and HFS+'s readings of
# ``.git``) takes microseconds. A tree that changed is listed whole, and a directory that
# gains a file each task would otherwise have every one of its names checked again each
# time. A ``.gitmodules`` name is left out, as whether it may be checked out depends on
# its mode too (``checked_entries``). Cleared whole when full.
_SAFE_NAMES: set[bytes] = set()
_SAFE_KEPT = 1 << 16


def _unsafe(name: bytes) -> bool:
    if name in _SAFE_NAMES:
        return False
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name or is_dot_git(name):
        return True
    if not is_dot_gitmodules(name):
        if len(_SAFE_NAMES) >= _SAFE_KEPT:
            _SAFE_NAMES.clear()
        _SAFE_NAMES.add(name)
    return False


def _check_name(name: bytes, prefix: bytes) -> None:
    if _unsafe(name):
        raise UnsafePath(f"the tree has an entry {prefix.decode(errors='replace')}{name!r}")


def unsafe_paths(paths: Iterable[bytes]) -> list[str]:
    """The paths no checkout would write (a ``..`` or ``.git`` component, an empty one)."""
    return sorted(
        path.decode(errors="replace") for path in paths if any(map(_unsafe, path.split(b"/")))
    )


# Trees whose entries' names have all been checked. A tree's id names its entries, so
# the check holds for good; a task's tree differs from the one before in a few
# directories, and checking every name (NTFS's and HFS+'s readings of ``.git``) was most
# of listing a tree of thousands of files. Cleared whole when full (a set's own
# operations are safe from the pool's warming thread).
_CHECKED_TREES: set[ObjectID] = set()
_CHECKED_KEPT = 1 << 16


def checked_entries(trees: Trees, tree_id: ObjectID, prefix: bytes) -> Mapping[bytes, Entry]:
    """A tree's entries, its names checked (``UnsafePath``) unless already checked."""
    entries = trees.entries(tree_id)
    if tree_id not in _CHECKED_TREES:
        # Only the names not known safe (a set's difference: a changed directory of
        # thousands of files has a few new names, if any).
        for name in entries.keys() - _SAFE_NAMES:
            _check_name(name, prefix)
            if stat.S_ISLNK(entries[name][0]) and is_dot_gitmodules(name):
                shown = prefix.decode(errors="replace")
                raise UnsafePath(f"the tree has {shown}{name!r} as a link")
        if len(_CHECKED_TREES) >= _CHECKED_KEPT:
            _CHECKED_TREES.clear()
        _CHECKED_TREES.add(tree_id)
    return entries


def list_tree(trees: Trees, tree_id: ObjectID) -> tuple[list[bytes], list[FileEntry]]:
    """Every directory (parents first) and every non-directory entry below a tree."""
    directories: list[bytes] = []
    files: list[FileEntry] = []
    pending: list[tuple[bytes, ObjectID]] = [(b"", tree_id)]
    while pending:
        prefix, tree = pending.pop()
        for name, (mode, sha) in checked_entries(trees, tree, prefix).items():
            path = prefix + name
            if stat.S_ISDIR(mode):
                directories.append(path)
                pending.append((path + b"/", sha))
            else:
                files.append(FileEntry(path, mode, sha))
    directories.sort()
    return directories, files


def index_mode(mode: int) -> int:
    if stat.S_ISREG(mode):
        return 0o100755 if mode & 0o100 else 0o100644
    return mode


def _stat_fields(st: os.stat_result) -> tuple[int, ...]:
    return (
        int(st.st_ctime) & 0xFFFFFFFF,
        st.st_ctime_ns % 1_000_000_000,
        int(st.st_mtime) & 0xFFFFFFFF,
        st.st_mtime_ns % 1_000_000_000,
        st.st_dev & 0xFFFFFFFF,
        st.st_ino & 0xFFFFFFFF,
    )


# A file's stat data for the index: taken now, kept from an earlier index (as it stores
# it: ctime s/ns, mtime s/ns, dev, ino, uid, gid, size), or none.
Stat = os.stat_result | tuple[int, ...] | None


_ENTRY = struct.Struct(">LLLLLLLLLL20sH")


def pack_entry(name: bytes, mode: int, sha: ObjectID, st: Stat) -> bytes:
    """One version 2 index entry as stored: its fields, name and NUL padding."""
    if isinstance(st, os.stat_result):  # a tuple too: asked first
        fields = list(_stat_fields(st))
        uid, gid, size = st.st_uid, st.st_gid, st.st_size & 0xFFFFFFFF
    elif st is not None:
        *fields, uid, gid, size = st
    else:
        fields, uid, gid, size = [0, 0, 0, 0, 0, 0], 0, 0, 0
    entry = _ENTRY.pack(
        *fields,
        index_mode(mode),
        uid,
        gid,
        size,
        bytes.fromhex(sha.decode()),
        min(len(name), 0xFFF),
    )
    entry += name
    return entry + b"\0" * (8 - len(entry) % 8)


def stat_mtime_ns(st: Stat) -> int:
    """The modification time (ns) of an index entry's stat data (0: none)."""
    if isinstance(st, os.stat_result):
        return st.st_mtime_ns
    if st is not None:
        return st[2] * 1_000_000_000 + st[3]
    return 0


@dataclass(frozen=True)
class Written:
    """An index as written: its paths in order, each entry as stored, the file's
    modification time, and the paths whose stat data is not older than it (racily
    clean: their content cannot be vouched for by their stat data)."""

    names: list[bytes]
    raws: list[bytes]
    mtime_ns: int
    racy: frozenset[bytes]


def write_index(path: str, entries: list[tuple[bytes, int, ObjectID, Stat]]) -> Written:
    """Write a version 2 index of ``(path, mode, sha, stat)`` (no stat: all zeros)."""
    entries = sorted(entries, key=lambda e: e[0])
    names = [name for name, _, _, _ in entries]
    raws = [pack_entry(*entry) for entry in entries]
    # Only stat data taken now can be racily clean: what is kept from an earlier index
    # was older than that index (``_trusted_clean``), so the racy are among the recent.
    since = time.time_ns() - RECENT_NS
    recent = [
        (name, st.st_mtime_ns)
        for name, _, _, st in entries
        if isinstance(st, os.stat_result) and st.st_mtime_ns >= since
    ]
    mtime_ns = write_raw_index(path, raws, [name for name, _ in recent])
    racy = frozenset(name for name, mtime in recent if mtime >= mtime_ns)
    return Written(names, raws, mtime_ns, racy)


# How long before an index is written a file's stat data is taken as possibly not older
# than the index's own time (the file system's clock is coarser than ``time_ns``, by a
# few milliseconds at most).
RECENT_NS = 1_000_000_000


def write_raw_index(path: str, raws: list[bytes], recent: Iterable[bytes] = ()) -> int:
    """Write a version 2 index of entries as stored, in order; returns its mtime (ns).

    It ends with where each entry begins and the paths whose stat data may not be older
    than the index (``recent``: those taken in the last ``RECENT_NS``), in
    ``OFFSETS_EXTENSION`` and a fixed-size trailer (``END_EXTENSION``), which git skips:
    the agent runner copies the entries of the files nobody touched without walking the
    index entry by entry."""
    header = b"DIRC" + struct.pack(">LL", 2, len(raws))
    starts = array.array("I", itertools.accumulate(map(len, raws), initial=len(header)))
    if sys.byteorder == "little":
        starts.byteswap()
    told = struct.pack(">L", len(raws)) + starts.tobytes() + b"\0".join(recent)
    end = len(header) + sum(map(len, raws))
    data = b"".join(
        [
            header,
            *raws,
            OFFSETS_EXTENSION + struct.pack(">L", len(told)) + told,
            _TRAILER.pack(END_EXTENSION, 4, end),
        ]
    )
    data += hashlib.sha1(data, usedforsecurity=False).digest()
    temporary = path + ".lock"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        mtime_ns = os.fstat(file.fileno()).st_mtime_ns
    os.replace(temporary, path)
    return mtime_ns


class IndexEntry(NamedTuple):
    """One entry of an index: its mode, object and the stat data it was written with
    (ctime s/ns, mtime s/ns, dev, ino, uid, gid, size; 32-bit as stored). A tuple: an
    index of thousands of entries is read at each checkout."""

    mode: int
    sha: ObjectID
    stat: tuple[int, ...]


@dataclass(frozen=True)
class Index:
    """An index's entries, and the paths its ``WRITTEN_EXTENSION`` names (``None``:
    none, or not a list of safe paths)."""

    entries: dict[bytes, IndexEntry]
    written: list[bytes] | None = None


# The optional index extension in which the agent runner names the paths its file tools
# wrote when nothing else happened in the worktree since it held exactly a tree: the
# worktree then holds exactly the index's entries but on the ways to those paths
# (``aether_agent_runner.adapters.git.WRITTEN_EXTENSION``; the paths root-relative,
# separated by NUL bytes).
WRITTEN_EXTENSION = b"AETW"


# With ``WRITTEN_EXTENSION``, the runner's index gives the tree the worktree held before
# those writes (``BASE_EXTENSION``: 40 hexadecimal digits), and ends with
# ``END_EXTENSION``: 4 bytes, big-endian, the offset of the first of the two, so they are
# read from the end of the file without reading one entry (an index's entries end in
# NUL padding, so its last bytes cannot pass for this trailer).
BASE_EXTENSION = b"AETB"
END_EXTENSION = b"AETZ"
_TRAILER = struct.Struct(">4sLL")
# In place of ``WRITTEN_EXTENSION``, after the runner scanned every file with nothing
# of the agent running: the worktree holds exactly the index's entries, the tree
# ``BASE_EXTENSION`` names, and besides them only these paths (files, or directories
# with what is in them), none of which a commit holds: ignored files, nested ``.git``
# directories, special files, directories a command made that hold nothing committed
# (``aether_agent_runner.adapters.git.EXTRAS_EXTENSION``; NUL-separated, root-relative).
EXTRAS_EXTENSION = b"AETX"
# The broker's own index ends with where each entry begins (``write_raw_index``).
OFFSETS_EXTENSION = b"AETO"
_SHA1_HEX = re.compile(rb"[0-9a-f]{40}")


@dataclass(frozen=True)
class Claim:
    """What the agent runner's index says of its worktree: it held exactly ``base``
    (the broker's checkout), and since then only the paths ``written`` were written; or,
    with ``extras``, that it holds exactly ``base`` with the index's entries (``index``,
    as written) and besides them only the paths ``extras``."""

    written: list[bytes]
    base: ObjectID
    extras: list[bytes] | None = None
    index: Written | None = None


def read_claim(path: str) -> Claim | None:
    """The claim at the end of the index at ``path``, or ``None``: no claim, an index
    that is damaged or not version 2, or a claim naming an unsafe path."""
    try:
        with open(path, "rb") as file:
            data = file.read()
            mtime_ns = os.fstat(file.fileno()).st_mtime_ns
    except OSError:
        return None
    end = len(data) - 20 - _TRAILER.size
    if end < 12 or data[:8] != b"DIRC\0\0\0\2":
        return None
    signature, size, start = _TRAILER.unpack_from(data, end)
    if signature != END_EXTENSION or size != 4 or not 12 <= start <= end:
        return None
    if hashlib.sha1(data[:-20], usedforsecurity=False).digest() != data[-20:]:
        return None
    found: dict[bytes, bytes] = {}
    offset = start
    while offset < end:
        if offset + 8 > end:
            return None
        signature, size = struct.unpack_from(">4sL", data, offset)
        found[signature] = data[offset + 8 : offset + 8 + size]
        offset += 8 + size
    body, base = found.get(WRITTEN_EXTENSION), found.get(BASE_EXTENSION)
    extras = found.get(EXTRAS_EXTENSION)
    if offset != end or (body is None) == (extras is None):
        return None
    if base is None or not _SHA1_HEX.fullmatch(base):
        return None
    paths = (body if body is not None else extras or b"").split(b"\0")
    if paths == [b""]:
        paths = []
    if body is not None:
        if any(path.startswith(b"/") or unsafe_paths([path]) for path in paths):
            return None
        return Claim(paths, ObjectID(base))
    # An extra may be a nested ``.git``: only one that would lead out, or the worktree's
    # own, is refused here (the reuse takes only extras in the base tree's directories).
    told = found.get(OFFSETS_EXTENSION)
    index = _as_told(data, start, mtime_ns, told) if told is not None else None
    if index is None or any(_leads_out(path) or path == b".git" for path in paths):
        return None
    return Claim([], ObjectID(base), paths, index)


def _as_told(data: bytes, end: int, mtime_ns: int, told: bytes) -> Written | None:
    """The entries of a version 2 index (``data``, its entries ending at ``end``,
    modified at ``mtime_ns``) as stored, by where the index says they begin and which of
    them were written just before it (``OFFSETS_EXTENSION``), or ``None`` when those do
    not fit. Each entry is sliced, not parsed, and checked for the length its name gives
    (so no entry has a merge stage or extended flags), the names for their order; only
    the recent entries' times are read (racily clean: not older than the index)."""
    (count,) = struct.unpack_from(">L", data, 8)
    table = 4 + 4 * (count + 1)
    if len(told) < table or struct.unpack_from(">L", told)[0] != count:
        return None
    starts = array.array("I")
    starts.frombytes(told[4:table])
    if sys.byteorder == "little":
        starts.byteswap()
    if starts[0] != 12 or starts[-1] != end:
        return None
    raws = [data[a:b] for a, b in zip(starts, itertools.islice(starts, 1, None), strict=False)]
    names = [raw[62:].rstrip(b"\0") for raw in raws]
    if not all(
        len(raw) == (70 + len(name)) & ~7 and raw[60:62] == len(name).to_bytes(2, "big")
        for raw, name in zip(raws, names, strict=True)
    ):
        return None
    if not all(a < b for a, b in itertools.pairwise(names)):
        return None
    racy: list[bytes] = []
    for name in told[table:].split(b"\0") if len(told) > table else []:
        at = bisect.bisect_left(names, name)
        if at == len(names) or names[at] != name or _leads_out(name):
            return None
        seconds, nanoseconds = struct.unpack_from(">LL", raws[at], 8)
        if seconds * 1_000_000_000 + nanoseconds >= mtime_ns:
            racy.append(name)
    return Written(names, raws, mtime_ns, frozenset(racy))


@dataclass(frozen=True)
class Checkout:
    """A checkout the broker made into a worktree: its tree and its index as written."""

    tree: ObjectID
    index: Written

    def entry(self, path: bytes) -> bytes | None:
        """The index entry of ``path`` as stored, if it has one."""
        names = self.index.names
        at = bisect.bisect_left(names, path)
        return self.index.raws[at] if at < len(names) and names[at] == path else None


def entry_fields(raw: bytes) -> IndexEntry:
    """An index entry as stored, read."""
    *fields, mode, uid, gid, size, sha, _ = _ENTRY.unpack_from(raw)
    return IndexEntry(mode, ObjectID(sha.hex().encode()), (*fields, uid, gid, size))


class Checkouts:
    """The last checkout made into each worktree's administrative directory, by the
    directory's identity (device, inode: it keeps it when the worktree is pooled and
    reused), bounded by the entries kept in all (about 200 bytes each: a project of
    50,000 files has four worktrees' records)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._kept: OrderedDict[tuple[int, int], Checkout] = OrderedDict()
        self._entries = 0
        self._max = max_entries
        self._lock = threading.Lock()

    @staticmethod
    def _key(index_path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(os.path.dirname(index_path))
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def remember(self, index_path: str, tree: ObjectID, index: Written) -> None:
        key = self._key(index_path)
        if key is None or len(index.names) > self._max:
            return
        with self._lock:
            self._drop(key)
            self._kept[key] = Checkout(tree, index)
            self._entries += len(index.names)
            while self._entries > self._max:
                self._drop(next(iter(self._kept)))

    def forget(self, index_path: str) -> None:
        key = self._key(index_path)
        if key is not None:
            with self._lock:
                self._drop(key)

    def take(self, index_path: str) -> Checkout | None:
        """The checkout remembered for the directory of ``index_path``, forgotten."""
        key = self._key(index_path)
        if key is None:
            return None
        with self._lock:
            found = self._kept.get(key)
            self._drop(key)
        return found

    def _drop(self, key: tuple[int, int]) -> None:
        gone = self._kept.pop(key, None)
        if gone is not None:
            self._entries -= len(gone.index.names)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._entries = 0

    def __len__(self) -> int:
        return len(self._kept)


def read_index(path: str) -> Index | None:
    """The entries of a version 2 or 3 index, or ``None`` if it cannot be read (missing,
    damaged, another version): the caller then writes every file again."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    if len(data) < 32 or data[:4] != b"DIRC":
        return None
    if hashlib.sha1(data[:-20], usedforsecurity=False).digest() != data[-20:]:
        return None
    version, count = struct.unpack(">LL", data[4:12])
    if version not in (2, 3):
        return None
    entries: dict[bytes, IndexEntry] = {}
    offset = 12
    try:
        for _ in range(count):
            *fields, mode, uid, gid, size, sha, flags = _ENTRY.unpack_from(data, offset)
            start = offset + _ENTRY.size
            if flags & 0x4000:  # extended flags (version 3)
                start += 2
            if flags & 0x3000:  # a merge stage: not a clean checkout
                return None
            end = data.index(b"\0", start)
            name = data[start:end]
            length = end - offset
            offset += length + (8 - length % 8)
            entries[name] = IndexEntry(
                mode, ObjectID(sha.hex().encode()), (*fields, uid, gid, size)
            )
        written = _written(data, offset)
    except (struct.error, ValueError):
        return None
    return Index(entries, written)


def _written(data: bytes, offset: int) -> list[bytes] | None:
    """The paths of the index's ``WRITTEN_EXTENSION``, from the first extension at
    ``offset`` on; ``None`` without one, or when one of its paths is not a safe path."""
    end = len(data) - 20
    while offset + 8 <= end:
        signature = data[offset : offset + 4]
        (size,) = struct.unpack_from(">L", data, offset + 4)
        body = data[offset + 8 : offset + 8 + size]
        offset += 8 + size
        if signature != WRITTEN_EXTENSION or offset > end:
            continue
        paths = body.split(b"\0") if body else []
        if any(path.startswith(b"/") or unsafe_paths([path]) for path in paths):
            return None
        return paths
    return None


def _known(
    root: bytes, old: dict[bytes, IndexEntry], written: list[bytes]
) -> tuple[dict[bytes, os.stat_result], set[bytes], dict[bytes, IndexEntry]] | None:
    """What a directory holds that, by its index's ``WRITTEN_EXTENSION``, holds exactly
    ``old`` but on the ways to ``written``: the files and directories found walking only
    those ways (and, whole, every directory ``old`` does not have, which only the writes
    can have made), the directories of ``old`` off them, and ``old``'s files off them or
    that no write went for, which are not looked at.

    The paths of ``old`` are then removed or written by name, so an index with a path
    that would lead out of the directory (absolute, or with an empty, ``.`` or ``..``
    component) is not believed: ``None``, and the directory is scanned whole."""
    targets = set(written)
    ways = {b""}
    for path in written:
        parts = path.split(b"/")
        for end in range(1, len(parts) + 1):
            ways.add(b"/".join(parts[:end]))
    old_dirs: set[bytes] = set()
    for path in old:
        if _leads_out(path):
            return None
        end = path.rfind(b"/")
        while end > 0 and path[:end] not in old_dirs:
            old_dirs.add(path[:end])
            end = path.rfind(b"/", 0, end)
    untouched: set[bytes] = set()  # listed on a way, but no write went for them

    def passed(path: bytes) -> bool:
        was = old.get(path)
        if was is not None and was.mode != _GITLINK and path not in targets:
            untouched.add(path)
            return True
        return False

    present, directories = _scan(root, passed, lambda path: path in ways or path not in old_dirs)
    trusted: dict[bytes, IndexEntry] = {}
    for path, was in old.items():
        if path.rpartition(b"/")[0] in ways and path not in untouched:
            continue  # on a way: found by the walk, or gone
        if was.mode == _GITLINK:
            directories.add(path)
        else:
            trusted[path] = was
    directories.update(d for d in old_dirs if d.rpartition(b"/")[0] not in ways)
    return present, directories, trusted


def _leads_out(path: bytes) -> bool:
    """Whether a relative path would leave the directory it is taken in (or name it)."""
    framed = b"/" + path + b"/"
    return (
        path.startswith(b"/")
        or b"\0" in path
        or b"/../" in framed
        or b"/./" in framed
        or b"//" in framed
    )


def _trusted_clean(old: IndexEntry, index_mtime_ns: int) -> bool:
    """Whether an index entry's stat data can be kept for a file nobody wrote since:
    there is some, taken before the index was written (not racily clean)."""
    mtime_ns = old.stat[2] * 1_000_000_000 + old.stat[3]
    return mtime_ns != 0 and mtime_ns < index_mtime_ns


def is_clean(old: IndexEntry, st: os.stat_result, mode: int, index_mtime_ns: int) -> bool:
    """Whether a file on disk is still what the index says, by its stat data alone.

    A file changed in the same instant the index was written cannot be told apart that
    way ("racily clean", in git's words), so it counts as changed and is written again.
    """
    if st.st_mtime_ns >= index_mtime_ns:
        return False
    if mode == _SYMLINK:
        if not stat.S_ISLNK(st.st_mode):
            return False
    elif not stat.S_ISREG(st.st_mode) or bool(st.st_mode & 0o100) != bool(mode & 0o100):
        return False
    ctime_s, ctime_ns, mtime_s, mtime_ns, _, ino = _stat_fields(st)
    was = old.stat
    return (ctime_s, ctime_ns, mtime_s, mtime_ns, ino, st.st_size & 0xFFFFFFFF) == (
        was[0],
        was[1],
        was[2],
        was[3],
        was[5],
        was[8],
    )


def _listing(directory: bytes) -> os._ScandirIterator[bytes]:
    """``os.scandir(directory)``; a directory a command took its owner's bits off
    (``chmod 000``, ``300``, ``500``) is given them back first (``aether_sandbox.trees``),
    else a pooled worktree holding one could not be listed, nor what it holds removed,
    and so not checked out again."""
    st = os.stat(directory, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & OWNER_ALL != OWNER_ALL:
        owner_may(directory, OWNER_ALL)
    return os.scandir(directory)


def _scan(
    root: bytes,
    passed: Callable[[bytes], bool] | None = None,
    enters: Callable[[bytes], bool] | None = None,
) -> tuple[dict[bytes, os.stat_result], set[bytes]]:
    """Every file and directory below ``root`` (relative paths), its ``.git`` aside.

    ``passed``: the paths left out, not looked at; ``enters``: the only directories
    walked into (one gone by then is passed over)."""
    files: dict[bytes, os.stat_result] = {}
    directories: set[bytes] = set()
    pending = [b""]
    while pending:
        prefix = pending.pop()
        where = root + b"/" + prefix if prefix else root
        try:
            listing = _listing(where)
        except (FileNotFoundError, NotADirectoryError):
            if enters is None:
                raise
            continue
        with listing:
            for entry in listing:
                path = prefix + b"/" + entry.name if prefix else entry.name
                if not prefix and entry.name == b".git":
                    continue
                if passed is not None and passed(path):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    directories.add(path)
                    if enters is None or enters(path):
                        pending.append(path)
                else:
                    files[path] = entry.stat(follow_symlinks=False)
    return files, directories


def checkout(
    repo: Repo,
    trees: Trees,
    tree_id: ObjectID,
    directory: str,
    index_path: str,
    previous: str | None = None,
    checkouts: Checkouts | None = None,
) -> int:
    """Make ``directory`` hold exactly ``tree_id`` and write its index to ``index_path``.

    With ``previous`` (the index of what the directory held), files whose content and
    stat data match are kept and everything else is removed or written: a directory
    used before needs only what differs. Without it the directory must be empty.
    Returns the number of files written. Blobs are written as stored: no attributes,
    filters or configuration take part. ``checkouts``: where the checkout is remembered,
    by the directory of ``index_path`` (a worktree's administrative directory).
    """
    if repo.object_format.name != "sha1":
        raise UnsupportedRepository(f"{repo.path} names its objects by {repo.object_format.name}")
    directories, files = list_tree(trees, tree_id)
    root = os.fsencode(directory)
    wanted = {entry.path: entry for entry in files}
    index: list[tuple[bytes, int, ObjectID, Stat]] = []
    existing: set[bytes] = set()
    read = read_index(previous) if previous is not None else None
    old = read.entries if read is not None else None
    if previous is not None:
        index_mtime = os.stat(previous).st_mtime_ns if old is not None else 0
        trusted: dict[bytes, IndexEntry] = {}
        known = None
        if read is not None and read.written is not None:
            known = _known(root, read.entries, read.written)
        if known is not None:
            present, present_dirs, trusted = known
        else:
            present, present_dirs = _scan(root)
        for path, kept in trusted.items():
            entry = wanted.get(path)
            if (
                entry is not None
                and kept.sha == entry.sha
                and index_mode(kept.mode) == index_mode(entry.mode)
                and _trusted_clean(kept, index_mtime)
            ):
                index.append((path, entry.mode, entry.sha, kept.stat))
                del wanted[path]
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(root + b"/" + path)
        for path, st in present.items():
            entry = wanted.get(path)
            was = old.get(path) if old is not None else None
            if (
                entry is not None
                and was is not None
                and was.sha == entry.sha
                and index_mode(was.mode) == index_mode(entry.mode)
                and is_clean(was, st, entry.mode, index_mtime)
            ):
                index.append((path, entry.mode, entry.sha, st))
                del wanted[path]
            else:
                os.unlink(root + b"/" + path)
        gitlinks = {path for path, entry in wanted.items() if entry.mode == _GITLINK}
        keep = set(directories) | gitlinks
        for path in sorted(present_dirs - keep, key=len, reverse=True):
            full = root + b"/" + path
            if os.path.isdir(full):
                remove_tree(full)
        existing = present_dirs & keep
    for path in directories:
        if path not in existing:
            os.mkdir(root + b"/" + path)
    index.extend(write_files(repo.object_store, root, wanted.values()))
    if checkouts is not None:
        checkouts.forget(index_path)
    written = write_index(index_path, index)
    if checkouts is not None:
        checkouts.remember(index_path, tree_id, written)
    return sum(1 for e in wanted.values() if e.mode != _GITLINK)


def write_files(
    store: BaseObjectStore, root: bytes, wanted: Iterable[FileEntry]
) -> list[tuple[bytes, int, ObjectID, Stat]]:
    """Write each entry below ``root`` (its path free, its directory there), blobs in
    pack order; returns their index entries (a gitlink: an empty directory, no stat)."""
    index: list[tuple[bytes, int, ObjectID, Stat]] = []
    by_sha: dict[ObjectID, list[FileEntry]] = {}
    for entry in wanted:
        if entry.mode == _GITLINK:
            os.makedirs(root + b"/" + entry.path, exist_ok=True)
            index.append((entry.path, entry.mode, entry.sha, None))
        else:
            by_sha.setdefault(entry.sha, []).append(entry)
    for blob in _blobs(store, by_sha):
        data = blob.as_raw_string()
        for entry in by_sha.pop(blob.id):
            target = root + b"/" + entry.path
            if entry.mode == _SYMLINK:
                os.symlink(data, target)
                index.append((entry.path, entry.mode, entry.sha, os.lstat(target)))
                continue
            fd = os.open(target, _CREATE, 0o777 if entry.mode & 0o100 else 0o666)
            try:
                _write_all(fd, data)
                index.append((entry.path, entry.mode, entry.sha, os.fstat(fd)))
            finally:
                os.close(fd)
    if by_sha:
        missing = next(iter(by_sha)).decode()
        raise KeyError(f"object {missing} is missing from the repository")
    return index


# How many times the objects still missing are looked for again (see ``_blobs``).
_LOOKS = 3


def _blobs(store: BaseObjectStore, wanted: Mapping[ObjectID, object]) -> Iterator[ShaFile]:
    """The objects of ``wanted`` that are not yet taken out of it, as the caller takes
    them (each at most once). A ``git gc`` in the repository (git starts one in the
    background after a commit that leaves many loose objects) can pack loose objects
    and delete them between dulwich's look at the packs and its look at the loose
    files, so an object is reported missing that is in a pack by then: what is still
    wanted is looked for again, packs first, before it is taken for missing."""
    for look in range(_LOOKS):
        try:
            yield from store.iterobjects_subset(list(wanted))
            return
        except KeyError:
            if look == _LOOKS - 1:
                raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
