"""Watching what a command writes into its workdir.

RLIMIT_FSIZE bounds each file; this bounds the sum and the number of new entries. The
file system's free space and free inodes are cheap to read and can only overstate what
the command wrote (other writers count too), so the tree is walked only when they say the
cap may be passed; the walk then counts what changed since the command started. Data in
files the command deleted but holds open is invisible to the walk: it is bounded only by
the per-file cap times the open-file limit (stopping on free space alone would stop
commands for what other processes on the machine write).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from aether_sandbox.settings import MIB, Limits


class DiskWatch:
    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.bytes = limits.disk_bytes
        self.files = limits.files
        self.since_ns = time.time_ns()
        self._base = self._stat()
        self._walked_at = 0.0

    def _stat(self) -> os.statvfs_result | None:
        try:
            return os.statvfs(self.root)
        except OSError:
            return None

    def over(self) -> str | None:
        """Why the command has written too much, or ``None``."""
        now = self._stat()
        if self._base is None or now is None:
            return None
        lost_bytes = (self._base.f_bavail - now.f_bavail) * now.f_frsize
        lost_inodes = self._base.f_favail - now.f_favail
        may_bytes = self.bytes is not None and lost_bytes > self.bytes
        may_files = self.files is not None and now.f_files > 0 and lost_inodes > self.files
        if not (may_bytes or may_files):
            return None
        if time.monotonic() - self._walked_at < 0.5:
            return None
        written, created = self.walk()
        self._walked_at = time.monotonic()
        if self.bytes is not None and written > self.bytes:
            return f"it wrote more than {self.bytes / MIB:g} MiB into the worktree"
        if self.files is not None and created > self.files:
            return f"it created more than {self.files:,} files in the worktree"
        return None

    def walk(self) -> tuple[int, int]:
        """(bytes in files changed since the start, entries created or changed since)."""
        written = created = 0
        stack = [str(self.root)]
        while stack:
            directory = stack.pop()
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        if info.st_ctime_ns >= self.since_ns:
                            created += 1
                            if entry.is_file(follow_symlinks=False):
                                written += info.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
        return written, created
