"""Writing a tree out as files, with its index, as fast as Python allows.

dulwich's ``reset_index`` does it file by file through its attribute and filter
machinery, reading each blob with a separate pack lookup: about 3 s for 10,000 files.
Here the tree is listed from the cached trees, the blobs are read in one pass in pack
order, each file is written with four system calls (open, write, fstat, close), and the
index (version 2, no extensions) is written in one go: about a third of that time.

Repositories that need git's content filters (a ``.gitattributes`` file, an
``info/attributes`` file, or line-ending settings) are checked out by dulwich instead,
which applies them. Names git would never check out (``..``, ``.git``, anything with a
``/``) are refused: a commit made by an agent is not trusted to stay inside its
directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from dulwich.objects import ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.treemerge import Trees

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_GITLINK = 0o160000
_SYMLINK = 0o120000


class UnsafePath(ValueError):
    """A tree entry whose name would escape the directory or overwrite git's own files."""


@dataclass(frozen=True)
class FileEntry:
    path: bytes
    mode: int
    sha: ObjectID


def _check_name(name: bytes, prefix: bytes) -> None:
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name or name.lower() == b".git":
        raise UnsafePath(f"the tree has an entry {prefix.decode(errors='replace')}{name!r}")


def list_tree(trees: Trees, tree_id: ObjectID) -> tuple[list[bytes], list[FileEntry]]:
    """Every directory (parents first) and every non-directory entry below a tree."""
    directories: list[bytes] = []
    files: list[FileEntry] = []
    pending: list[tuple[bytes, ObjectID]] = [(b"", tree_id)]
    while pending:
        prefix, tree = pending.pop()
        for name, (mode, sha) in trees.entries(tree).items():
            _check_name(name, prefix)
            path = prefix + name
            if stat.S_ISDIR(mode):
                directories.append(path)
                pending.append((path + b"/", sha))
            else:
                files.append(FileEntry(path, mode, sha))
    directories.sort()
    return directories, files


def needs_filters(repo: Repo, files: Iterable[FileEntry]) -> bool:
    """Whether git would transform file contents on checkout in this repository."""
    if any(f.path == b".gitattributes" or f.path.endswith(b"/.gitattributes") for f in files):
        return True
    if os.path.exists(os.path.join(repo.commondir(), "info", "attributes")):
        return True
    config = repo.get_config_stack()
    for key in (b"autocrlf", b"eol"):
        try:
            config.get((b"core",), key)
        except KeyError:
            continue
        return True
    return False


def _index_mode(mode: int) -> int:
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


def write_index(
    path: str, entries: list[tuple[bytes, int, ObjectID, os.stat_result | None]]
) -> None:
    """Write a version 2 index of ``(path, mode, sha, stat)`` (no stat: all zeros)."""
    entries = sorted(entries, key=lambda e: e[0])
    chunks = [b"DIRC" + struct.pack(">LL", 2, len(entries))]
    pack = struct.Struct(">LLLLLLLLLL20sH").pack
    for name, mode, sha, st in entries:
        fields = _stat_fields(st) if st is not None else (0, 0, 0, 0, 0, 0)
        uid, gid, size = (st.st_uid, st.st_gid, st.st_size & 0xFFFFFFFF) if st else (0, 0, 0)
        entry = pack(
            *fields,
            _index_mode(mode),
            uid,
            gid,
            size,
            bytes.fromhex(sha.decode()),
            min(len(name), 0xFFF),
        )
        entry += name
        chunks.append(entry + b"\0" * (8 - len(entry) % 8))
    data = b"".join(chunks)
    data += hashlib.sha1(data, usedforsecurity=False).digest()
    temporary = path + ".lock"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def checkout(repo: Repo, trees: Trees, tree_id: ObjectID, directory: str, index_path: str) -> int:
    """Write ``tree_id`` into the empty ``directory`` and its index to ``index_path``.

    Returns the number of files written.
    """
    directories, files = list_tree(trees, tree_id)
    if repo.object_format.name != "sha1" or needs_filters(repo, files):
        worktree = Repo(directory)
        try:
            worktree.get_worktree().reset_index(tree_id)
        finally:
            worktree.close()
        return len(files)
    root = os.fsencode(directory)
    for path in directories:
        os.mkdir(root + b"/" + path)
    by_sha: dict[ObjectID, list[FileEntry]] = {}
    index: list[tuple[bytes, int, ObjectID, os.stat_result | None]] = []
    for entry in files:
        if entry.mode == _GITLINK:
            os.makedirs(root + b"/" + entry.path, exist_ok=True)
            index.append((entry.path, entry.mode, entry.sha, None))
        else:
            by_sha.setdefault(entry.sha, []).append(entry)
    for blob in repo.object_store.iterobjects_subset(list(by_sha)):
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
    write_index(index_path, index)
    return len(files)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
