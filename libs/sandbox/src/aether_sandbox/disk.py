"""Watching what a command writes into its workdir (and its home, when it has one).

RLIMIT_FSIZE bounds each file; this bounds the sum and the number of new entries. The
file system's free space and free inodes are cheap to read and can only overstate what
the command wrote (other writers count too), so the tree is walked only when they say the
cap may be passed; the walk then counts what changed since the command started, and the
counts are taken afresh from it (what other writers did before the walk no longer
counts). Space freed elsewhere on the same file system can hide writes from those counts:
what the caller writes itself (the runner's file tools) is added on its own (``known``),
whatever the file system says, and a watch that runs for long walks now and then anyway
(``due``). Data in files the command deleted but holds open is invisible to the walk: it
is bounded only by the per-file cap times the open-file limit (stopping on free space
alone would stop commands for what other processes on the machine write).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aether_sandbox.settings import MIB, Limits
from aether_sandbox.trees import open_dir


class DiskWatch:
    """The trees a command may write (its workdir, and its home when it has one): the
    sum of what it wrote into them, and the entries it made there."""

    def __init__(
        self,
        roots: tuple[Path, ...],
        limits: Limits,
        where: str = "",
        attempt: DiskWatch | None = None,
        since_ns: int | None = None,
        known: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.roots = roots
        # The watch of the whole attempt the command is part of, checked after this one.
        self.attempt = attempt
        # What the roots are called in a stop's reason (by default, for a command).
        self.where = where
        self.bytes = limits.disk_bytes
        self.files = limits.files
        # What the caller itself wrote into the roots so far (bytes, entries; counted
        # upwards): added to the file systems' counts, which space freed elsewhere hides.
        self._known = known
        self.since_ns = time.time_ns()
        self._base = [self._stat(root) for root in roots]
        self._known_base = known() if known is not None else (0, 0)
        # When the last walk ended (``time.monotonic``; the start counts as one) and how
        # long it took: a watch that runs for long spaces its walks by their cost.
        self.walked_at = time.monotonic()
        self.walk_seconds = 0.0
        # What was written by the time of ``_base`` (the last walk's count; an attempt's
        # first start before its runner died, whose writes the file systems' counts from
        # now on miss; else nothing).
        self._prior = (0, 0)
        if since_ns is not None and since_ns < self.since_ns:
            self.since_ns = since_ns
            self._prior = self.walk()

    @staticmethod
    def _stat(root: Path) -> os.statvfs_result | None:
        try:
            return os.statvfs(root)
        except OSError:
            return None

    def may_be_over(self) -> bool:
        """Whether the roots may hold more than the caps, by the last walk's count and,
        added to it, either what the file systems they are on lost since (one
        ``statvfs`` a root, each file system counted once) or what the caller wrote
        since: cheap enough to ask inline. A hint, not a count: space freed elsewhere on
        the same file system at the same time hides a command's writes from the first
        (not the caller's own, which the second counts), so a check that must hold
        (after a command) walks (``exact``)."""
        lost_bytes = lost_entries = 0
        counted: set[int] = set()
        for root, base in zip(self.roots, self._base, strict=True):
            if base is None:
                continue
            now = self._stat(root)
            if now is None or now.f_fsid in counted:
                continue
            counted.add(now.f_fsid)
            lost_bytes += (base.f_bavail - now.f_bavail) * now.f_frsize
            if now.f_files > 0:
                lost_entries += base.f_favail - now.f_favail
        if self._known is not None:
            known_bytes, known_entries = self._known()
            lost_bytes = max(lost_bytes, known_bytes - self._known_base[0])
            lost_entries = max(lost_entries, known_entries - self._known_base[1])
        written, created = self._prior
        if self.bytes is not None and written + lost_bytes > self.bytes:
            return True
        return self.files is not None and created + lost_entries > self.files

    def due(self, every: float = 30.0, cost: float = 100.0) -> bool:
        """Whether a watch that runs for long should walk whatever the counts say: the
        last walk is ``every`` seconds old, or ``cost`` times its own length (so that
        walks take at most about 1/``cost`` of a core)."""
        return time.monotonic() - self.walked_at >= max(every, cost * self.walk_seconds)

    def over(self, now: bool = False, exact: bool = False) -> str | None:
        """Why the command (or the attempt it is part of) has written too much, or
        ``None``. Walks at most every half second unless ``now``, and only when the file
        systems' counts say it may be over unless ``exact``."""
        reason = self._over(now, exact)
        if reason is None and self.attempt is not None:
            reason = self.attempt.over(now, exact)
        return reason

    @classmethod
    def of_attempt(
        cls,
        worktree: Path,
        limits: Limits,
        since_ns: int | None = None,
        known: Callable[[], tuple[int, int]] | None = None,
    ) -> DiskWatch:
        """A watch over all an attempt writes into its worktree, from ``since_ns`` (its
        first start, kept across a runner's death; by default now), against its
        ``attempt_disk_bytes`` and ``attempt_files``; ``known``: what the runner's own
        file tools wrote there so far."""
        caps = Limits(disk_bytes=limits.attempt_disk_bytes, files=limits.attempt_files)
        where = "the worktree during this attempt"
        return cls((worktree,), caps, where, since_ns=since_ns, known=known)

    def _over(self, now: bool, exact: bool) -> str | None:
        if not exact and not self.may_be_over():
            return None
        # Walks are half a second apart at least; the first comes as soon as the counts
        # say so (a command can fill the disk in less than that).
        if not now and self.walk_seconds and time.monotonic() - self.walked_at < 0.5:
            return None
        # The counts the walk's result stands in for from now on, taken before it: what
        # is written while it walks is then in the counts, if not in the walk.
        base = [self._stat(root) for root in self.roots]
        known = self._known() if self._known is not None else (0, 0)
        began = time.monotonic()
        written, created = self.walk()
        self.walked_at = time.monotonic()
        self.walk_seconds = max(self.walked_at - began, 1e-9)  # non-zero: a walk was made
        self._base, self._known_base, self._prior = base, known, (written, created)
        where = self.where or (
            "the worktree" if len(self.roots) == 1 else "the worktree and its home"
        )
        if self.bytes is not None and written > self.bytes:
            return f"it wrote more than {self.bytes / MIB:g} MiB into {where}"
        if self.files is not None and created > self.files:
            return f"it created more than {self.files:,} files in {where}"
        return None

    def walk(self) -> tuple[int, int]:
        """(bytes in files changed since the start, entries created or changed since)."""
        written = created = 0
        stack = [str(root) for root in self.roots]
        while stack:
            directory = stack.pop()
            with contextlib.suppress(OSError), _listed(directory) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        if info.st_ctime_ns >= self.since_ns:
                            created += 1
                            if entry.is_file(follow_symlinks=False):
                                written += info.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(os.path.join(directory, entry.name))
        return written, created


@contextlib.contextmanager
def _listed(directory: str) -> Iterator[Iterator[os.DirEntry[str]]]:
    """The entries of ``directory``. One its owner may not list or search (a command's
    ``chmod 300`` or ``600``: files can still be made in it, or were before) is given back
    its owner's read and search bits first, else what it holds would be out of the walk's
    sight and the caps could be passed in it at will (``trees.open_dir``: the owner's
    bits alone, through a descriptor that does not follow a link)."""
    fd = open_dir(directory)
    try:
        entries = os.scandir(fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        with entries:
            yield entries
    finally:
        os.close(fd)
