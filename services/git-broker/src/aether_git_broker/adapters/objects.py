"""Reading and writing git objects by their raw bytes, on dulwich's object store.

dulwich builds a ``Tree`` by serialising it entry by entry in Python and hashes it twice
before writing it (a hundred-entry tree costs about a millisecond), and it looks an
object up in every pack, rescanning the pack directory after a miss, before it tries
the loose file. The merge train writes a few trees per merge and reads the task's new
trees, which are loose files the agent just wrote, so both paths matter here:

- ``write`` serialises and hashes once, then writes the loose object as git does (a
  temporary file renamed into place, so a crash never leaves half an object, compressed
  at git's ``core.looseCompression`` default, the fastest level);
- ``read`` looks the object up in the index of each pack it knows (no system call),
  then tries the loose file (one ``open``), and only then asks dulwich, which rescans the
  pack directory. A packed object is read straight from the mapped pack file, and the
  bases of delta chains are kept in a bounded cache, so the other side of a merge,
  usually a delta against the same base, costs one delta application. dulwich's own path
  does the same work through several layers of Python per object, which made reading
  packed trees and blobs most of a merge's time.

Stores that are not on disk, and repositories using SHA-256, go through dulwich.
"""

from __future__ import annotations

import binascii
import hashlib
import mmap
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import ObjectID, ShaFile
from dulwich.pack import Pack, PackFileDisappeared, apply_delta

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_TYPE_NUMBERS = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}
_KINDS = {number: kind for kind, number in _TYPE_NUMBERS.items()}
_OFS_DELTA, _REF_DELTA = 6, 7
_LOOSE_LEVEL = 1  # git's core.looseCompression default (Z_BEST_SPEED)
_CACHE_BYTES = 32 * 1024 * 1024  # delta bases kept, as git's core.deltaBaseCacheLimit
_BATCH_PACK_MIN = 8  # fewer objects than this in a batch are written loose
_SMALL_PACK = 1024 * 1024  # packs below this size are folded together ...
_SMALL_PACKS_MAX = 32  # ... once there are this many of them


class _PackFile:
    """One pack: dulwich's index for lookups, the pack file mapped for reading."""

    def __init__(self, pack: Pack, path: str | None = None) -> None:
        self.pack = pack  # its index is read at the first lookup that reaches it
        with open(path or pack.data.path, "rb") as file:
            self.buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def offset(self, sha: ObjectID) -> int | None:
        try:
            return self.pack.index.object_offset(sha)
        except KeyError:
            return None

    def close(self) -> None:
        self.buffer.close()


