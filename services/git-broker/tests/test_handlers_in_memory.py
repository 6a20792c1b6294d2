"""The broker's handlers on both fakes: in-memory repositories and the in-memory publisher,
each held to its real adapter by a contract test (``test_repositories_contract.py``,
``tests/contracts/test_publisher.py``). Nothing touches the disk or the network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dulwich.file import FileLocked

from aether_events import (
    AgentCompleted,
    BranchMerged,
    MergeConflicted,
    MissionCancelled,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    new_event_id,
)
from aether_events.testing import InMemoryPublisher
from aether_git_broker.domain import BrokerState, MergeOutcome, evolve
from aether_git_broker.handlers import Handlers
from aether_git_broker.naming import Naming
from aether_git_broker.testing import InMemoryRepositories
from aether_runtime import Delivery, Projection

NOW = datetime(2026, 1, 1, tzinfo=UTC)
M = "m-mem"


def meta() -> dict[str, object]:
    return {"event_id": new_event_id(), "mission_id": M, "occurred_at": NOW, "correlation_id": "c"}


def delivery() -> Delivery:
    return Delivery(sequence=1, num_delivered=1, pending=0)


class World:
    def __init__(self, tmp_path: Path, repos: InMemoryRepositories | None = None) -> None:
        self.repo = str(tmp_path / "repo")
        self.repos = repos or InMemoryRepositories()
        self.repos.add_repository(self.repo, {"README.md": "# demo\n"})
        self.published = InMemoryPublisher()
        self.worktrees = tmp_path / "worktrees"
        self.handlers = Handlers(
            Projection(BrokerState(), evolve),
            self.repos,
            Naming(branch_prefix="aether", worktrees_dir=str(self.worktrees)),
            publisher=lambda: self.published,
            clock=lambda: NOW,
        )

    async def prepare(self) -> RepositoryPrepared:
        request = MissionRequested(
            **meta(), repository=self.repo, requirement="r", base_branch="main"
        )
        await self.handlers.handle(request, delivery())
        (prepared,) = self.published.of(RepositoryPrepared)
        return prepared

    async def ready(self, task_id: str) -> WorkspaceReady:
        task = PlannedTask(id=task_id, title=task_id)
        await self.handlers.handle(TaskReady(**meta(), task=task, attempt=1, model="m"), delivery())
        return self.published.of(WorkspaceReady)[-1]

    async def done(self, task_id: str, sha: str) -> None:
        completed = AgentCompleted(**meta(), task_id=task_id, attempt=1, commit_sha=sha, branch="")
        await self.handlers.handle(completed, delivery())


async def test_two_tasks_merge_and_a_third_on_the_same_line_conflicts(tmp_path: Path) -> None:
    world = World(tmp_path)
    prepared = await world.prepare()
    one, two, three = [await world.ready(task) for task in ("t1", "t2", "t3")]
    assert {w.base_sha for w in (one, two, three)} == {prepared.base_sha}
    sha1 = world.repos.commit_in(one.worktree_path, {"README.md": "# one\n", "one.py": "1\n"})
    sha2 = world.repos.commit_in(two.worktree_path, {"two.py": "2\n"})
    sha3 = world.repos.commit_in(three.worktree_path, {"README.md": "# three\n"})
    for task, sha in (("t1", sha1), ("t2", sha2), ("t3", sha3)):
        await world.done(task, sha)

    first, second = world.published.of(BranchMerged)
    assert (first.task_id, first.merge_sha) == ("t1", sha1)
    assert second.task_id == "t2"
    (conflict,) = world.published.of(MergeConflicted)
    assert (conflict.task_id, conflict.files, conflict.integration_sha) == (
        "t3",
        ["README.md"],
        second.merge_sha,
    )
    assert world.repos.files(world.repo, prepared.integration_branch) == {
        "README.md": "# one\n",
        "one.py": "1\n",
        "two.py": "2\n",
    }
    # The merged tasks' worktrees are recycled; the conflicted one is kept for its retry.
    assert set(world.repos.worktrees) == {three.worktree_path}


async def test_a_cancelled_mission_leaves_no_worktree_or_task_branch(tmp_path: Path) -> None:
    world = World(tmp_path)
    prepared = await world.prepare()
    workspaces = [await world.ready(task) for task in ("t1", "t2")]
    await world.handlers.handle(MissionCancelled(**meta(), reason="changed my mind"), delivery())
    assert world.repos.worktrees == {}
    for workspace in workspaces:
        assert not world.repos.has_branch(world.repo, workspace.branch)
    # The result branch stays: it is the mission's output, even a partial one.
    assert world.repos.has_branch(world.repo, prepared.integration_branch)


class LockedOnce(InMemoryRepositories):
    """Recycling meets a lock file once (its writer already gone); counts the merges."""

    def __init__(self) -> None:
        super().__init__()
        self.merges = 0
        self.locked = False

    def merge(self, *args: Any, **kwargs: Any) -> MergeOutcome:
        self.merges += 1
        return super().merge(*args, **kwargs)

    def recycle_worktree(self, repository_path: str, worktree_path: str) -> bool:
        if not self.locked:
            self.locked = True
            raise FileLocked(worktree_path, worktree_path + ".lock")
        return super().recycle_worktree(repository_path, worktree_path)


async def test_a_lock_in_the_way_of_recycling_neither_repeats_the_merge_nor_keeps_the_worktree(
    tmp_path: Path,
) -> None:
    """The merge and the worktree's recycling share one hand-off to a worker thread; a
    lock met by the recycling is waited out by recycling again, not by merging again
    (which would report the task as already merged, no longer a fast-forward)."""
    repos = LockedOnce()
    world = World(tmp_path, repos)
    await world.prepare()
    one = await world.ready("t1")
    sha = world.repos.commit_in(one.worktree_path, {"one.py": "1\n"})
    await world.done("t1", sha)

    (merged,) = world.published.of(BranchMerged)
    assert (merged.merge_sha, merged.fast_forward) == (sha, True)
    assert repos.merges == 1
    assert repos.locked
    assert repos.worktrees == {}
