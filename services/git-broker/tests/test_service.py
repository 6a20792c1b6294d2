"""The git broker as a service: real NATS JetStream, real repositories, in-process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from aether_events import (
    AgentCompleted,
    BranchMerged,
    Event,
    EventPublisher,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    decode,
    ensure_streams,
    mission_subject,
    new_event_id,
)
from aether_git_broker import GitBrokerSettings, build_service
from aether_runtime import RuntimeSettings, Service

E = TypeVar("E", bound=Event)
TIMEOUT = 15.0


class MissionWatch:
    """Reads one mission's events from the stream, in order, as they are stored."""

    def __init__(self, js: JetStreamContext, mission_id: str) -> None:
        self._js = js
        self._mission_id = mission_id
        self.seen: list[Event] = []
        self._cursor = 0

    async def start(self) -> None:
        self._sub = await self._js.subscribe(
            mission_subject(self._mission_id), ordered_consumer=True
        )

    async def stop(self) -> None:
        await self._sub.unsubscribe()

    async def next(self, cls: type[E], timeout: float = TIMEOUT) -> E:
        """The next stored event of type ``cls``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.seen):
                event = self.seen[self._cursor]
                self._cursor += 1
                if isinstance(event, cls):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {cls.__name__} within {timeout}s; saw {self.seen}")
            msg = await self._sub.next_msg(timeout=remaining)
            self.seen.append(decode(msg.data))

    def all(self, cls: type[E]) -> list[E]:
        return [event for event in self.seen if isinstance(event, cls)]


async def start_service(service: Service) -> None:
    start = getattr(service, "start", None)
    if start is not None:
        await start()
        return
    # The runtime shell's lifecycle as FastStream's ASGI app runs it.
    await service._start()
    await service.broker.start()
    await service._after_start()


async def stop_service(service: Service) -> None:
    stop = getattr(service, "stop", None)
    if stop is not None:
        await stop()
        return
    await service.broker.stop()
    await service._stop()


@pytest.fixture
def settings(nats_url: str, worktrees_dir: Path) -> GitBrokerSettings:
    # A short ack wait: a message fetched by a broker as it stops reaches the next one
    # after this long (handlers keep messages alive while they work, so it is safe).
    return GitBrokerSettings(
        runtime=RuntimeSettings(nats_url=nats_url, port=0),
        worktrees_dir=worktrees_dir,
        ack_wait_seconds=2.0,
    )


@pytest.fixture
async def broker(nc: NatsClient, settings: GitBrokerSettings) -> AsyncIterator[Service]:
    service = build_service(settings)
    await start_service(service)
    try:
        yield service
    finally:
        await stop_service(service)


@pytest.fixture
def publisher(nc: NatsClient) -> EventPublisher:
    return EventPublisher(nc.jetstream())


def now() -> datetime:
    return datetime.now(UTC)


def meta(mission_id: str, correlation_id: str = "corr-1") -> dict[str, object]:
    return {
        "event_id": new_event_id(),
        "mission_id": mission_id,
        "occurred_at": now(),
        "correlation_id": correlation_id,
    }


def task_ready(mission_id: str, task_id: str, attempt: int = 1) -> TaskReady:
    return TaskReady(
        **meta(mission_id),
        task=PlannedTask(id=task_id, title=f"task {task_id}", files=["feature.py"]),
        attempt=attempt,
        model="claude-sonnet",
        requirement="add a feature",
        max_cost_usd=2.0,
        context="",
    )


async def watch(nc: NatsClient, mission_id: str) -> MissionWatch:
    await ensure_streams(nc.jetstream())
    mission_watch = MissionWatch(nc.jetstream(), mission_id)
    await mission_watch.start()
    return mission_watch


async def test_a_mission_gets_a_branch_a_workspace_and_one_merge(
    broker: Service,
    nc: NatsClient,
    publisher: EventPublisher,
    repo: Path,
    worktrees_dir: Path,
    git: Callable[..., str],
    commit: Callable[..., str],
) -> None:
    mission = "m-flow"
    events = await watch(nc, mission)
    await publisher.publish(
        MissionRequested(**meta(mission), repository=str(repo), requirement="add a feature")
    )
    prepared = await events.next(RepositoryPrepared)
    main = git(repo, "rev-parse", "main")
    assert prepared.integration_branch == f"aether/{mission}"
    assert prepared.base_sha == main
    assert prepared.repository_path == str(repo.resolve())
    assert prepared.file_count == 3
    assert git(repo, "rev-parse", prepared.integration_branch) == main

    ready = task_ready(mission, "t1")
    await publisher.publish(ready)
    workspace = await events.next(WorkspaceReady)
    assert workspace.causation_id == ready.event_id
    assert (workspace.task, workspace.attempt, workspace.model) == (ready.task, 1, ready.model)
    assert workspace.branch == f"aether-tasks/{mission}/t1/a1"
    assert workspace.worktree_path == str(worktrees_dir / mission / "t1-a1")
    assert workspace.base_sha == main
    assert git(workspace.worktree_path, "status", "--porcelain") == ""

    sha = commit(workspace.worktree_path, {"feature.py": "FEATURE = True\n"}, "add feature")
    done = AgentCompleted(
        **meta(mission), task_id="t1", attempt=1, commit_sha=sha, branch=workspace.branch
    )
    await publisher.publish(done)
    merged = await events.next(BranchMerged)
    assert (merged.task_id, merged.attempt, merged.merge_sha) == ("t1", 1, sha)
    assert merged.fast_forward
    assert merged.files_changed == ["feature.py"]
    assert git(repo, "rev-parse", prepared.integration_branch) == sha
    assert not Path(workspace.worktree_path).exists()
    assert workspace.worktree_path not in git(repo, "worktree", "list", "--porcelain")

    # The same completion again (a re-sent report, so a new event id): nothing happens.
    # A later task's workspace proves the broker has handled it, since it goes in order.
    await publisher.publish(
        AgentCompleted(**meta(mission), task_id="t1", attempt=1, commit_sha=sha, branch="x")
    )
    await publisher.publish(task_ready(mission, "t2"))
    second = await events.next(WorkspaceReady)
    assert second.task.id == "t2"
    assert second.base_sha == sha
    assert len(events.all(BranchMerged)) == 1
    assert git(repo, "rev-parse", prepared.integration_branch) == sha

    await publisher.publish(
        MissionCompleted(
            **meta(mission),
            final_sha=sha,
            integration_branch=merged.integration_branch,
            tasks_merged=1,
        )
    )
    # Cleaning up publishes nothing; another mission's answer shows it was done.
    other = await watch(nc, "m-marker")
    await publisher.publish(
        MissionRequested(**meta("m-marker"), repository=str(repo), requirement="x")
    )
    await other.next(RepositoryPrepared)
    assert not (worktrees_dir / mission).exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    await events.stop()
    await other.stop()


async def test_a_restarted_broker_remembers_what_it_merged(
    nc: NatsClient,
    settings: GitBrokerSettings,
    publisher: EventPublisher,
    repo: Path,
    git: Callable[..., str],
    commit: Callable[..., str],
) -> None:
    mission = "m-restart"
    events = await watch(nc, mission)
    service = build_service(settings)
    await start_service(service)
    try:
        await publisher.publish(
            MissionRequested(**meta(mission), repository=str(repo), requirement="x")
        )
        prepared = await events.next(RepositoryPrepared)
        await publisher.publish(task_ready(mission, "t1"))
        workspace = await events.next(WorkspaceReady)
        # A second task from the same base, so merging it makes a merge commit.
        await publisher.publish(task_ready(mission, "t2"))
        workspace2 = await events.next(WorkspaceReady)
        sha1 = commit(workspace.worktree_path, {"one.py": "1\n"}, "one")
        sha2 = commit(workspace2.worktree_path, {"two.py": "2\n"}, "two")
        for task_id, sha in (("t1", sha1), ("t2", sha2)):
            await publisher.publish(
                AgentCompleted(
                    **meta(mission), task_id=task_id, attempt=1, commit_sha=sha, branch=""
                )
            )
            await events.next(BranchMerged)
    finally:
        await stop_service(service)
    head = git(repo, "rev-parse", prepared.integration_branch)
    assert git(repo, "rev-list", "--merges", "--count", head) == "1"

    restarted = build_service(settings)
    await start_service(restarted)
    try:
        await publisher.publish(
            AgentCompleted(**meta(mission), task_id="t2", attempt=1, commit_sha=sha2, branch="")
        )
        await publisher.publish(task_ready(mission, "t3"))
        third = await events.next(WorkspaceReady)
        assert third.base_sha == head
    finally:
        await stop_service(restarted)
    assert len(events.all(BranchMerged)) == 2
    assert git(repo, "rev-parse", prepared.integration_branch) == head
    await events.stop()


@pytest.mark.parametrize(
    ("repository", "reason"),
    [
        ("https://example.com/org/repo.git", "cloning remote repositories is not supported yet"),
        ("{tmp}/not-a-repo", "is not a git repository"),
        ("{tmp}/missing", "does not exist"),
    ],
)
async def test_an_unusable_repository_fails_the_mission(
    broker: Service,
    nc: NatsClient,
    publisher: EventPublisher,
    tmp_path: Path,
    repository: str,
    reason: str,
) -> None:
    (tmp_path / "not-a-repo").mkdir()
    mission = "m-bad"
    events = await watch(nc, mission)
    request = MissionRequested(
        **meta(mission), repository=repository.format(tmp=tmp_path), requirement="x"
    )
    await publisher.publish(request)
    failed = await events.next(MissionFailed)
    assert reason in failed.reason
    assert failed.causation_id == request.event_id
    assert events.all(RepositoryPrepared) == []
    await events.stop()


async def test_a_missing_base_branch_fails_the_mission(
    broker: Service, nc: NatsClient, publisher: EventPublisher, repo: Path
) -> None:
    mission = "m-nobase"
    events = await watch(nc, mission)
    await publisher.publish(
        MissionRequested(
            **meta(mission), repository=str(repo), requirement="x", base_branch="develop"
        )
    )
    failed = await events.next(MissionFailed)
    assert "base branch 'develop' does not exist" in failed.reason
    await events.stop()
