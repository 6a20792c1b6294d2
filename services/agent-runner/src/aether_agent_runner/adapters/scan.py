"""What a worktree holds, read as git would without running anything.

The files are walked by directory descriptors (no symlink is followed, a ``.git`` at any
depth is skipped) and compared with a tree: no index, no attributes, no filter or diff
driver, no configuration of any kind. ``.gitignore`` files (read the same safe way) and
the repository's ``info/exclude`` decide which untracked files count; a tracked file
always counts.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import itertools
import os
import stat
import struct
import sys
import threading
from binascii import hexlify, unhexlify
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Generic, NamedTuple, TypeVar

from dulwich.errors import ChecksumMismatch
from dulwich.ignore import IgnoreFilter, read_ignore_patterns
from dulwich.index import Index, IndexEntry
from dulwich.objects import ObjectID

from aether_agent_runner.adapters.safefs import Raced, Refused, is_git_name, open_dir, read_in

GITLINK = 0o160000
SYMLINK = 0o120000
MAX_IGNORE_BYTES = 1_000_000
# Directories nested deeper than this are not walked: each level is a frame of the walk,
# and a command can nest thousands (far within the file cap) to make it overflow.
MAX_DEPTH = 200
_INDEXES_LOCK = threading.Lock()  # scans run in worker threads, several tasks at once


class TooDeep(Exception):
    """The worktree nests directories deeper than ``MAX_DEPTH``: it is not walked."""


class StatCache:
    """The worktree's index as a cache of blob ids by stat data, as git uses it: a file
    whose size, inode, mode and modification time are what the index recorded, and that
    was not modified in the same instant the index was written, is not read again.

    The index lives in the worktree's git directory, out of the agent's reach; an index
    that cannot be read (missing, another version) only means every file is read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stat: os.stat_result | None = None
        # Read at the first use: a look at only the ways to what the file tools wrote,
        # and its commit, need no entry parsed (``kept_raw``).
        self._parsed: Mapping[bytes, IndexEntry] | None = None
        self._raw: RawIndex | None = None
        self._raw_read = False
        self._keys: Mapping[bytes, _StatKey] | None = None
        self._written_ns = 0
        try:
            self._stat = os.stat(path)
        except OSError:
            self._parsed, self._raw_read = {}, True
            return
        self._written_ns = self._stat.st_mtime_ns

    @property
    def _entries(self) -> Mapping[bytes, IndexEntry]:
        if self._parsed is None:
            assert self._stat is not None
            self._parsed = _parsed_index(self._path, self._stat)
        return self._parsed

    def kept_raw(self, path: bytes, mode: int, sha: ObjectID) -> bytes | None:
        """``kept``'s entry as the index stores it (name and padding included), for a new
        index to copy as it is; ``None`` also when the index's entries cannot be copied
        so (not version 2, or with extended flags)."""
        entries = self.raw_entries()
        raw = entries.by_path.get(path) if entries is not None else None
        if raw is None or raw[40:60] != unhexlify(sha):
            return None
        mtime_s, mtime_ns, _, _, entry_mode = _RAW_STAT.unpack_from(raw, 8)
        if entry_mode != mode:
            return None
        written = mtime_s * 1_000_000_000 + mtime_ns
        return raw if 0 < written < self._written_ns else None

    def raw_entries(self) -> RawIndex | None:
        """The index's entries as stored (``RawIndex``), or ``None`` when they cannot
        be copied so."""
        if not self._raw_read:
            assert self._stat is not None
            self._raw = _raw_index(self._path, self._stat)
            self._raw_read = True
        return self._raw

    def kept(self, path: bytes, mode: int, sha: ObjectID) -> IndexEntry | None:
        """The index's entry for ``path`` when it records ``mode`` and ``sha`` and its
        stat data was taken before the index was written (not racily clean: a file
        modified in the instant the index was written could hold other bytes than it
        says), for a new index to keep for a file nobody touched."""
        entry = self._entries.get(path)
        if entry is None or entry.mode != mode or entry.sha != sha:
            return None
        seconds, nanoseconds = _time(entry.mtime)
        if seconds * 1_000_000_000 + max(nanoseconds, 0) >= self._written_ns:
            return None
        return entry

    def sha(self, path: bytes, st: os.stat_result, mode: int) -> ObjectID | None:
        if self._keys is None:
            assert self._stat is not None
            raw = self.raw_entries()
            self._keys = (
                _raw_stat_keys(self._path, self._stat, raw)
                if raw is not None
                else _stat_keys(self._path, self._stat, self._entries)
            )
        key = self._keys.get(path)
        mtime_ns = st.st_mtime_ns
        if key is None or key[0] != mode or mtime_ns >= self._written_ns:
            return None
        # The change time too: a file rewritten and given its old mtime back still differs.
        same = (
            key[1] == st.st_size & 0xFFFFFFFF
            and key[2] == st.st_ino & 0xFFFFFFFF
            and key[3] == mtime_ns
            and key[4] == st.st_ctime_ns
        )
        return key[5] if same else None


