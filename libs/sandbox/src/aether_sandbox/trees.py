"""Trees a command wrote, listed and removed whatever modes it left on them.

A command owns what it makes in its worktree and may take its own bits off a directory
(``chmod 000``, ``chmod 300``). Root passes over a directory's mode; the services' user
in production (uid 10001) does not, so without its bits back such a directory could be
neither listed (the disk watch would not see what it holds) nor emptied (it would stay on
disk when its worktree is removed, or come back in a pooled worktree). Bits are given
back to the owner alone, through descriptors that follow no link: a link planted where a
directory was is removed as a link, never followed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import AnyStr

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What emptying a directory needs of it: list it (read), reach its entries (search) and
# unlink them (write).
OWNER_ALL = stat.S_IRWXU
OWNER_LISTS = stat.S_IRUSR | stat.S_IXUSR


def owner_may(name: str | bytes, bits: int = OWNER_ALL, dir_fd: int | None = None) -> None:
    """Give the directory ``name`` (relative to ``dir_fd`` when given) its owner's
    ``bits`` back, through a descriptor that does not follow a link. Raises ``OSError``
    when it is not a directory or not this user's."""
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if mode & bits != bits:
            # fchmod does not take an O_PATH descriptor; its /proc link names that very inode.
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode) | bits)
    finally:
        os.close(fd)


def open_dir(name: str | bytes, dir_fd: int | None = None, bits: int = OWNER_LISTS) -> int:
    """A descriptor of the directory ``name`` (no link followed) whose owner's ``bits``
    are set, given back first when the command took them off."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        owner_may(name, bits, dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if mode & bits != bits:
            os.fchmod(fd, stat.S_IMODE(mode) | bits)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_tree(path: AnyStr | os.PathLike[AnyStr], dir_fd: int | None = None) -> bool:
    """Remove ``path`` (relative to ``dir_fd`` when given): a directory with everything
    below it, whatever modes a command left on them, or a file or link (never followed).
    Returns whether it is gone; what cannot be removed is left, never raised, but for a
    path that is no directory's entry at all."""
    name = os.fspath(path)
    if dir_fd is None:
        parent, name = os.path.split(name.rstrip(b"/" if isinstance(name, bytes) else "/"))
        if not name:
            raise ValueError(f"{os.fspath(path)!r} names no entry to remove")
        try:
            dir_fd = os.open(parent or (b"." if isinstance(name, bytes) else "."), _DIR_FLAGS)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            return _remove_at(dir_fd, name)
        finally:
            os.close(dir_fd)
    return _remove_at(dir_fd, name)


def _remove_at(parent: int, name: AnyStr) -> bool:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True
    # Depth first without recursion (a command can nest directories thousands deep):
    # each frame is a directory being emptied, its parent's descriptor and its entries
    # still to go. One descriptor is held per level, as ``shutil.rmtree`` holds.
    frames: list[tuple[int, int, AnyStr, list[AnyStr]]] = []
    try:
        _enter(frames, parent, name)
        while frames:
            fd, above, entry, names = frames[-1]
            while names:
                child = names.pop()
                with contextlib.suppress(OSError):
                    child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(child_st.st_mode):
                        _enter(frames, fd, child)
                        break
                    os.unlink(child, dir_fd=fd)
            else:
                frames.pop()
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.rmdir(entry, dir_fd=above)
    except OSError:
        pass
    finally:
        for fd, _, _, _ in frames:
            os.close(fd)
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def _enter(frames: list[tuple[int, int, AnyStr, list[AnyStr]]], parent: int, name: AnyStr) -> None:
    fd = open_dir(name, parent, OWNER_ALL)
    try:
        listed = os.listdir(fd)
    except BaseException:
        os.close(fd)
        raise
    names: list[AnyStr] = [os.fsencode(n) if isinstance(name, bytes) else n for n in listed]
    frames.append((fd, parent, name, names))


def remove_changed(root: str | os.PathLike[str], since_ns: int, keep: tuple[str, ...] = ()) -> int:
    """Remove every entry below ``root`` made or changed since ``since_ns`` (its ctime:
    a directory whole, whatever modes were left on it), what a disk watch counted as
    written, but ``keep`` (names directly in ``root``). Older directories are searched
    for such entries, through descriptors that follow no link. Returns how many entries
    were removed (a directory counting once)."""
    removed = 0
    stack = [open_dir(os.fspath(root))]
    top = stack[0]
    try:
        while stack:
            fd = stack.pop()
            try:
                names = os.listdir(fd)
                for name in names:
                    if fd == top and name in keep:
                        continue
                    try:
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if info.st_ctime_ns >= since_ns:
                        removed += _remove_at(fd, name)
                    elif stat.S_ISDIR(info.st_mode):
                        with contextlib.suppress(OSError):
                            stack.append(open_dir(name, fd, OWNER_ALL))
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        for fd in stack:
            os.close(fd)
    return removed
