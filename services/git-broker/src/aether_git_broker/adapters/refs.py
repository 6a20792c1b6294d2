"""Moving the integration branch by compare-and-swap, the way git does it.

dulwich's ``set_if_equals`` is correct but calls ``fsync`` on every ref it writes, which
on a busy disk costs more than the whole tree merge. The guarantee it buys is against a
machine losing power, and there it buys nothing end to end: JetStream does not sync each
message it stores either (by default it syncs every two minutes), so the events and the
branch would roll back unevenly anyway. Against a process crash, which is what the broker's
exactly-once handling is about, a write that reached the kernel is enough.

So the common case (a loose ref, as the broker creates them) is done here: take
``<ref>.lock`` exclusively, re-read the ref under the lock, write the new id and rename
the lock over the ref, then append to the reflog. Anything else (a packed or symbolic
ref) goes through dulwich.
"""

from __future__ import annotations

import contextlib
import os

from dulwich.file import FileLocked
from dulwich.objects import ObjectID
from dulwich.refs import Ref, check_ref_format
from dulwich.repo import Repo

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def move_branch(
    repo: Repo,
    ref: Ref,
    old: ObjectID,
    new: ObjectID,
    *,
    committer: bytes,
    timestamp: int,
    message: bytes,
) -> bool:
    """Point ``ref`` at ``new`` if it points at ``old``; ``False`` if it does not.
    ``FileLocked`` (as dulwich raises it) when the ref's lock is held: it may be a stale
    one, which the caller can clear, where "the branch moved" would only repeat."""
    common = repo.commondir()
    path = os.path.join(common, os.fsdecode(ref))
    current = _read(path)
    if current is None or current.startswith(b"ref: "):
        return repo.refs.set_if_equals(
            ref, old, new, committer=committer, timestamp=timestamp, timezone=0, message=message
        )
    if current != old:
        return False
    lock = path + ".lock"
    try:
        fd = os.open(lock, _CREATE, 0o644)
    except FileExistsError:
        raise FileLocked(path, lock) from None
    try:
        if _read(path) != old:
            os.close(fd)
            os.unlink(lock)
            return False
        os.write(fd, new + b"\n")
        os.close(fd)
        os.replace(lock, path)
    except BaseException:
        if os.path.exists(lock):
            os.unlink(lock)
        raise
    _append_reflog(common, ref, old, new, committer, timestamp, message)
    return True


def _append_reflog(
    common: str,
    ref: Ref,
    old: ObjectID,
    new: ObjectID,
    committer: bytes,
    timestamp: int,
    message: bytes,
) -> None:
    line = b"%s %s %s %d +0000\t%s\n" % (old, new, committer, timestamp, b" ".join(message.split()))
    path = os.path.join(common, "logs", os.fsdecode(ref))
    try:
        file = open(path, "ab")  # noqa: SIM115 - opened in one of two ways
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        file = open(path, "ab")  # noqa: SIM115
    with file:
        file.write(line)


def add_branch(repo: Repo, ref: Ref, sha: ObjectID) -> bool:
    """Create ``ref`` at ``sha`` unless it exists (``False`` then), without a reflog and,
    for the reason above, without a sync: a task's branch, which lives until its merge.

    The ref is written under ``<ref>.lock`` and renamed into place; a ref that exists,
    loose or packed, is left alone. ``FileLocked`` when the lock is held."""
    if not check_ref_format(ref):
        raise ValueError(f"{ref!r} cannot name a branch")
    common = repo.commondir()
    path = os.path.join(common, os.fsdecode(ref))
    if _read(path) is not None or ref in repo.refs.get_packed_refs():
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = path + ".lock"
    try:
        fd = os.open(lock, _CREATE, 0o644)
    except FileExistsError:
        raise FileLocked(path, lock) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(sha + b"\n")
        if os.path.lexists(path):  # created between the look and the lock
            os.unlink(lock)
            return False
        os.rename(lock, path)
    except BaseException:
        if os.path.exists(lock):
            os.unlink(lock)
        raise
    return True


def remove_branch(repo: Repo, ref: Ref) -> bool:
    """Delete ``ref`` if it exists (``False`` when it does not), as git does: under
    ``<ref>.lock``, the loose ref unlinked, its directory removed when that leaves it
    empty. dulwich's ``remove_if_equals`` also reads the packed refs twice and tries
    every parent directory up to ``refs``; a branch the broker made is loose, so only one
    the packed refs name too (or a symbolic one) goes through dulwich. ``FileLocked``
    when the lock is held."""
    common = repo.commondir()
    path = os.path.join(common, os.fsdecode(ref))
    current = _read(path)
    packed = _read(os.path.join(common, "packed-refs"))
    if current is None or current.startswith(b"ref: ") or (packed and b" " + ref in packed):
        if ref not in repo.refs:
            return False
        return bool(repo.refs.remove_if_equals(ref, None))
    lock = path + ".lock"
    try:
        fd = os.open(lock, _CREATE, 0o644)
    except FileExistsError:
        raise FileLocked(path, lock) from None
    os.close(fd)
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
    finally:
        os.unlink(lock)
    if ref.count(b"/") > 2:  # a branch in a namespace of its own (never refs/heads)
        with contextlib.suppress(OSError):  # not empty: another attempt's branch is there
            os.rmdir(os.path.dirname(path))
    return True