class ObjectIO:
    """Raw object access for one object store."""

    def __init__(self, store: BaseObjectStore) -> None:
        self.store = store
        self._loose_dir: str | None = None
        if isinstance(store, DiskObjectStore) and store.object_format.name == "sha1":
            self._loose_dir = os.fspath(store.path)
        self._packs: list[_PackFile] | None = None
        # Resolved packed objects by (pack, offset), bounded in bytes.
        self._cache: OrderedDict[tuple[int, int], tuple[int, bytes]] = OrderedDict()
        self._cached_bytes = 0
        # Objects written inside ``batch``, by hex id, not yet on disk.
        self._pending: dict[str, tuple[int, bytes]] | None = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Objects written inside the block reach the disk together when it ends: as
        one pack (two files) rather than a loose file each, which is most of the time of
        writing a merge's trees. Reads inside the block see them."""
        if self._loose_dir is None or self._pending is not None:
            yield
            return
        self._pending = {}
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if len(pending) < _BATCH_PACK_MIN:
                for type_num, content in pending.values():
                    self._write_loose(_KINDS[type_num], content)
            else:
                self._write_pack(pending)

    def close(self) -> None:
        """Unmap the pack files this reader mapped."""
        self._forget_packs()

    def read(self, sha: ObjectID) -> tuple[int, bytes]:
        """``(type number, content)`` of an object; ``KeyError`` when it is missing."""
        if self._loose_dir is not None:
            if self._pending:
                pending = self._pending.get(sha.decode())
                if pending is not None:
                    return pending
            packed = self._read_packed(sha)
            if packed is not None:
                return packed
            hexsha = sha.decode()
            try:
                with open(os.path.join(self._loose_dir, hexsha[:2], hexsha[2:]), "rb") as file:
                    data = zlib.decompress(file.read())
            except (FileNotFoundError, NotADirectoryError):
                pass
            else:
                header, _, content = data.partition(b"\0")
                kind, _, _ = header.partition(b" ")
                return _TYPE_NUMBERS[kind], content
            # Neither a pack we know nor a loose file: dulwich rescans the pack
            # directory, and a new pack it finds is worth knowing about next time.
            self._forget_packs()
        return self.store.get_raw(sha)

    def size(self, sha: ObjectID) -> int:
        """The length of an object's content, read from its header without inflating
        the content (a delta's target length from the delta's own header): what a
        pushed blob weighs before anything reads it whole. ``KeyError`` when missing."""
        if self._loose_dir is not None:
            if self._pending and (pending := self._pending.get(sha.decode())) is not None:
                return len(pending[1])
            with suppress(PackFileDisappeared, OSError, ValueError, zlib.error):
                if self._packs is None:
                    self._packs = [_PackFile(pack) for pack in self.store.packs]
                for pack in self._packs:
                    offset = pack.offset(sha)
                    if offset is not None:
                        return _packed_size(pack.buffer, offset)
            hexsha = sha.decode()
            try:
                with open(os.path.join(self._loose_dir, hexsha[:2], hexsha[2:]), "rb") as file:
                    head = _inflate_head(file.read(4096), 64)
            except (FileNotFoundError, NotADirectoryError):
                pass
            else:
                header, nul, _ = head.partition(b"\0")
                if nul and header.partition(b" ")[2].isdigit():
                    return int(header.partition(b" ")[2])
        return len(self.read(sha)[1])

    def _forget_packs(self) -> None:
        for pack in self._packs or ():
            pack.close()
        self._packs = None
        self._cache.clear()
        self._cached_bytes = 0

    def _read_packed(self, sha: ObjectID) -> tuple[int, bytes] | None:
        try:
            if self._packs is None:
                self._packs = [_PackFile(pack) for pack in self.store.packs]
            for number, pack in enumerate(self._packs):
                offset = pack.offset(sha)
                if offset is not None:
                    return self._object_at(number, offset)
        except (PackFileDisappeared, OSError, ValueError):
            # A pack removed (by a repack) since it was listed: dulwich finds the object.
            self._forget_packs()
        return None

    def _object_at(self, number: int, offset: int) -> tuple[int, bytes]:
        """The resolved object at ``offset`` in pack ``number`` (git's pack format)."""
        key = (number, offset)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        assert self._packs is not None
        buffer = self._packs[number].buffer
        type_num, size, pos = _object_header(buffer, offset)
        base: tuple[int, bytes] | None = None
        if type_num == _OFS_DELTA:
            byte = buffer[pos]
            pos += 1
            distance = byte & 0x7F
            while byte & 0x80:
                byte = buffer[pos]
                pos += 1
                distance = ((distance + 1) << 7) | (byte & 0x7F)
            base = self._object_at(number, offset - distance)
        elif type_num == _REF_DELTA:
            base_sha = buffer[pos : pos + 20].hex().encode()
            pos += 20
            base = self.read(ObjectID(base_sha))
        data = _inflate(buffer, pos, size)
        if base is not None:
            type_num, data = base[0], b"".join(apply_delta(base[1], data))
        found = (type_num, data)
        self._cache[key] = found
        self._cached_bytes += len(data)
        while self._cached_bytes > _CACHE_BYTES and len(self._cache) > 1:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._cached_bytes -= len(evicted)
        return found

    def write(self, kind: bytes, content: bytes) -> ObjectID:
        """Store an object (``kind`` is ``b"tree"``, ``b"commit"``, …); returns its id."""
        if self._loose_dir is None:
            obj = ShaFile.from_raw_string(_TYPE_NUMBERS[kind], content)
            self.store.add_object(obj)
            return obj.id
        if self._pending is not None:
            header = kind + b" " + str(len(content)).encode() + b"\0"
            hexsha = hashlib.sha1(header + content, usedforsecurity=False).hexdigest()
            self._pending[hexsha] = (_TYPE_NUMBERS[kind], content)
            return ObjectID(hexsha.encode())
        return self._write_loose(kind, content)

    def _write_loose(self, kind: bytes, content: bytes) -> ObjectID:
        assert self._loose_dir is not None
        data = kind + b" " + str(len(content)).encode() + b"\0" + content
        hexsha = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        directory = os.path.join(self._loose_dir, hexsha[:2])
        path = os.path.join(directory, hexsha[2:])
        if not os.path.exists(path):
            temporary = f"{path}.{os.getpid()}.tmp"
            try:
                fd = os.open(temporary, _CREATE, 0o444)
            except FileNotFoundError:
                os.makedirs(directory, exist_ok=True)
                fd = os.open(temporary, _CREATE, 0o444)
            except FileExistsError:
                os.unlink(temporary)  # left by a crash of this process id
                fd = os.open(temporary, _CREATE, 0o444)
            with os.fdopen(fd, "wb") as file:
                file.write(zlib.compress(data, _LOOSE_LEVEL))
            os.replace(temporary, path)
        return ObjectID(hexsha.encode())

    def _write_pack(self, objects: dict[str, tuple[int, bytes]]) -> None:
        """Write ``objects`` as one pack and its index (git's formats, version 2), the
        pack first so that an index is never found without its pack. Once there are
        many small packs (one per merge adds up), they are folded into this one, as
        ``git gc --auto`` would, so lookups do not walk an ever longer list of packs."""
        assert isinstance(self.store, DiskObjectStore)
        pack_dir = os.fspath(self.store.pack_dir)
        folded = _small_packs(pack_dir)
        if len(folded) < _SMALL_PACKS_MAX:
            folded = []
        objects = dict(objects)
        for basename in folded:
            # Held until closed: a Pack that is collected closes its index under us.
            small = Pack(basename, object_format=self.store.object_format)
            try:
                listed = list(small.index)
            finally:
                small.close()
            for sha in listed:
                hexsha = sha.decode() if len(sha) == 40 else sha.hex()
                if hexsha not in objects:
                    objects[hexsha] = self.read(ObjectID(hexsha.encode()))
        pack_bytes, index_bytes, name = _pack_files(objects)
        for data, suffix in ((pack_bytes, ".pack"), (index_bytes, ".idx")):
            path = os.path.join(pack_dir, name + suffix)
            temporary = f"{path}.{os.getpid()}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        for basename in folded:
            if basename != os.path.join(pack_dir, name):
                for suffix in (".idx", ".pack", ".rev", ".bitmap"):
                    with suppress(FileNotFoundError):
                        os.unlink(basename + suffix)
        if folded:
            self._forget_packs()
        elif self._packs is not None:
            basename = os.path.join(pack_dir, name)
            pack = Pack(basename, object_format=self.store.object_format)
            self._packs.append(_PackFile(pack, basename + ".pack"))


