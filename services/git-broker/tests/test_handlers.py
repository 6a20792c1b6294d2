"""Handlers with a recording publisher: crash windows, failures and keep-alives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aether_events import (
    AgentCompleted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionFailed,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    new_event_id,
)
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.domain import BrokerState, MergeOutcome, evolve
from aether_git_broker.handlers import Handlers
from aether_git_broker.naming import Naming
from aether_runtime import Delivery, Projection

NOW = datetime(2026, 1, 1, tzinfo=UTC)
M = "m-h"


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[Event] = []
        self._fail = fail_first

    async def publish(self, event: Event) -> None:
        if self._fail:
            self._fail -= 1
            raise ConnectionError("the stream is unreachable")
        self.events.append(event)

    def of(self, cls: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, cls)]


class RecordingDelivery(Delivery):
    def __init__(self) -> None:
        super().__init__(sequence=1, num_delivered=1, pending=0)
        self.beats = threading.Event()

    async def in_progress(self) -> None:
        self.beats.set()


def meta() -> dict[str, object]:
    return {"event_id": new_event_id(), "mission_id": M, "occurred_at": NOW, "correlation_id": "c"}


def handlers_for(
    worktrees_dir: Path, publisher: Recorder, git: GitRepositories | None = None
) -> Handlers:
    return Handlers(
        Projection(BrokerState(), evolve),
        git or GitRepositories(),
        Naming(branch_prefix="aether", worktrees_dir=str(worktrees_dir)),
        publisher=lambda: publisher,
        clock=lambda: NOW,
        keepalive_seconds=0.01,
    )


async def prepare(handlers: Handlers, recorder: Recorder, repo: Path) -> RepositoryPrepared:
    await handlers.handle(
        MissionRequested(**meta(), repository=str(repo), requirement="r"), RecordingDelivery()
    )
    prepared = recorder.of(RepositoryPrepared)[-1]
    assert isinstance(prepared, RepositoryPrepared)
    return prepared


def ready(task_id: str) -> TaskReady:
    return TaskReady(**meta(), task=PlannedTask(id=task_id, title=task_id), attempt=1, model="m")


async def test_a_crash_before_publishing_reuses_the_worktree_and_the_event_id(
    repo: Path, worktrees_dir: Path
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    event = ready("t1")
    recorder._fail = 1
    with pytest.raises(ConnectionError):
        await handlers.handle(event, RecordingDelivery())
    assert (worktrees_dir / M / "t1-a1" / ".git").exists()
    await handlers.handle(event, RecordingDelivery())
    (workspace,) = recorder.of(WorkspaceReady)
    assert isinstance(workspace, WorkspaceReady)
    assert workspace.worktree_path == str(worktrees_dir / M / "t1-a1")
    # A restarted broker replays the stream, then sees the event again: nothing new.
    again = handlers_for(worktrees_dir, recorder)
    for stored in [*recorder.events]:
        again.projection.apply(stored)
    await again.handle(event, RecordingDelivery())
    assert len(recorder.of(WorkspaceReady)) == 1


async def test_a_crash_after_merging_republishes_the_same_merge(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    sha1 = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    sha2 = commit(worktrees_dir / M / "t2-a1", {"two.py": "2\n"}, "two")
    await handlers.handle(
        AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha=sha1, branch=""),
        RecordingDelivery(),
    )
    done = AgentCompleted(**meta(), task_id="t2", attempt=1, commit_sha=sha2, branch="")
    recorder._fail = 1
    with pytest.raises(ConnectionError):
        await handlers.handle(done, RecordingDelivery())
    head = git(repo, "rev-parse", f"aether/{M}")
    await handlers.handle(done, RecordingDelivery())
    merged = recorder.of(BranchMerged)
    assert [m.merge_sha for m in merged if isinstance(m, BranchMerged)] == [sha1, head]
    assert git(repo, "rev-parse", f"aether/{M}") == head
    assert git(repo, "rev-list", "--merges", "--count", head) == "1"


async def test_a_conflict_is_published_and_the_worktree_kept(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    sha1 = commit(worktrees_dir / M / "t1-a1", {"README.md": "one\n"}, "one")
    sha2 = commit(worktrees_dir / M / "t2-a1", {"README.md": "two\n"}, "two")
    for task, sha in (("t1", sha1), ("t2", sha2)):
        await handlers.handle(
            AgentCompleted(**meta(), task_id=task, attempt=1, commit_sha=sha, branch=""),
            RecordingDelivery(),
        )
    (conflict,) = recorder.of(MergeConflicted)
    assert isinstance(conflict, MergeConflicted)
    assert (conflict.task_id, conflict.files, conflict.integration_sha) == (
        "t2",
        ["README.md"],
        sha1,
    )
    assert (worktrees_dir / M / "t2-a1").exists()
    assert not (worktrees_dir / M / "t1-a1").exists()
    assert git(repo, "rev-parse", prepared.integration_branch) == sha1


async def test_a_deleted_integration_branch_fails_the_mission(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    git(repo, "branch", "-D", prepared.integration_branch)
    await handlers.handle(ready("t1"), RecordingDelivery())
    (failed,) = recorder.of(MissionFailed)
    assert isinstance(failed, MissionFailed)
    assert f"integration branch '{prepared.integration_branch}' does not exist" in failed.reason


async def test_slow_repository_work_keeps_its_message_alive(
    repo: Path, worktrees_dir: Path
) -> None:
    class SlowGit(GitRepositories):
        def __init__(self, delivery: RecordingDelivery) -> None:
            super().__init__()
            self._delivery = delivery

        def merge(self, *args: object, **kwargs: object) -> MergeOutcome:
            # Finishes only once the handler has told JetStream it is still working.
            assert self._delivery.beats.wait(timeout=10)
            return MergeOutcome(kind="fast_forward", sha="f" * 40, fast_forward=True)

    delivery = RecordingDelivery()
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder, SlowGit(delivery))
    await prepare(handlers, recorder, repo)
    await handlers.handle(
        AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha="f" * 40, branch=""),
        delivery,
    )
    assert delivery.beats.is_set()
    assert len(recorder.of(BranchMerged)) == 1
