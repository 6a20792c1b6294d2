"""Paths inside one directory tree, resolved so that nothing can race or link them out.

A path is walked one component at a time from a descriptor of the root, each directory
opened with ``O_NOFOLLOW`` relative to its parent's descriptor (``openat``). A symlink met
on the way is read and its target walked the same way, so a link that stays inside the
tree works and one that leads out is refused. Whatever a concurrent process does to the
tree meanwhile (swapping a directory for a symlink, renaming), an open either lands on the
directory that was checked or fails: a component replaced by a symlink fails with
``ELOOP``, and the operation is refused rather than carried out somewhere else.

Files are only ever opened relative to a directory descriptor, with ``O_NOFOLLOW`` and
``O_NONBLOCK`` (a FIFO cannot hang the reader), and must be regular files with a single
link: a hard link made by a command to a file outside (``/etc/shadow``) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from dulwich.index import validate_path_element_hfs, validate_path_element_ntfs

# A file ``replace`` writes before renaming it into place: ``.<name>.<12 hex>.tmp``.
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of ``Tree.replace``'s temporary files (one a write cut
    short by the process's death leaves behind)."""
    return _TEMPORARY.fullmatch(name) is not None


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # symlinks followed in one path, as the kernel allows


class Refused(Exception):
    """The path leads outside, through ``.git``, or to something that is not a file."""


class Raced(Refused):
    """The tree changed under the walk (a directory became a symlink): nothing was done."""


def is_git_name(part: str) -> bool:
    """``.git`` as a file system the branch may be cloned on reads it: any case (macOS,
    Windows), NTFS's trailing dots and spaces and short name ``GIT~1``, HFS+'s ignored
    code points (``.g\u200cit``). Such names are neither touched nor committed."""
    lowered = part.lower()
    if lowered == ".git":
        return True
    if part.isascii() and "git" not in lowered:
        return False  # the common case, without the checks below
    name = os.fsencode(part)
    if not validate_path_element_ntfs(name):
        return True
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False  # not a name HFS+ could hold
    return not validate_path_element_hfs(name)


def open_dir(parent: int, name: str) -> int:
    """A descriptor of the directory ``name`` in ``parent``; never through a symlink."""
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Raced(f"{name!r} is not a directory any more") from None
        raise


@dataclass(frozen=True)
class Resolved:
    """A path inside the root, as root-relative components (``()`` is the root itself)."""

    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else "."

    @property
    def text(self) -> str:
        return "/".join(self.parts) or "."


