"""The ports the broker's handlers work through.

``Repositories`` is every repository write a handler asks for: integration branches,
task workspaces, merges and the clean-up after them. ``adapters.git.GitRepositories`` is
the real adapter (dulwich, on disk); ``aether_git_broker.testing.InMemoryRepositories``
the fake for handler tests. ``tests/test_repositories_contract.py`` runs the same
assertions against both; a behaviour it does not check is not promised by the fake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

from dulwich.objects import ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.repository import Handle, Verifier
from aether_git_broker.domain import MergeOutcome, RepositoryOutcome, WorkspaceOutcome


class ScratchWorktrees(Protocol):
    """Detached checkouts for verifying a merge, reached only through ``merge``'s
    ``verify`` callback, with the handle the adapter passed it."""

    def scratch_worktree(self, handle: Handle, path: str, commit: ObjectID) -> None:
        """A detached worktree of ``commit`` at ``path``."""
        ...

    def release_worktree(self, repo: Repo, path: str) -> bool:
        """Done with a scratch worktree (pooled or removed)."""
        ...


class Repositories(ScratchWorktrees, Protocol):
    """Every repository write the handlers make. Each one is level-triggered: it looks
    before it writes, so repeating it after a crash or a redelivery is harmless."""

    def prepare_repository(
        self, repository: str, base_branch: str, integration_branch: str
    ) -> RepositoryOutcome:
        """Create the integration branch at the base branch's head unless it exists."""
        ...

    def prewarm(self, repository_path: str, commit_sha: str, count: int) -> bool:
        """Start preparing worktrees of ``commit_sha`` for the first tasks (optional)."""
        ...

    def prepare_workspace(
        self,
        repository_path: str,
        integration_branch: str,
        branch: str,
        worktree_path: str,
        resolve_sha: str | None = None,
    ) -> WorkspaceOutcome:
        """The task branch at the integration head and a worktree on it (reused if any)."""
        ...

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
        """Merge a task's commit into the integration branch, once."""
        ...

    def recycle_worktree(self, repository_path: str, worktree_path: str) -> bool:
        """Done with a task's worktree: pooled for the next task, or removed."""
        ...

    def remove_worktrees_under(self, repository_path: str, directory: str) -> list[str]:
        """Remove every worktree of the repository inside ``directory``."""
        ...

    def prune_worktrees(
        self, repository_path: str, worktrees_dir: str, live: frozenset[str]
    ) -> list[str]:
        """Drop registrations of broker worktrees that are gone."""
        ...

    def delete_branch(self, repository_path: str, branch: str) -> bool:
        """Delete one branch if it exists."""
        ...

    def delete_branches(
        self, repository_path: str, prefix: str, locked: list[str] | None = None
    ) -> list[str]:
        """Delete every branch in the ``prefix`` namespace (ending in ``/``); one whose
        ref is locked raises ``FileLocked``, or with ``locked`` is left and its lock file
        added there."""
        ...

    def drop_pool(self, repository_path: str) -> bool:
        """Delete the repository's pooled worktrees."""
        ...

    def drop_idle_pools(self, active_repositories: Iterable[str]) -> list[str]:
        """Delete the pools of every repository not in ``active_repositories``."""
        ...

    def clear_pool_leftovers(self) -> list[str]:
        """Remove pool entries cut short by a stop or a crash."""
        ...

    def clear_locks(self, repository_path: str, shared_prefixes: tuple[str, ...] = ()) -> list[str]:
        """Remove lock files a killed writer left (shared ones only when stale)."""
        ...
