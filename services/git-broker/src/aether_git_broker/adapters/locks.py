"""Lock files a killed writer left in a repository, and how the broker clears them.

git and dulwich write a ref, the packed refs, an index or a config file by creating
``<file>.lock`` exclusively, writing it and renaming it over the file. A process killed
in between leaves the lock behind, and every later write of that file fails (dulwich
``FileLocked``) until someone removes it: git's own answer is a person doing so.

The broker is the single writer of its repositories: only its own process writes them
(its handlers one at a time, its pool warm-up and its smart-HTTP receive-pack), so when it
starts, before it consumes or serves anything, no lock in them can be live and every one
is removed. Locally (a shared worktree directory) an agent runner also commits in its
task's linked worktree, which writes that worktree's index, its task branch and loose
objects; locks there may belong to a runner at work, so at start-up they are removed
only once stale.

A lock met while handling is stale when it has not been touched for ``STALE_AFTER``
seconds: every writer holds a lock for one small write (milliseconds), so a lock that
old belongs to a process that died. Until then the step waits; then the lock is removed
and the step runs again (every broker operation looks at the repository first, so a
repeat is harmless).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from dulwich.file import FileLocked

log = logging.getLogger("aether.git_broker.locks")

STALE_AFTER = 10.0
LOCK_SUFFIX = ".lock"

__all__ = ["STALE_AFTER", "FileLocked", "clear_locks", "lock_age", "remove_if_stale"]


def lock_age(path: str, now: float | None = None) -> float | None:
    """Seconds since the lock file was last written, or ``None`` when it is gone."""
    try:
        modified = os.stat(path).st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    return max((time.time() if now is None else now) - modified, 0.0)


def remove_if_stale(path: str, stale_after: float = STALE_AFTER) -> bool:
    """Remove the lock file at ``path`` if it is at least ``stale_after`` seconds old."""
    age = lock_age(path)
    if age is None or age < stale_after:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    log.warning("stale lock removed", extra={"lock": path, "age_seconds": round(age, 1)})
    return True


def clear_locks(
    common_dir: str,
    shared: Callable[[str], bool] = lambda relative: False,
    stale_after: float = STALE_AFTER,
) -> list[str]:
    """Remove every ``*.lock`` file under a repository's git directory ``common_dir``
    (refs, packed refs, HEAD, config, index, objects, linked worktrees' administrative
    directories); those whose path relative to it ``shared`` says another process may
    be writing are removed only when stale. Returns the removed paths.

    git refuses ref names ending in ``.lock``, so no ref is ever taken for a lock.
    """
    removed: list[str] = []
    for directory, _, files in os.walk(common_dir):
        for name in files:
            if not name.endswith(LOCK_SUFFIX):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, common_dir).replace(os.sep, "/")
            if shared(relative):
                if remove_if_stale(path, stale_after):
                    removed.append(path)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed
