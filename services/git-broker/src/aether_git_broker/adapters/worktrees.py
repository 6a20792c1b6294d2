"""Linked worktrees, laid out exactly as ``git worktree add`` lays them out.

A linked worktree is a directory whose ``.git`` file points at an administrative
directory ``<common dir>/worktrees/<id>`` holding its ``HEAD``, its index and a ``gitdir``
file pointing back. dulwich's ``add_worktree`` names that directory after the worktree's
base name, which two missions with a task of the same id would share, so the broker
writes the same files itself with an id that includes a hash of the full path.

A worktree is checked out under a temporary name and renamed into place, so a worktree
that exists is complete: after a crash half-way through it is rebuilt, never reused.

Writing ten thousand files costs far more than reading a tree, so a worktree whose task
is merged is not deleted but moved into its repository's pool (its files, and its
administrative directory with its index; its registration goes). The next worktree of
that repository starts from a pooled one and writes only the files that differ from its
tree, checking every other file against the index by its stat data: what an agent left
behind, changed or added, is put right. The administrative directory goes with it, so
the next task rewrites its few small files rather than creates them: on some disks
creating a file or a directory costs a few hundred microseconds, a rename a tenth of that.
What an agent runner kept there for the finished attempt is removed before it is pooled,
its lock file aside.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import threading
from dataclasses import dataclass

from dulwich.objects import ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.checkout import Checkouts, checkout
from aether_git_broker.adapters.reuse import reuse_on_the_ways
from aether_git_broker.adapters.treemerge import Trees
from aether_sandbox.trees import remove_tree

log = logging.getLogger("aether.git_broker.worktrees")

_PARTIAL = ".partial"
_INDEX = ".index"
_ADMIN = ".admin"
_WARMING = ".warming"
# What a pooled administrative directory keeps: git's own files, and the agent runner's
# directory with its lock file (``aether-agent/lock``); anything else is removed.
_ADMIN_KEEPS = frozenset({"index", "HEAD", "gitdir", "commondir", "locked", "aether-agent"})
# git's mark of a worktree that no ``git worktree prune`` or ``remove`` may take (the
# broker removes its own): its content is the reason ``git worktree list`` shows.
_LOCKED = "locked"
LOCK_REASON = "aether: the git broker's, for one task attempt"
_RUNNER_DIR = "aether-agent"
_RUNNER_KEEPS = frozenset({"lock"})
# Where a new administrative directory is built, in the common directory beside
# ``worktrees`` (so it is renamed into place on the same file system, and git, which
# looks only inside ``worktrees``, never prunes it half-built).
_STAGING = "aether-new-"
POOL_DIR = ".pool"


def _common_dir(repo: Repo) -> str:
    return os.path.realpath(repo.commondir())


def _admin_root(repo: Repo) -> str:
    return os.path.join(_common_dir(repo), "worktrees")


def _admin_id(path: str) -> str:
    digest = hashlib.sha256(path.encode()).hexdigest()[:10]
    return f"{os.path.basename(path)}-{digest}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None


def registered_worktrees(repo: Repo) -> dict[str, str]:
    """Linked worktrees of ``repo``: real worktree path → administrative directory."""
    root = _admin_root(repo)
    found: dict[str, str] = {}
    if not os.path.isdir(root):
        return found
    for entry in sorted(os.listdir(root)):
        admin = os.path.join(root, entry)
        gitdir = _read(os.path.join(admin, "gitdir"))
        if gitdir is None:
            continue
        if not os.path.isabs(gitdir):
            gitdir = os.path.join(admin, gitdir)
        found[os.path.realpath(os.path.dirname(gitdir))] = admin
    return found


def admin_dir(repo: Repo, path: str) -> str:
    """The administrative directory the broker gives the worktree at ``path``: derived
    from the path, never read from the worktree's ``.git`` file, which a command in the
    worktree can rewrite."""
    return os.path.join(_admin_root(repo), _admin_id(path))


def is_worktree_on(repo: Repo, path: str, head: str) -> bool:
    """Whether ``path`` is a complete linked worktree of ``repo`` whose ``HEAD`` file says
    ``head`` (``ref: refs/heads/…`` for a branch, a commit id when detached).

    Its ``.git`` must be the very file the broker wrote (a regular file naming the
    worktree's own administrative directory); one changed since is rebuilt, not used."""
    admin = admin_dir(repo, path)
    pointer_path = os.path.join(path, ".git")
    if not os.path.isfile(pointer_path) or os.path.islink(pointer_path):
        return False
    if _read(pointer_path) != f"gitdir: {admin}":
        return False
    if _read(os.path.join(admin, "HEAD")) != head:
        return False
    return os.path.exists(os.path.join(admin, "index"))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def pool_of(repo: Repo, worktrees_dir: str) -> str:
    """The directory holding a repository's pooled worktrees."""
    key = hashlib.sha256(_common_dir(repo).encode()).hexdigest()[:12]
    return os.path.join(worktrees_dir, POOL_DIR, key)


@dataclass(frozen=True)
class _Pooled:
    """A pooled worktree claimed for a new path: its administrative directory when that
    was pooled with it (the index of what its files hold inside), else that index alone
    (a worktree the pool was warmed with)."""

    admin: str | None = None
    index: str | None = None


def _claim(pool: str | None, partial: str) -> _Pooled | None:
    """Move a pooled worktree to ``partial``; returns where its index (and its
    administrative directory, if pooled too) are."""
    if pool is None or not os.path.isdir(pool):
        return None
    for name in sorted(os.listdir(pool)):
        if name.endswith((_INDEX, _ADMIN, _WARMING)):
            continue
        candidate = os.path.join(pool, name)
        admin = candidate + _ADMIN
        if os.path.isfile(os.path.join(admin, "index")):
            os.rename(candidate, partial)
            return _Pooled(admin=admin)
        index = candidate + _INDEX
        if os.path.exists(index):
            os.rename(candidate, partial)
            return _Pooled(index=index)
        remove_tree(candidate)  # cut short while pooling
        remove_tree(admin)
    return None


def add_worktree(
    repo: Repo,
    trees: Trees,
    path: str,
    head: str,
    tree: ObjectID,
    pool: str | None = None,
    checkouts: Checkouts | None = None,
) -> bool:
    """Make ``path`` a linked worktree whose ``HEAD`` is ``head`` (``ref: refs/heads/…``
    or a commit id), with ``tree`` (the tree of that commit) checked out, starting from
    a worktree of ``pool`` when there is one. ``checkouts``: the broker's record of the
    checkouts it made, for reusing a pooled worktree by what changed since
    (``reuse.reuse_on_the_ways``).

    Returns ``False`` when a complete worktree with that ``HEAD`` is already there (it is
    reused untouched: an agent may be at work in it), ``True`` when one was created.
    """
    if is_worktree_on(repo, path, head):
        return False
    remove_worktree(repo, path)
    partial = path + _PARTIAL
    remove_tree(partial)
    pooled = _claim(pool, partial)
    admin = admin_dir(repo, path)
    remove_tree(admin)
    if pooled is None:
        os.makedirs(partial)
    # The administrative directory appears complete, by a rename, and locked: git prunes
    # one without its gitdir file, or whose worktree is not there (it is not, until the
    # checkout ends) and whose index is missing or old, unless it is locked; and git runs
    # a prune in the background of its own gc, or a person does, while a worktree of
    # thousands of files is checked out.
    if pooled is not None and pooled.admin is not None:
        staging = pooled.admin
    else:
        staging = os.path.join(_common_dir(repo), _STAGING + os.path.basename(admin))
        remove_tree(staging)
        os.makedirs(staging)
        _write(os.path.join(staging, "commondir"), "../..\n")
    if not os.path.exists(os.path.join(staging, _LOCKED)):
        _write(os.path.join(staging, _LOCKED), LOCK_REASON + "\n")
    _write(os.path.join(staging, "gitdir"), os.path.join(path, ".git") + "\n")
    _write(os.path.join(staging, "HEAD"), f"{head}\n")
    os.makedirs(os.path.dirname(admin), exist_ok=True)
    os.rename(staging, admin)
    _write(os.path.join(partial, ".git"), f"gitdir: {admin}\n")
    index = os.path.join(admin, "index")
    if pooled is None:
        checkout(repo, trees, tree, partial, index, checkouts=checkouts)
    elif pooled.admin is not None:
        # The pooled one's index, moved in with its administrative directory.
        if (
            checkouts is None
            or reuse_on_the_ways(repo, trees, tree, partial, index, checkouts) is None
        ):
            checkout(repo, trees, tree, partial, index, index, checkouts)
    else:
        assert pooled.index is not None
        checkout(repo, trees, tree, partial, index, pooled.index, checkouts)
        os.unlink(pooled.index)
    os.rename(partial, path)
    return True


def recycle_worktree(repo: Repo, path: str, pool: str, capacity: int) -> bool:
    """Move a finished worktree into ``pool`` (keeping its files and index, dropping its
    registration); when the pool is full or the worktree incomplete, remove it instead.
    Returns whether it was pooled."""
    admin = registered_worktrees(repo).get(os.path.realpath(path))
    index = os.path.join(admin, "index") if admin is not None else ""
    if admin is None or not os.path.isfile(index) or _pooled_count(pool) >= capacity:
        remove_worktree(repo, path)
        return False
    os.makedirs(pool, exist_ok=True)
    target = os.path.join(pool, f"{os.path.basename(path)}-{os.urandom(4).hex()}")
    _tidy_admin(admin)
    # The files first: a pooled directory without its administrative one is incomplete
    # and never claimed, and the registration left behind is pruned as any stale one.
    os.rename(path, target)
    os.rename(admin, target + _ADMIN)
    return True


def _tidy_admin(admin: str) -> None:
    """Leave in ``admin`` only what the next worktree rewrites or reuses: git's own files,
    and of the agent runner's directory its lock file, unless a process still holds it."""
    for name in os.listdir(admin):
        if name not in _ADMIN_KEEPS:
            _remove(os.path.join(admin, name))
    runner = os.path.join(admin, _RUNNER_DIR)
    if not os.path.isdir(runner) or os.path.islink(runner):
        if os.path.lexists(runner):
            _remove(runner)
        return
    for name in os.listdir(runner):
        path = os.path.join(runner, name)
        if name not in _RUNNER_KEEPS or not _unheld(path):
            _remove(path)


def _unheld(path: str) -> bool:
    """Whether ``path`` is a regular file no process holds an ``flock`` on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _pooled_count(pool: str) -> int:
    if not os.path.isdir(pool):
        return 0
    return sum(1 for n in os.listdir(pool) if not n.endswith((_INDEX, _ADMIN)))


# git's loose object directories, by the first two digits of an object's id.
_FANOUTS = tuple(f"{i:02x}" for i in range(256))


def ensure_fanouts(objects: str) -> int:
    """Make the 256 directories loose objects go in (``objects/00`` … ``objects/ff``)
    that do not exist yet; returns how many were made.

    A repository cloned or packed holds none of them, and each of the first few hundred
    objects the tasks write (the agents' commits, the merges) then makes one first: on a
    slow disk a directory costs several times a file, about three a task on a new
    mission's path. Made here, ahead of time, as git makes them (empty ones are removed
    by its ``prune``, and made again as needed)."""
    try:
        present = set(os.listdir(objects))
    except FileNotFoundError:
        return 0
    made = 0
    for fanout in _FANOUTS:
        if fanout not in present:
            os.makedirs(os.path.join(objects, fanout), exist_ok=True)
            made += 1
    return made


def warm_pool(
    repository_path: str,
    tree: ObjectID,
    pool: str,
    count: int,
    stop: threading.Event | None = None,
) -> int:
    """Check ``tree`` out into the pool until it holds ``count`` worktrees; returns how
    many were made. Meant for a background thread while a mission is being planned: it
    opens its own repository, builds each one under a name the pool ignores and renames
    it into place, so a worktree taken from the pool is always complete.

    It makes at most what the pool lacked when it began: a worktree the mission's tasks
    take meanwhile comes back to the pool when its task ends, and one made to replace
    it would only find the pool full then and be removed (on a repository of thousands
    of files, a whole checkout and a whole removal a task, beside the mission's work).
    ``stop``, once set, ends it before its next worktree."""
    made = 0
    with Repo(repository_path) as repo:
        ensure_fanouts(os.fspath(repo.object_store.path))
        trees = Trees(repo.object_store)
        os.makedirs(pool, exist_ok=True)
        lacking = count - _pooled_count(pool)
        while made < lacking and _pooled_count(pool) < count:
            if stop is not None and stop.is_set():
                break
            name = os.path.join(pool, f"warm-{os.urandom(4).hex()}")
            building = name + _WARMING
            os.makedirs(building)
            checkout(repo, trees, tree, building, name + _INDEX)
            os.rename(building, name)
            made += 1
    return made


def clear_leftovers(worktrees_dir: str) -> list[str]:
    """Pool entries a stop or a crash cut short: half-warmed ones, indexes alone."""
    root = os.path.join(worktrees_dir, POOL_DIR)
    removed: list[str] = []
    for pool in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        directory = os.path.join(root, pool)
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            orphan = any(
                name.endswith(suffix) and not os.path.isdir(path.removesuffix(suffix))
                for suffix in (_INDEX, _ADMIN)
            )
            if name.endswith(_WARMING) or orphan:
                if os.path.isdir(path):
                    remove_tree(path)
                else:
                    os.unlink(path)
                removed.append(path)
    return removed


def drop_pool(pool: str) -> bool:
    """Delete a repository's pooled worktrees."""
    if not os.path.isdir(pool):
        return False
    remove_tree(pool)
    return True


def remove_worktree(repo: Repo, path: str) -> bool:
    """Remove the worktree at ``path`` and its administrative directory, if present."""
    real = os.path.realpath(path)
    admin = registered_worktrees(repo).get(real)
    removed = False
    if admin is not None:
        remove_tree(admin)
        removed = True
    for leftover in (path, path + _PARTIAL):
        if os.path.lexists(leftover):
            remove_tree(leftover)
            removed = True
    return removed


def remove_worktrees_under(repo: Repo, directory: str) -> list[str]:
    """Remove every linked worktree of ``repo`` inside ``directory``, then the directory."""
    root = os.path.realpath(directory)
    removed = []
    for path in registered_worktrees(repo):
        if path.startswith(root + os.sep) and remove_worktree(repo, path):
            removed.append(path)
    if os.path.isdir(directory):
        remove_tree(directory)
    return removed


def _admin_of(path: str) -> str | None:
    """The administrative directory a worktree's ``.git`` file names, if it is one."""
    pointer = _read(os.path.join(path, ".git"))
    if pointer is None or not pointer.startswith("gitdir: "):
        return None
    admin = os.path.realpath(pointer.removeprefix("gitdir: "))
    # Only ever a directory of a repository's "worktrees" directory, pointing back here.
    if os.path.basename(os.path.dirname(admin)) != "worktrees":
        return None
    gitdir = _read(os.path.join(admin, "gitdir"))
    if gitdir is None or os.path.realpath(os.path.dirname(gitdir)) != os.path.realpath(path):
        return None
    return admin


def sweep_directory(worktrees_dir: str, live: frozenset[str]) -> list[str]:
    """Remove every worktree under ``worktrees_dir`` (``<mission>/<task>-a<n>``, and the
    ``.verify`` scratch worktrees) that is not in ``live``, with its administrative
    directory, and every half-built one. Returns what was removed.

    Only directories laid out as the broker lays them out are touched.
    """
    removed: list[str] = []
    if not os.path.isdir(worktrees_dir):
        return removed
    keep = {os.path.realpath(path) for path in live}
    for group in sorted(os.listdir(worktrees_dir)):
        group_dir = os.path.join(worktrees_dir, group)
        if group == POOL_DIR or not os.path.isdir(group_dir) or os.path.islink(group_dir):
            continue
        for entry in sorted(os.listdir(group_dir)):
            path = os.path.join(group_dir, entry)
            if os.path.realpath(path) in keep:
                continue
            if entry.endswith(_PARTIAL):
                remove_tree(path)
                removed.append(path)
                continue
            admin = _admin_of(path)
            if admin is None:
                continue
            remove_tree(admin)
            remove_tree(path)
            removed.append(path)
        if not os.listdir(group_dir):
            os.rmdir(group_dir)
    return removed


def prune_registrations(repo: Repo, worktrees_dir: str, live: frozenset[str]) -> list[str]:
    """Remove ``repo``'s administrative entries for worktrees under ``worktrees_dir``
    that are gone or not live (what ``git worktree prune`` does, for the broker's own)."""
    root = os.path.realpath(worktrees_dir) + os.sep
    keep = {os.path.realpath(path) for path in live}
    pruned = []
    common = _common_dir(repo)
    for name in os.listdir(common):
        if name.startswith(_STAGING):  # a new worktree's, cut short
            remove_tree(os.path.join(common, name))
    for path, admin in registered_worktrees(repo).items():
        if not path.startswith(root) or (path in keep and os.path.isdir(path)):
            continue
        if os.path.isdir(path) and _admin_of(path) == os.path.realpath(admin):
            remove_tree(path)
        remove_tree(admin)
        pruned.append(path)
    return pruned