class Tree:
    """The directory tree under ``root`` (an absolute, real path)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._root_parts = tuple(p for p in root.split("/") if p)

    @contextlib.contextmanager
    def root_fd(self) -> Iterator[int]:
        fd = os.open(self.root, _DIR)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def directory(self, parts: tuple[str, ...], create: bool = False) -> Iterator[int]:
        """A descriptor of the directory at ``parts``, opened component by component;
        missing directories are made when ``create``."""
        fd = os.open(self.root, _DIR)
        try:
            for name in parts:
                try:
                    child = open_dir(fd, name)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=fd)
                    child = open_dir(fd, name)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _lstat(self, parts: tuple[str, ...], name: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in the directory at ``parts``; ``None`` if either is missing."""
        try:
            with self.directory(parts) as fd:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _readlink(self, parts: tuple[str, ...], name: str) -> str:
        with self.directory(parts) as fd:
            return os.readlink(name, dir_fd=fd)

    def resolve(self, path: str, follow_final: bool = True) -> Resolved:
        """Where ``path`` (relative to the root) leads, symlinks inside the tree followed.

        Raises ``Refused`` for an absolute path, a NUL byte, a ``.git`` component, or a
        path that leads (itself or through a symlink) outside the root.
        """
        if "\x00" in path:
            raise Refused("the path contains a NUL byte")
        if path.startswith("/"):
            raise Refused(f"{path!r} is absolute; use a path relative to the repository root")
        pending = [p for p in path.split("/") if p not in ("", ".")]
        if any(is_git_name(p) for p in pending):
            raise Refused("the .git directory is off limits")
        pending.reverse()
        where = list(self._root_parts)  # the absolute location reached so far
        depth = len(self._root_parts)
        links = 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if where:
                    where.pop()
                continue
            inside = tuple(where[:depth]) == self._root_parts
            if not inside:
                # Above or beside the root: never opened, only followed back in by name.
                where.append(name)
                continue
            if is_git_name(name):
                raise Refused("the .git directory is off limits")
            here = tuple(where[depth:])
            st = self._lstat(here, name)
            if st is not None and stat.S_ISLNK(st.st_mode) and (pending or follow_final):
                links += 1
                if links > _MAX_LINKS:
                    raise Refused(f"{path!r} has too many levels of symbolic links")
                try:
                    target = self._readlink(here, name)
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
                    # No longer a link (swapped since the lstat): look at the name again;
                    # each look counts as a link, so endless swapping ends in a refusal.
                    pending.append(name)
                    continue
                if "\x00" in target:
                    raise Refused(f"{path!r} leads through a link with a NUL byte")
                if target.startswith("/"):
                    where = []
                pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            where.append(name)
        if tuple(where[:depth]) != self._root_parts:
            raise Refused(f"{path!r} leads outside the repository")
        return Resolved(tuple(where[depth:]))

    # --- files ------------------------------------------------------------------------

    def read(self, at: Resolved, limit: int | None = None) -> bytes:
        """The bytes of the regular, singly linked file at ``at`` (at most ``limit``)."""
        if not at.parts:
            raise Refused("the repository root is a directory")
        with self.directory(at.parts[:-1]) as parent:
            return read_in(parent, at.name, at.text, limit)

    def replace(self, at: Resolved, data: bytes) -> None:
        """Write ``data`` to ``at`` through a new file renamed into place, in its parent's
        descriptor (made if missing): whatever was at ``at`` (a link, a hard link to a file
        outside) is replaced, never written through."""
        if not at.parts:
            raise Refused("the repository root is a directory")
        with self.directory(at.parts[:-1], create=True) as parent:
            mode = 0o644
            with contextlib.suppress(FileNotFoundError):
                old = os.stat(at.name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(old.st_mode):
                    raise Refused(f"{at.text!r} is a directory")
                if stat.S_ISREG(old.st_mode):
                    mode = stat.S_IMODE(old.st_mode) & 0o777
            temporary = f".{at.name[:100]}.{os.urandom(6).hex()}.tmp"
            fd = os.open(temporary, _CREATE, 0o600, dir_fd=parent)
            try:
                try:
                    write_all(fd, data)
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                os.replace(temporary, at.name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary, dir_fd=parent)
                raise

    def remove(self, at: Resolved) -> None:
        """Unlink the file (or link) at ``at``, or remove it if it is an empty directory."""
        if not at.parts:
            raise Refused("the repository root cannot be deleted")
        with self.directory(at.parts[:-1]) as parent:
            st = os.stat(at.name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(at.name, dir_fd=parent)
            else:
                os.unlink(at.name, dir_fd=parent)

    def lstat(self, at: Resolved) -> os.stat_result | None:
        if not at.parts:
            with self.root_fd() as fd:
                return os.fstat(fd)
        return self._lstat(at.parts[:-1], at.name)


def read_in(parent: int, name: str, shown: str, limit: int | None = None) -> bytes:
    """Read the regular, singly linked file ``name`` in the directory ``parent``."""
    try:
        fd = os.open(name, _READ, dir_fd=parent)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Refused(f"{shown!r} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        check_file(st, shown)
        chunks: list[bytes] = []
        left = st.st_size if limit is None else min(st.st_size, limit)
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_file(st: os.stat_result, shown: str) -> None:
    """Refuse anything but a regular file with one link."""
    if stat.S_ISDIR(st.st_mode):
        raise Refused(f"{shown!r} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{shown!r} is not a regular file (a device, FIFO or socket)")
    if st.st_nlink > 1:
        raise Refused(
            f"{shown!r} has {st.st_nlink} hard links; a file linked from elsewhere "
            "is not read (delete it, or write it anew)"
        )


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
