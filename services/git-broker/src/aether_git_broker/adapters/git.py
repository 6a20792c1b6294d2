"""Every repository write the broker makes, done with dulwich (never the ``git`` binary).

Each operation is level-triggered: it looks at the repository first and only does what
is still missing, so repeating it after a crash or a redelivery is harmless.

Repositories stay open between operations, each with caches of parsed trees and commits:
the merge train reads the same top-level trees and history for every merge, and reopening
a repository reloads its pack indexes. Only one operation runs at a time (the adapter
holds a lock), which is what the broker's single consumer does anyway. The merge itself
is in ``merge``, worktrees and their pool in ``worktrees``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime

from dulwich.file import FileLocked
from dulwich.objects import S_ISGITLINK, ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether_events import RepoFile
from aether_git_broker.adapters import locks, worktrees
from aether_git_broker.adapters.checkout import Checkouts
from aether_git_broker.adapters.history import Commits, merge_bases
from aether_git_broker.adapters.limits import CommitLimits
from aether_git_broker.adapters.merge import merge_task
from aether_git_broker.adapters.refs import add_branch, remove_branch
from aether_git_broker.adapters.repository import (
    DEFAULT_IDENTITY,
    SHA,
    Handle,
    RefMoved,
    RepositoryError,
    Verifier,
    branch_ref,
    head_of,
    local_path,
    open_repository,
)
from aether_git_broker.adapters.resolution import resolution_start
from aether_git_broker.adapters.treemerge import Trees, is_dir
from aether_git_broker.domain import MergeOutcome, RepositoryOutcome, WorkspaceOutcome
from aether_sandbox.trees import remove_tree

log = logging.getLogger("aether.git_broker.git")

__all__ = [
    "DEFAULT_IDENTITY",
    "GitRepositories",
    "Handle",
    "RefMoved",
    "RepositoryError",
    "Verifier",
    "local_path",
    "open_repository",
]


class GitRepositories:
    """The repository adapter: integration branches, worktrees and merges.

    ``identity`` (``Name <email>``) authors the merge commits; at most ``max_open``
    repositories stay open. With ``worktrees_dir``, up to ``pool_capacity`` finished
    worktrees per repository are kept under its ``.pool`` directory for reuse.
    """

    def __init__(
        self,
        *,
        identity: str = DEFAULT_IDENTITY,
        max_listed_files: int = 2000,
        max_open: int = 16,
        worktrees_dir: str | None = None,
        pool_capacity: int = 4,
        commit_limits: CommitLimits | None = None,
    ) -> None:
        self._identity = identity.encode()
        # What one task's change may bring into an integration branch (see ``limits``).
        self._commit_limits = commit_limits or CommitLimits()
        # Where finished worktrees are pooled for reuse (None: they are deleted).
        self._worktrees_dir = worktrees_dir if pool_capacity > 0 else None
        self._pool_capacity = pool_capacity
        self._max_listed_files = max_listed_files
        self._max_open = max_open
        self._open_handles: OrderedDict[str, Handle] = OrderedDict()
        self._lock = threading.RLock()
        self._warming: dict[str, threading.Thread] = {}
        # Set when a pool's first task takes a workspace: its warm-up stops (see prewarm).
        self._warm_stops: dict[str, threading.Event] = {}
        # The checkouts made into worktrees, for reusing one by what changed since.
        self._checkouts = Checkouts()

    def _open(self, repository: str) -> Handle:
        path = local_path(repository)
        handle = self._open_handles.get(path)
        if handle is not None and os.path.isdir(handle.repo.controldir()):
            self._open_handles.move_to_end(path)
            return handle
        if handle is not None:
            self._forget(path)
        repo = open_repository(repository)
        store = repo.object_store
        handle = Handle(repo=repo, trees=Trees(store), commits=Commits(store))
        self._open_handles[path] = handle
        while len(self._open_handles) > self._max_open:
            self._forget(next(iter(self._open_handles)))
        return handle

    def _forget(self, path: str) -> None:
        handle = self._open_handles.pop(path, None)
        if handle is not None:
            handle.repo.close()

    def close(self) -> None:
        """Close every open repository (after any pool warm-up still running)."""
        # Read under the lock: a warm-up is registered and started under it, so none
        # seen here is registered but not yet started (joining that one raises).
        with self._lock:
            warming = list(self._warming.values())
        for thread in warming:
            thread.join()
        with self._lock:
            for path in list(self._open_handles):
                self._forget(path)

    # --- missions ---------------------------------------------------------------

    def prepare_repository(
        self, repository: str, base_branch: str, integration_branch: str
    ) -> RepositoryOutcome:
        """Check the repository and base branch; create the integration branch if missing.

        The integration branch starts at the base branch's head. When it exists already
        (a redelivery) it is left alone and the base reported is where it forked.
        """
        with self._lock:
            handle = self._open(repository)
            repo = handle.repo
            base_head = head_of(repo, base_branch, "base branch")
            handle.commit(base_head)
            integration_ref = branch_ref(integration_branch)
            if repo.refs.add_if_new(
                integration_ref,
                base_head,
                committer=self._identity,
                message=f"aether: integration branch from {base_branch}".encode(),
            ):
                base_sha = base_head
                log.info("integration branch created", extra={"branch": integration_branch})
            else:
                bases = merge_bases(handle.commits, repo.refs[integration_ref], base_head)
                base_sha = bases[0] if bases else base_head
            files, count = self._list_files(handle, base_sha)
            return RepositoryOutcome(
                path=handle.path,
                base_branch=base_branch,
                base_sha=base_sha.decode(),
                integration_branch=integration_branch,
                files=files,
                file_count=count,
                files_truncated=count > len(files),
            )

    def _list_files(self, handle: Handle, commit_sha: ObjectID) -> tuple[tuple[RepoFile, ...], int]:
        store, trees = handle.repo.object_store, handle.trees
        files: list[RepoFile] = []
        count = 0
        pending = [(b"", handle.commit(commit_sha).tree)]
        while pending:
            prefix, tree = pending.pop()
            for name, (mode, sha) in sorted(trees.entries(tree).items(), reverse=True):
                path = prefix + name
                if is_dir((mode, sha)):
                    pending.append((path + b"/", sha))
                    continue
                if S_ISGITLINK(mode):
                    continue
                count += 1
                if len(files) < self._max_listed_files:
                    _, data = store.get_raw(sha)
                    files.append(RepoFile(path=path.decode(errors="replace"), size=len(data)))
        return tuple(sorted(files, key=lambda f: f.path)), count

    # --- workspaces -------------------------------------------------------------

    def prepare_workspace(
        self,
        repository_path: str,
        integration_branch: str,
        branch: str,
        worktree_path: str,
        resolve_sha: str | None = None,
    ) -> WorkspaceOutcome:
        """Create the task branch at the integration head, and a worktree checked out on it.

        With ``resolve_sha`` (a resolution attempt) the branch starts instead from that
        commit merged onto the head with its conflicts marked (see ``resolution``).

        An existing branch or worktree (a redelivery) is reused as it is; the base then
        reported is the branch's head, which nobody has committed to before the
        workspace was announced.
        """
        with self._lock:
            handle = self._open(repository_path)
            repo = handle.repo
            task_ref = branch_ref(branch)
            head = head_of(repo, integration_branch, "integration branch")
            conflicted: list[str] = []
            if resolve_sha is not None and SHA.fullmatch(resolve_sha):
                # A resolution attempt starts from the conflicting commit merged in, marked.
                head, conflicted = resolution_start(
                    handle, self._identity, head, ObjectID(resolve_sha.encode())
                )
            # No reflog: the branch lives for one task and is deleted once merged, when
            # git would delete its reflog too (dulwich leaves it, one file per task).
            if not add_branch(repo, task_ref, head):
                head = repo.refs[task_ref]
            os.makedirs(os.path.dirname(worktree_path), exist_ok=True)
            self._tasks_began(repo)
            created = worktrees.add_worktree(
                repo,
                handle.trees,
                worktree_path,
                f"ref: {task_ref.decode()}",
                handle.commit(head).tree,
                self._pool(repo),
                self._checkouts,
            )
            return WorkspaceOutcome(
                branch=branch,
                worktree_path=worktree_path,
                base_sha=head.decode(),
                created=created,
                conflicted_files=tuple(conflicted),
                git_dir=worktrees.admin_dir(repo, worktree_path),
            )

    def _tasks_began(self, repo: Repo) -> None:
        """A task takes a workspace: the pool's warm-up makes no more worktrees. What
        the first tasks lacked they have checked out by now, and those come back to the
        pool when they end; more would only share the cores with the tasks (a plan that
        comes at once, as the offline model's does) and be removed, the pool full."""
        pool = self._pool(repo)
        stop = self._warm_stops.pop(pool, None) if pool is not None else None
        if stop is not None:
            stop.set()

    def _pool(self, repo: Repo) -> str | None:
        if self._worktrees_dir is None:
            return None
        return worktrees.pool_of(repo, self._worktrees_dir)

    def scratch_worktree(self, handle: Handle, path: str, commit: ObjectID) -> None:
        """A detached worktree at ``commit`` (for verification), from the pool if possible."""
        worktrees.remove_worktree(handle.repo, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        worktrees.add_worktree(
            handle.repo,
            handle.trees,
            path,
            commit.decode(),
            handle.commit(commit).tree,
            self._pool(handle.repo),
            self._checkouts,
        )

    def release_worktree(self, repo: Repo, path: str) -> bool:
        """Pool a finished worktree (or remove it when pooling is off or the pool full)."""
        pool = self._pool(repo)
        if pool is None:
            worktrees.remove_worktree(repo, path)
            return False
        return worktrees.recycle_worktree(repo, path, pool, self._pool_capacity)

    def recycle_worktree(self, repository_path: str, worktree_path: str) -> bool:
        """Done with a worktree: pool it for the next task (or remove it)."""
        with self._lock:
            repo = self._open(repository_path).repo
            if not os.path.isdir(worktree_path):
                return worktrees.remove_worktree(repo, worktree_path)
            self.release_worktree(repo, worktree_path)
            return True

    def prewarm(self, repository_path: str, commit_sha: str, count: int) -> bool:
        """Start filling the repository's pool with worktrees of ``commit_sha`` in the
        background (while the mission is planned), so its first tasks do not each write
        every file; it stops when the first task takes a workspace. Returns whether a
        warm-up started."""
        with self._lock:
            repo = self._open(repository_path).repo
            pool = self._pool(repo)
            handle = self._open(repository_path)
            if pool is None or count <= 0:
                return False
            running = self._warming.get(pool)
            if running is not None and running.is_alive():
                return False
            tree = handle.commit(ObjectID(commit_sha.encode())).tree
            stop = self._warm_stops[pool] = threading.Event()
            thread = threading.Thread(
                target=self._warm,
                args=(handle.path, tree, pool, min(count, self._pool_capacity), stop),
                name="git-broker-warm-pool",
                daemon=True,
            )
            self._warming[pool] = thread
            thread.start()
            return True

    def _warm(
        self, repository_path: str, tree: ObjectID, pool: str, count: int, stop: threading.Event
    ) -> None:
        # Work that is only ahead of time yields the cores to the mission's own: on a
        # project of thousands of files each worktree is seconds of writing, and a plan
        # that comes quickly has the first tasks waiting on the same cores.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            made = worktrees.warm_pool(repository_path, tree, pool, count, stop)
        except Exception:  # a background helper: log, never crash the broker
            log.exception("warming the worktree pool failed", extra={"pool": pool})
            return
        log.info("worktree pool warmed", extra={"pool": pool, "worktrees": made})

    def clear_pool_leftovers(self) -> list[str]:
        """Remove pool entries cut short by a stop or a crash (at start-up)."""
        if self._worktrees_dir is None:
            return []
        return worktrees.clear_leftovers(self._worktrees_dir)

    def clear_locks(self, repository_path: str, shared_prefixes: tuple[str, ...] = ()) -> list[str]:
        """Remove the lock files a killed writer left in the repository (see ``locks``);
        those under ``shared_prefixes`` of its git directory only when stale."""
        with self._lock:
            try:
                repo = self._open(repository_path).repo
            except RepositoryError:
                return []
            return locks.clear_locks(
                repo.commondir(), lambda relative: relative.startswith(shared_prefixes)
            )

    def drop_pool(self, repository_path: str) -> bool:
        """Delete the repository's pooled worktrees (no mission uses it any more)."""
        with self._lock:
            try:
                repo = self._open(repository_path).repo
            except RepositoryError:
                return False
            pool = self._pool(repo)
            dropped = pool is not None and worktrees.drop_pool(pool)
            if dropped:
                self._checkouts.clear()  # no record outlives an idle repository's pool
            return dropped

    def drop_idle_pools(self, active_repositories: Iterable[str]) -> list[str]:
        """Delete the pools of every repository not in ``active_repositories``."""
        if self._worktrees_dir is None:
            return []
        with self._lock:
            keep = set()
            for path in active_repositories:
                try:
                    keep.add(self._pool(self._open(path).repo))
                except RepositoryError:
                    continue
            root = os.path.join(self._worktrees_dir, worktrees.POOL_DIR)
            dropped = []
            for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
                pool = os.path.join(root, name)
                if pool not in keep and worktrees.drop_pool(pool):
                    dropped.append(pool)
            if dropped:
                # The records of the checkouts go with them (those of worktrees still in
                # use are made again, at worst, by one whole check each).
                self._checkouts.clear()
            return dropped

    def remove_worktree(self, repository_path: str, worktree_path: str) -> bool:
        """Remove one worktree and its administrative directory; keeps the branch."""
        with self._lock:
            return worktrees.remove_worktree(self._open(repository_path).repo, worktree_path)

    def remove_worktrees_under(self, repository_path: str, directory: str) -> list[str]:
        """Remove every worktree of the repository inside ``directory``."""
        with self._lock:
            try:
                repo = self._open(repository_path).repo
            except RepositoryError:
                # The repository is gone; what is left of its worktrees is just files.
                if os.path.isdir(directory):
                    remove_tree(directory)
                return []
            return worktrees.remove_worktrees_under(repo, directory)

    def prune_worktrees(
        self, repository_path: str, worktrees_dir: str, live: frozenset[str]
    ) -> list[str]:
        """Drop the repository's registrations of broker worktrees that are gone."""
        with self._lock:
            try:
                repo = self._open(repository_path).repo
            except RepositoryError:
                return []
            return worktrees.prune_registrations(repo, worktrees_dir, live)

    def delete_branch(self, repository_path: str, branch: str) -> bool:
        """Delete one branch if it exists."""
        with self._lock:
            try:
                repo = self._open(repository_path).repo
            except RepositoryError:
                return False
            return remove_branch(repo, branch_ref(branch))

    def delete_branches(
        self, repository_path: str, prefix: str, locked: list[str] | None = None
    ) -> list[str]:
        """Delete every branch whose name starts with ``prefix`` (a ``…/`` namespace).
        A branch whose ref is locked raises ``FileLocked``; with ``locked``, its lock
        file is added there instead and the others are deleted."""
        if not prefix.endswith("/"):
            raise ValueError(f"{prefix!r} is not a namespace (it must end in '/')")
        with self._lock:
            try:
                repo = self._open(repository_path).repo
            except RepositoryError:
                return []
            base = Ref(b"refs/heads/" + prefix.encode())
            deleted = []
            for name in sorted(repo.refs.keys(base=base)):
                ref = Ref(base + name)
                try:
                    removed = repo.refs.remove_if_equals(ref, None)
                except FileLocked as held:
                    if locked is None:
                        raise
                    locked.append(os.fsdecode(held.lockfilename))
                    continue
                if removed:
                    deleted.append(ref.decode().removeprefix("refs/heads/"))
            return deleted

    # --- merges -----------------------------------------------------------------

    def merge(
        self,
        repository_path: str,
        integration_branch: str,
        *,
        since_sha: str,
        mission_id: str,
        task_id: str,
        attempt: int,
        commit_sha: str,
        now: datetime,
        verify: Verifier | None = None,
        withhold: Callable[[], str | None] | None = None,
    ) -> MergeOutcome:
        """Merge a task's commit into the integration branch, once (see ``merge``)."""
        with self._lock:
            return merge_task(
                self._open(repository_path),
                self._identity,
                integration_branch,
                since_sha=since_sha,
                mission_id=mission_id,
                task_id=task_id,
                attempt=attempt,
                commit_sha=commit_sha,
                now=now,
                verify=verify,
                withhold=withhold,
                limits=self._commit_limits,
            )