def _small_packs(pack_dir: str) -> list[str]:
    """Base paths of the packs (with an index, not kept) smaller than ``_SMALL_PACK``."""
    found = []
    try:
        names = set(os.listdir(pack_dir))
    except FileNotFoundError:
        return []
    for entry in sorted(names):
        stem, dot, suffix = entry.rpartition(".")
        if not dot or suffix != "pack" or not stem.startswith("pack-"):
            continue
        if f"{stem}.idx" not in names or f"{stem}.keep" in names or f"{stem}.promisor" in names:
            continue
        try:
            if os.stat(os.path.join(pack_dir, entry)).st_size < _SMALL_PACK:
                found.append(os.path.join(pack_dir, stem))
        except FileNotFoundError:
            continue
    return found


def _pack_files(objects: dict[str, tuple[int, bytes]]) -> tuple[bytes, bytes, str]:
    """A pack of whole (undeltified) objects, its version 2 index, and its name."""
    chunks = [b"PACK" + struct.pack(">II", 2, len(objects))]
    offset = 12
    entries: list[tuple[bytes, int, int]] = []  # (binary id, crc32, offset)
    for hexsha, (type_num, content) in objects.items():
        size = len(content)
        byte = (type_num << 4) | (size & 15)
        size >>= 4
        header = bytearray()
        while size:
            header.append(byte | 0x80)
            byte = size & 0x7F
            size >>= 7
        header.append(byte)
        chunk = bytes(header) + zlib.compress(content, _LOOSE_LEVEL)
        entries.append((bytes.fromhex(hexsha), binascii.crc32(chunk), offset))
        chunks.append(chunk)
        offset += len(chunk)
    pack = b"".join(chunks)
    checksum = hashlib.sha1(pack, usedforsecurity=False).digest()
    entries.sort()
    fanout = [0] * 256
    for sha, _, _ in entries:
        fanout[sha[0]] += 1
    total = 0
    for first in range(256):
        total += fanout[first]
        fanout[first] = total
    small: list[int] = []
    large: list[int] = []
    for _, _, at in entries:
        if at < 0x80000000:
            small.append(at)
        else:
            small.append(0x80000000 | len(large))
            large.append(at)
    count = len(entries)
    index = b"".join(
        [
            b"\377tOc",
            struct.pack(">I", 2),
            struct.pack(">256I", *fanout),
            *(sha for sha, _, _ in entries),
            struct.pack(f">{count}I", *(crc for _, crc, _ in entries)),
            struct.pack(f">{count}I", *small),
            struct.pack(f">{len(large)}Q", *large),
            checksum,
        ]
    )
    index += hashlib.sha1(index, usedforsecurity=False).digest()
    return pack + checksum, index, f"pack-{checksum.hex()}"