# Identity of an index file: an index is only ever replaced whole (written beside and
# renamed over, by the broker and by the runner), so a file with the same device,
# inode, size and change and modification times to the nanosecond holds the same bytes.
_Identity = tuple[str, int, int, int, int, int]
_Read = TypeVar("_Read")


def _identity(path: Path, st: os.stat_result) -> _Identity:
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unchanged(path: Path, key: _Identity) -> bool:
    """Whether the file at ``path`` still has the identity ``key`` (not replaced while
    it was read)."""
    after = os.stat(path)
    return (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == key[2:]


class _ByIdentity(Generic[_Read]):
    """What was read of the last few index files, by their identity: the reset, the
    check for changes and the commit of one task read the worktree's index once instead
    of three times."""

    def __init__(self, kept: int = 16) -> None:
        self._items: OrderedDict[_Identity, _Read] = OrderedDict()
        self._kept = kept

    def has(self, key: _Identity) -> bool:
        with _INDEXES_LOCK:
            return key in self._items

    def get(self, key: _Identity) -> _Read | None:
        with _INDEXES_LOCK:
            known = self._items.get(key)
            if known is not None:
                self._items.move_to_end(key)
            return known

    def put(self, key: _Identity, read: _Read) -> _Read:
        with _INDEXES_LOCK:
            self._items[key] = read
            while len(self._items) > self._kept:
                self._items.popitem(last=False)
        return read


_INDEXES: _ByIdentity[Mapping[bytes, IndexEntry]] = _ByIdentity()
# An entry's mode, size, inode, modification and change times (ns; -1 when the entry's
# time is not in seconds and nanoseconds) and blob id: what ``StatCache.sha`` compares,
# built once per index.
_StatKey = tuple[int, int, int, int, int, ObjectID]
_KEYS: _ByIdentity[Mapping[bytes, _StatKey]] = _ByIdentity()


def _stat_keys(
    path: Path, st: os.stat_result, entries: Mapping[bytes, IndexEntry]
) -> Mapping[bytes, _StatKey]:
    """``entries`` as ``StatCache.sha`` compares them, kept by the index's identity. A
    time is kept to the nanosecond as the index stores it (seconds in 32 bits), so it
    equals a file's ``st_mtime_ns`` until 2106 and differs after (a file read again)."""
    key = _identity(path, st)
    known = _KEYS.get(key)
    if known is not None:
        return known
    keys = {
        name: (
            entry.mode,
            entry.size,
            entry.ino,
            _ns(entry.mtime),
            _ns(entry.ctime),
            entry.sha,
        )
        for name, entry in entries.items()
    }
    # An index that could not be read is not kept: the next look reads it again.
    return _KEYS.put(key, MappingProxyType(keys)) if keys else keys


def _raw_stat_keys(path: Path, st: os.stat_result, raw: RawIndex) -> Mapping[bytes, _StatKey]:
    """``_stat_keys`` from the index's entries as stored, each unpacked once where the
    index says it begins, without building its entries first."""
    key = _identity(path, st)
    known = _KEYS.get(key)
    if known is not None:
        return known
    data, unpack, size = raw.data, _ENTRY.unpack_from, _ENTRY.size
    keys: dict[bytes, _StatKey] = {}
    for start in itertools.islice(raw.starts, len(raw)):
        ctime, ctime_ns, mtime, mtime_ns, _, ino, mode, _, _, length, sha, flags = unpack(
            data, start
        )
        if flags & (_STAGE_MASK | _EXTENDED):
            continue  # a conflicted path's stages are not a cache of anything
        keys[data[start + size : start + size + (flags & _NAME_MASK)]] = (
            mode,
            length,
            ino,
            mtime * 1_000_000_000 + mtime_ns,
            ctime * 1_000_000_000 + ctime_ns,
            ObjectID(hexlify(sha)),
        )
    return _KEYS.put(key, MappingProxyType(keys)) if keys else keys


def _ns(value: int | float | tuple[int, int]) -> int:
    seconds, nanoseconds = _time(value)
    return seconds * 1_000_000_000 + nanoseconds if nanoseconds >= 0 else -1


def _parsed_index(path: Path, st: os.stat_result) -> Mapping[bytes, IndexEntry]:
    key = _identity(path, st)
    known = _INDEXES.get(key)
    if known is not None:
        return known
    entries: dict[bytes, IndexEntry] | None
    try:
        with open(path, "rb") as file:
            entries = read_index(file.read())
        if entries is None:  # a form read_index leaves to dulwich
            entries = {}
            for name, entry in Index(str(path)).items():
                if isinstance(entry, IndexEntry):
                    entries[name] = entry
        unchanged = _unchanged(path, key)
    except (OSError, ValueError, AssertionError, KeyError, ChecksumMismatch):
        return {}  # unreadable (being replaced, another version): every file is read
    if not unchanged:
        # Replaced while it was read: what was parsed may not be what ``st`` describes.
        return {}
    return _INDEXES.put(key, MappingProxyType(entries))


_ENTRY = struct.Struct(">LLLLLLLLLL20sH")
_HEADER = struct.Struct(">4sLL")
_NAME_MASK = 0x0FFF
_EXTENDED = 0x4000
_STAGE_MASK = 0x3000
# mtime s/ns, dev, ino, mode: an index entry's fields from its eighth byte.
_RAW_STAT = struct.Struct(">LLLLL")


class RawIndex:
    """A version 2 index's entries as stored (name and padding included), by position
    (in the index's order, which is its paths' order) and, built when first asked for,
    by path; ``unkept``, the paths whose stat data is not older than the index (racily
    clean: it cannot vouch for their content)."""

    def __init__(self, data: bytes, starts: Sequence[int], unkept: frozenset[bytes]) -> None:
        self.data = data
        # Where each entry begins, and where the last one ends.
        self.starts = starts
        self.unkept = unkept
        self._by_path: Mapping[bytes, bytes] | None = None

    def __len__(self) -> int:
        return len(self.starts) - 1

    def name(self, at: int) -> bytes:
        start = self.starts[at]
        (flags,) = _FLAGS.unpack_from(self.data, start + _ENTRY.size - 2)
        return self.data[start + _ENTRY.size : start + _ENTRY.size + (flags & _NAME_MASK)]

    def raw(self, at: int) -> bytes:
        return self.data[self.starts[at] : self.starts[at + 1]]

    def find(self, path: bytes, lo: int = 0) -> int:
        """Where ``path`` is, or would be, among the entries (from ``lo`` on)."""
        return bisect.bisect_left(range(len(self)), path, lo, key=self.name)

    def sound(self, at: int) -> bool:
        """Whether the entry at ``at`` is one the index's layout says it is (its name's
        length, no extended or conflicted flags, its size to the next one)."""
        start, end = self.starts[at], self.starts[at + 1]
        if not _HEADER.size <= start < end <= len(self.data):
            return False
        (flags,) = _FLAGS.unpack_from(self.data, start + _ENTRY.size - 2)
        length = flags & _NAME_MASK
        return (
            not flags & (_EXTENDED | _STAGE_MASK)
            and length != _NAME_MASK
            and end - start == (_ENTRY.size + length + 8) & ~7
        )

    @property
    def by_path(self) -> Mapping[bytes, bytes]:
        if self._by_path is None:
            self._by_path = MappingProxyType({self.name(i): self.raw(i) for i in range(len(self))})
        return self._by_path


_FLAGS = struct.Struct(">H")
# The broker's index ends with where each entry begins (``OFFSETS_EXTENSION``: the count,
# then count + 1 offsets, 4 bytes each, big-endian; then the paths, NUL-separated, of the
# entries written just before the index, whose stat data may not be older than it),
# followed by a fixed-size trailer giving where that extension begins
# (``END_EXTENSION``), so an index of thousands of entries is not walked entry by entry.
OFFSETS_EXTENSION = b"AETO"
END_EXTENSION = b"AETZ"
_TRAILER = struct.Struct(">4sLL")
_RAW_INDEXES: _ByIdentity[RawIndex | None] = _ByIdentity()


def _raw_index(path: Path, st: os.stat_result) -> RawIndex | None:
    """The entries of a version 2 index as it stores them, for a new index to copy the
    entries of the files nobody touched without parsing each; ``None`` for an index
    whose entries cannot be copied so (another version, extended or conflicted entries,
    a name of 4095 bytes or more) or that cannot be read. Kept by the file's identity,
    as ``_parsed_index`` keeps what it parses."""
    key = _identity(path, st)
    known = _RAW_INDEXES.get(key)
    if known is not None or _RAW_INDEXES.has(key):
        return known
    return _RAW_INDEXES.put(key, _read_raw(path, key))


def _read_raw(path: Path, key: _Identity) -> RawIndex | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
        if not _unchanged(path, key):
            return None  # replaced while it was read
    except OSError:
        return None
    if len(data) < _HEADER.size + 20:
        return None
    signature, version, count = _HEADER.unpack_from(data)
    body = data[:-20]
    if signature != b"DIRC" or version != 2:
        return None
    if data[-20:] not in (hashlib.sha1(body, usedforsecurity=False).digest(), b"\0" * 20):
        return None
    written_ns = key[4]
    told = _told_starts(body, count)
    if told is not None:
        starts, recent = told
        index = RawIndex(body, starts, frozenset())
        unkept = []
        for name in recent:
            at = index.find(name)
            if at == len(index) or not index.sound(at) or index.name(at) != name:
                return None
            if _entry_mtime_ns(body, starts[at]) >= written_ns:
                unkept.append(name)
        index.unkept = frozenset(unkept)
        return index
    walked: list[int] = []
    unkept = []
    offset, size = _HEADER.size, _ENTRY.size
    for _ in range(count):
        if offset + size > len(body):
            return None
        (flags,) = _FLAGS.unpack_from(body, offset + size - 2)
        length = flags & _NAME_MASK
        if flags & (_EXTENDED | _STAGE_MASK) or length == _NAME_MASK:
            return None
        walked.append(offset)
        if _entry_mtime_ns(body, offset) >= written_ns:
            unkept.append(body[offset + size : offset + size + length])
        offset += (size + length + 8) & ~7
    walked.append(offset)
    return RawIndex(body, walked, frozenset(unkept))


def _entry_mtime_ns(data: bytes, start: int) -> int:
    seconds, nanoseconds = _MTIME.unpack_from(data, start + 8)
    return int(seconds * 1_000_000_000 + nanoseconds)


_MTIME = struct.Struct(">LL")


def _told_starts(body: bytes, count: int) -> tuple[Sequence[int], list[bytes]] | None:
    """The entries' offsets and the recently written paths the index's own trailer
    gives (``OFFSETS_EXTENSION``), or ``None`` without one (or one that does not fit)."""
    end = len(body) - _TRAILER.size
    if end < _HEADER.size:
        return None
    signature, size, start = _TRAILER.unpack_from(body, end)
    if signature != END_EXTENSION or size != 4 or not _HEADER.size <= start <= end - 12:
        return None
    signature, length = struct.unpack_from(">4sL", body, start)
    told = body[start + 8 : start + 8 + length]
    # The runner's own index has its claim after it (``git._extras_tail``).
    if signature != OFFSETS_EXTENSION or start + 8 + length > end or len(told) < 4:
        return None
    (listed,) = struct.unpack_from(">L", told)
    table = 4 + 4 * (listed + 1)
    if listed != count or len(told) < table:
        return None
    starts = array.array("I")
    if starts.itemsize != 4:
        return None
    starts.frombytes(told[4:table])
    if sys.byteorder == "little":
        starts.byteswap()
    if starts[0] != _HEADER.size or starts[-1] != start:
        return None
    recent = told[table:].split(b"\0") if len(told) > table else []
    return starts, recent


def read_index(data: bytes) -> dict[bytes, IndexEntry] | None:
    """The entries of an index file (version 2 or 3) that are not conflicted, as
    dulwich's ``Index`` reads them, in one pass over the bytes: dulwich reads an entry at
    a time through a file object, 3 to 5 times slower than this, and a fresh
    worktree's index is read once per attempt, much of a small worktree's scan. ``None``
    for what is left to dulwich: version 4 (compressed paths), a path of 4095 bytes or
    more. Raises ``ChecksumMismatch`` as dulwich does, ``ValueError`` when the bytes are
    not an index."""
    if len(data) < _HEADER.size + 20:
        raise ValueError("too short for an index")
    signature, version, count = _HEADER.unpack_from(data)
    if signature != b"DIRC":
        raise ValueError("not an index")
    if version not in (2, 3):
        return None
    body, checksum = data[:-20], data[-20:]
    digest = hashlib.sha1(body, usedforsecurity=False).digest()
    if checksum not in (digest, b"\0" * 20):  # all zeros: written without one (skipHash)
        raise ChecksumMismatch(hexlify(checksum), hexlify(digest))
    entries: dict[bytes, IndexEntry] = {}
    unpack, size = _ENTRY.unpack_from, _ENTRY.size
    offset = _HEADER.size
    for _ in range(count):
        if offset + size > len(body):
            raise ValueError("the index ends inside an entry")
        (ctime, ctime_ns, mtime, mtime_ns, dev, ino, mode, uid, gid, length, sha, flags) = unpack(
            body, offset
        )
        start = offset + size
        extended = 0
        if flags & _EXTENDED:
            if version < 3:
                raise AssertionError("extended flag set in index with version < 3")
            (extended,) = struct.unpack_from(">H", body, start)
            start += 2
        if flags & _NAME_MASK == _NAME_MASK:
            return None
        end = start + (flags & _NAME_MASK)
        name = body[start:end]
        # Each entry is padded with 1 to 8 NULs to a multiple of 8 bytes.
        offset += (end - offset + 8) & ~7
        if flags & _STAGE_MASK:
            continue  # a conflicted path: its stages are not a cache of anything
        entries[name] = IndexEntry(
            ctime=(ctime, ctime_ns),
            mtime=(mtime, mtime_ns),
            dev=dev,
            ino=ino,
            mode=mode,
            uid=uid,
            gid=gid,
            size=length,
            sha=ObjectID(hexlify(sha)),
            flags=flags & ~_NAME_MASK,
            extended_flags=extended,
        )
    return entries


def _time(value: int | float | tuple[int, int]) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (int(value), -1)


class Found(NamedTuple):
    """A file of the worktree: its git mode, its blob id (``None`` when not hashed: an
    untracked file, or one too large) and its stat data (``None``: not looked at, taken
    as the tree has it; see ``scan``'s ``written``). A tuple: a scan makes one per file
    of the project."""

    mode: int
    sha: ObjectID | None
    st: os.stat_result | None


def blob_id(data: bytes) -> ObjectID:
    digest = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    digest.update(data)
    return ObjectID(digest.hexdigest().encode())


def git_mode(st: os.stat_result) -> int | None:
    """The mode git records for a file, or ``None`` for what git does not record."""
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK
    if stat.S_ISREG(st.st_mode):
        return 0o100755 if st.st_mode & 0o100 else 0o100644
    return None


def read_entry(parent: int, name: str, shown: str, mode: int) -> bytes:
    """The content git stores for ``name``: a symlink's target, or a regular file's
    bytes (a file with more than one link is refused, as the file tools refuse it)."""
    if mode == SYMLINK:
        return os.fsencode(os.readlink(name, dir_fd=parent))
    return read_in(parent, name, shown)


class _Ignores:
    """The ignore rules in force in one directory: its own ``.gitignore`` and its
    parents'; the deepest rule that mentions a path decides."""

    def __init__(self, layers: list[tuple[str, IgnoreFilter]]) -> None:
        self._layers = layers

    def below(self, prefix: str, fd: int) -> _Ignores:
        try:
            data = read_in(fd, ".gitignore", f"{prefix}.gitignore", MAX_IGNORE_BYTES)
        except (OSError, Refused):
            return self
        patterns = list(read_ignore_patterns(_Lines(data)))  # type: ignore[arg-type]
        return _Ignores([*self._layers, (prefix, IgnoreFilter(patterns))])

    def ignored(self, path: str, directory: bool) -> bool:
        for prefix, rules in reversed(self._layers):
            if not path.startswith(prefix):
                continue
            verdict = rules.is_ignored(path[len(prefix) :] + ("/" if directory else ""))
            if verdict is not None:
                return verdict
        return False


class _Lines:
    """A file-like view of bytes for ``read_ignore_patterns`` (it iterates lines)."""

    def __init__(self, data: bytes) -> None:
        self._lines = data.splitlines(keepends=True)

    def __iter__(self) -> Iterable[bytes]:
        return iter(self._lines)


def _exclude(common: Path) -> _Ignores:
    try:
        data = (common / "info" / "exclude").read_bytes()[:MAX_IGNORE_BYTES]
    except OSError:
        return _Ignores([])
    return _Ignores([("", IgnoreFilter(list(read_ignore_patterns(_Lines(data)))))])  # type: ignore[arg-type]


@dataclass
class Extras:
    """What a whole walk (``scan`` without ``written``) passed by that no commit holds:
    ``paths``, root-relative, of the ignored files and directories (a directory not
    entered), the nested ``.git`` files and directories and the special files (FIFOs,
    sockets, devices); ``entered``, every directory it entered (with a trailing slash;
    the root as ``b""``). ``sure`` is false when something could not be looked at (a
    file gone between its listing and its stat, a directory that could not be opened):
    the worktree is then not known whole. ``clean``: the tracked files whose stat data
    the index vouched for."""

    paths: list[bytes] = field(default_factory=list)
    entered: list[bytes] = field(default_factory=list)
    sure: bool = True
    clean: set[bytes] = field(default_factory=set)


def scan(
    worktree: Path,
    common: Path,
    tracked: Mapping[bytes, tuple[int, ObjectID]],
    max_hash: int,
    cache: StatCache | None = None,
    written: Iterable[tuple[str, ...]] | None = None,
    extras: Extras | None = None,
) -> dict[bytes, Found]:
    """Every file of ``worktree`` that git would consider: tracked paths (hashed when
    at most ``max_hash`` bytes, unless ``cache`` knows them by their stat data) and
    untracked ones that are not ignored (not hashed). Gitlinks are never entered.

    ``written``: when the worktree held exactly ``tracked`` (nothing else, not even
    ignored files) and nothing but writes to these paths (root-relative components)
    has happened to it since, the same answer from walking only the directories on
    their way: a tracked directory off every such way is not entered, and its files are
    found as the tree has them, without stat data, as is every tracked file no write
    went for. Every directory that is not the tree's was made by those writes and is
    walked whole, and so is each directory on a written path's way, where a write cut
    short may have left its temporary file.

    ``extras``: filled, on a whole walk, with what it passed by that no commit holds."""
    tracked_dirs = directories(tracked)
    found: dict[bytes, Found] = {}
    ways = _ways(written) if written is not None else None
    fd = os.open(worktree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        walk = _Walk(tracked, tracked_dirs, found, max_hash, cache, ways)
        walk.extras = extras if ways is None else None
        walk.directory(fd, "", _exclude(common).below("", fd), False, 0)
    finally:
        os.close(fd)
    if walk.passed:
        _untouched(tracked, found, walk.entered, walk.passed)
    return found


# A directory's tracked entries, name -> (mode, id), by its path with a trailing slash
# (the root: ``b""``); ``None`` for a path that is no directory of the tree.
Listing = Callable[[bytes], Mapping[bytes, tuple[int, ObjectID]] | None]


@dataclass(frozen=True)
class WaysScan:
    """What a look on the ways found (``scan_ways``): the files found on them (a
    tracked file in one of their directories that no write went for, as the tree has
    it, without stat data), and the tracked files gone."""

    found: dict[bytes, Found]
    deleted: list[bytes]


class TreeDirs:
    """The tree's directories (paths with a trailing slash), asked one at a time."""

    def __init__(self, listing: Listing) -> None:
        self._listing = listing

    def __contains__(self, directory: object) -> bool:
        if not isinstance(directory, bytes) or not directory.endswith(b"/"):
            return False
        parent, _, name = directory[:-1].rpartition(b"/")
        entries = self._listing(parent + b"/" if parent else b"")
        entry = entries.get(name) if entries is not None else None
        return entry is not None and stat.S_ISDIR(entry[0])


def scan_ways(
    worktree: Path,
    common: Path,
    tracked: Mapping[bytes, tuple[int, ObjectID]],
    max_hash: int,
    listing: Listing,
    written: Iterable[tuple[str, ...]],
) -> WaysScan:
    """``scan`` with ``written``, in time that follows the ways rather than the tree:
    only what the walk on the ways found is returned, with the tracked files gone
    (directly in a directory it entered, or below a tracked directory there that is
    not there any more); every other tracked file is as the tree has it. ``listing``
    gives the tree's directories' entries."""
    found: dict[bytes, Found] = {}
    walk = _Walk(tracked, TreeDirs(listing), found, max_hash, None, _ways(written))
    fd = os.open(worktree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        walk.directory(fd, "", _exclude(common).below("", fd), False, 0)
    finally:
        os.close(fd)
    deleted: list[bytes] = []
    for directory in walk.entered:
        pending = [(directory, listing(directory))]
        while pending:
            prefix, entries = pending.pop()
            for name, (mode, _) in (entries or {}).items():
                path = prefix + name
                if not stat.S_ISDIR(mode):
                    if path not in found:
                        deleted.append(path)
                elif prefix != directory or (
                    path + b"/" not in walk.entered and path + b"/" not in walk.passed
                ):
                    # Not there any more (or below such a directory): gone with its files.
                    pending.append((path + b"/", listing(path + b"/")))
    return WaysScan(found, deleted)


def _ways(written: Iterable[tuple[str, ...]]) -> set[bytes]:
    """Every directory (with a trailing slash; the root as ``b""``) on the way to the
    written paths, and each written path itself taken as a directory."""
    ways = {b""}
    for parts in written:
        for end in range(1, len(parts) + 1):
            ways.add(os.fsencode("/".join(parts[:end])) + b"/")
    return ways


def _untouched(
    tracked: Mapping[bytes, tuple[int, ObjectID]],
    found: dict[bytes, Found],
    entered: set[bytes],
    passed: set[bytes],
) -> None:
    """Found as the tree has them: the tracked files below a directory the walk passed
    by. A tracked file under no such directory and not found is gone."""
    for path, (mode, sha) in tracked.items():
        if path in found:
            continue
        # The outermost directory of the path the walk did not enter.
        end = path.find(b"/")
        while end != -1 and path[: end + 1] in entered:
            end = path.find(b"/", end + 1)
        if end != -1 and path[: end + 1] in passed:
            found[path] = Found(mode, sha, None)


def directories(paths: Iterable[bytes]) -> set[bytes]:
    """Every directory above ``paths``, each as its path with a trailing slash."""
    found: set[bytes] = set()
    for path in paths:
        end = path.rfind(b"/")
        # Deepest first: a directory already known has its parents known too.
        while end > 0 and path[: end + 1] not in found:
            found.add(path[: end + 1])
            end = path.rfind(b"/", 0, end)
    return found


@dataclass
class _Walk:
    tracked: Mapping[bytes, tuple[int, ObjectID]]
    tracked_dirs: Container[bytes]
    found: dict[bytes, Found]
    max_hash: int
    cache: StatCache | None
    # The directories to enter of the tree's own (``None``: all of them; see ``scan``).
    ways: set[bytes] | None = None
    # The directories entered, and the tree's directories passed by (``ways`` given).
    entered: set[bytes] = field(default_factory=set)
    passed: set[bytes] = field(default_factory=set)
    # What a whole walk passed by that no commit holds, when asked (``Extras``).
    extras: Extras | None = None

    def directory(
        self, fd: int, prefix: str, ignores: _Ignores, ignored_dir: bool, depth: int
    ) -> None:
        if depth > MAX_DEPTH:
            raise TooDeep(
                f"the worktree nests directories more than {MAX_DEPTH} deep "
                f"({prefix[:60]}…): delete them"
            )
        if self.ways is not None:
            self.entered.add(os.fsencode(prefix))
        extras = self.extras
        if extras is not None:
            extras.entered.append(os.fsencode(prefix))
        for name in sorted(os.listdir(fd)):
            path = prefix + name
            key = os.fsencode(path)
            if is_git_name(name):
                # The worktree's own ``.git`` file stays; any other is an extra.
                if extras is not None and path != ".git":
                    extras.paths.append(key)
                continue
            known = self.tracked.get(key)
            if (
                self.ways is not None
                and known is not None
                and known[0] != GITLINK
                and key + b"/" not in self.ways
            ):
                # A tracked file no write went for: as the tree has it, not looked at.
                self.found[key] = Found(known[0], known[1], None)
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                if extras is not None:
                    extras.sure = False
                continue
            if known is not None and known[0] == GITLINK:
                self.found[key] = Found(GITLINK, known[1], st)
                continue
            if stat.S_ISDIR(st.st_mode):
                if self.ways is not None:
                    directory = key + b"/"
                    if directory in self.tracked_dirs and directory not in self.ways:
                        self.passed.add(directory)
                        continue
                skip = ignored_dir or ignores.ignored(path, True)
                if skip and key + b"/" not in self.tracked_dirs:
                    if extras is not None:
                        extras.paths.append(key)
                    continue
                try:
                    child = open_dir(fd, name)
                except (OSError, Raced):
                    if extras is not None:
                        extras.sure = False
                    continue
                try:
                    inner = ignores.below(path + "/", child) if not skip else ignores
                    self.directory(child, path + "/", inner, skip, depth + 1)
                finally:
                    os.close(child)
                continue
            mode = git_mode(st)
            if mode is None:
                # A FIFO, socket or device: git records none of them.
                if extras is not None:
                    extras.paths.append(key)
                continue
            if known is None:
                if not (ignored_dir or ignores.ignored(path, False)):
                    self.found[key] = Found(mode, None, st)
                elif extras is not None:
                    extras.paths.append(key)
                continue
            self.found[key] = Found(mode, self._sha(fd, name, path, key, st, mode), st)

    def _sha(
        self, fd: int, name: str, path: str, key: bytes, st: os.stat_result, mode: int
    ) -> ObjectID | None:
        # On the ways to what the file tools wrote, only what they went for is hashed:
        # written since the index was, it is not in the index's stat data.
        cached = (
            self.cache.sha(key, st, mode) if self.cache is not None and self.ways is None else None
        )
        if cached is not None:
            if self.extras is not None:
                self.extras.clean.add(key)
            return cached
        if st.st_size > self.max_hash:
            return None
        try:
            return blob_id(read_entry(fd, name, path, mode))
        except (OSError, Refused):
            return None  # unreadable or hard-linked: counts as changed


def changes(
    tracked: Mapping[bytes, tuple[int, ObjectID]], found: dict[bytes, Found]
) -> list[bytes]:
    """Paths added, modified (content or mode) or deleted relative to ``tracked``."""
    changed = [p for p in tracked if p not in found]
    for path, entry in found.items():
        known = tracked.get(path)
        if known is None or known[0] != entry.mode or known[1] != entry.sha:
            changed.append(path)
    return sorted(changed)
