"""Reading and writing git objects by their raw bytes, on dulwich's object store.

dulwich builds a ``Tree`` by serialising it entry by entry in Python and hashes it twice
before writing it (a hundred-entry tree costs about a millisecond), and it looks an
object up in every pack, rescanning the pack directory after a miss, before it tries
the loose file. The merge train writes a few trees per merge and reads the task's new
trees, which are loose files the agent just wrote, so both paths matter here:

- ``write`` serialises and hashes once, then writes the loose object as git does (a
  temporary file renamed into place, so a crash never leaves half an object);
- ``read`` tries the loose file first (one ``open``), then the packs.

Stores that are not on disk, and repositories using SHA-256, go through dulwich.
"""

from __future__ import annotations

import hashlib
import os
import zlib

from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import ObjectID, ShaFile

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_TYPE_NUMBERS = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}


class ObjectIO:
    """Raw object access for one object store."""

    def __init__(self, store: BaseObjectStore) -> None:
        self.store = store
        self._loose_dir: str | None = None
        if isinstance(store, DiskObjectStore) and store.object_format.name == "sha1":
            self._loose_dir = os.fspath(store.path)

    def read(self, sha: ObjectID) -> tuple[int, bytes]:
        """``(type number, content)`` of an object; ``KeyError`` when it is missing."""
        if self._loose_dir is not None:
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
        return self.store.get_raw(sha)

    def write(self, kind: bytes, content: bytes) -> ObjectID:
        """Store an object (``kind`` is ``b"tree"``, ``b"commit"``, …); returns its id."""
        if self._loose_dir is None:
            obj = ShaFile.from_raw_string(_TYPE_NUMBERS[kind], content)
            self.store.add_object(obj)
            return obj.id
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
                file.write(zlib.compress(data))
            os.replace(temporary, path)
        return ObjectID(hexsha.encode())