def _object_header(buffer: mmap.mmap, offset: int) -> tuple[int, int, int]:
    """The packed object's header at ``offset``: its type, its size, and where what
    follows the header begins."""
    byte = buffer[offset]
    type_num, size, shift, pos = (byte >> 4) & 7, byte & 15, 4, offset + 1
    while byte & 0x80:
        byte = buffer[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        shift += 7
    return type_num, size, pos


def _packed_size(buffer: mmap.mmap, offset: int) -> int:
    """The content length of the packed object at ``offset``: its header's size, or for
    a delta the target length the delta's first inflated bytes declare."""
    type_num, size, pos = _object_header(buffer, offset)
    if type_num == _OFS_DELTA:
        while buffer[pos] & 0x80:
            pos += 1
        pos += 1
    elif type_num == _REF_DELTA:
        pos += 20
    else:
        return size
    with memoryview(buffer) as view:
        head = _inflate_head(view[pos : pos + 4096], 20)
    return delta_target_size(head)


def delta_target_size(delta: bytes) -> int:
    """The target length a delta declares (its second number; git's delta format);
    ``ValueError`` when its header ends too soon."""
    _, at = _varint(delta, 0)  # the base's length
    target, _ = _varint(delta, at)
    return target


def _inflate_head(data: bytes | memoryview, length: int) -> bytes:
    """The first ``length`` inflated bytes of the zlib stream ``data`` starts with."""
    return zlib.decompressobj().decompress(data, length)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """A delta header's little-endian base-128 number at ``at``, and where it ends."""
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("a delta header ends too soon")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _inflate(buffer: mmap.mmap, pos: int, size: int) -> bytes:
    """The ``size`` bytes of the zlib stream starting at ``pos``."""
    inflater = zlib.decompressobj()
    # zlib's worst case for ``size`` bytes, so one slice nearly always holds the stream.
    step = size + (size >> 10) + 64
    out: list[bytes] = []
    with memoryview(buffer) as view:
        while not inflater.eof:
            chunk = view[pos : pos + step]
            if not chunk:
                raise zlib.error("pack data ends inside an object")
            pos += len(chunk)
            out.append(inflater.decompress(chunk))
    data = b"".join(out)
    if len(data) != size:
        raise zlib.error("pack object inflates to the wrong size")
    return data
