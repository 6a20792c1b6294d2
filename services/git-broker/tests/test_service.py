"""The git broker as a service: real NATS JetStream, real repositories, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY

from aether_events import (
    AgentCompleted,
    BranchMerged,
    BranchPushed,
    EventPublisher,
    MissionCompleted,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    new_event_id,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_runtime import RuntimeSettings, Service
from tests.eventlog import EventLog


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
    service = bootstrap(settings).service
    try:  # started inside: a service that fails half-way through its start is stopped too
        await start_service(service)
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


async def watch(nc: NatsClient, mission_id: str) -> EventLog:
    """The mission's events as they are stored; ``next(cls)`` reads them in order."""
    return await EventLog(nc, mission_id, declare=True).start()


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
    assert len(events.of(BranchMerged)) == 1
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
    service = bootstrap(settings).service
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

    restarted = bootstrap(settings).service
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
    assert len(events.of(BranchMerged)) == 2
    assert git(repo, "rev-parse", prepared.integration_branch) == head
    await events.stop()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_restarted_broker_removes_leftovers_before_its_first_delivery(
    nc: NatsClient,
    settings: GitBrokerSettings,
    publisher: EventPublisher,
    repo: Path,
    worktrees_dir: Path,
    git: Callable[..., str],
) -> None:
    mission = "m-sweep"
    events = await watch(nc, mission)
    service = bootstrap(settings).service
    await start_service(service)
    try:
        await publisher.publish(
            MissionRequested(**meta(mission), repository=str(repo), requirement="x")
        )
        prepared = await events.next(RepositoryPrepared)
        for task in ("t1", "t2"):
            await publisher.publish(task_ready(mission, task))
            await events.next(WorkspaceReady)
    finally:
        await stop_service(service)
    # While it was down: a crash mid-checkout, a worktree whose mission is unknown to the
    # stream, and one of a task merged by hand (its BranchMerged is in the stream).
    (worktrees_dir / mission / "t9-a1.partial" / "src").mkdir(parents=True)
    git(
        repo,
        "worktree",
        "add",
        "-q",
        "-b",
        "aether-tasks/m-gone/t1/a1",
        str(worktrees_dir / "m-gone" / "t1-a1"),
        "main",
    )
    t1 = git(repo, "rev-parse", f"aether-tasks/{mission}/t1/a1")
    await publisher.publish(
        BranchMerged(
            **meta(mission),
            task_id="t1",
            attempt=1,
            merge_sha=t1,
            integration_branch=prepared.integration_branch,
        )
    )

    restarted = bootstrap(settings).service
    await start_service(restarted)
    try:
        # start() returns once the projection is rebuilt and the sweep is done. (The
        # pool keeps worktrees of the repository, which a running mission still uses.)
        assert sorted(p.name for p in worktrees_dir.iterdir()) == [".pool", mission]
        assert [p.name for p in (worktrees_dir / mission).iterdir()] == ["t2-a1"]
        assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2
        assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""
        assert git(repo, "branch", "--list", f"aether-tasks/{mission}/t1/a1") == ""
        assert git(repo, "branch", "--list", f"aether-tasks/{mission}/t2/a1") != ""
    finally:
        await stop_service(restarted)
    await events.stop()


async def test_delivery_pushes_once_across_a_restart(
    nc: NatsClient,
    settings: GitBrokerSettings,
    publisher: EventPublisher,
    repo: Path,
    tmp_path: Path,
    git: Callable[..., str],
    commit: Callable[..., str],
) -> None:
    remote = tmp_path / "delivered.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    pushing = msgspec.structs.replace(settings, push_remote=str(remote))
    mission = "m-push"
    events = await watch(nc, mission)
    pushed_before = sample("aether_pushes_total", result="pushed")
    already_before = sample("aether_pushes_total", result="already_pushed")

    async def completed_and_handled(service_settings: GitBrokerSettings, marker: str) -> None:
        await publisher.publish(
            MissionCompleted(
                **meta(mission), final_sha=sha, integration_branch=branch, tasks_merged=1
            )
        )
        # One event at a time, in order: the marker's answer means the completion is done.
        answered = await watch(nc, marker)
        await publisher.publish(
            MissionRequested(**meta(marker), repository=str(repo), requirement="x")
        )
        await answered.next(RepositoryPrepared)
        await answered.stop()

    service = bootstrap(pushing).service
    await start_service(service)
    try:
        await publisher.publish(
            MissionRequested(**meta(mission), repository=str(repo), requirement="x")
        )
        prepared = await events.next(RepositoryPrepared)
        branch = prepared.integration_branch
        assert prepared.delivery_remote == str(remote)  # announced for watchers
        await publisher.publish(task_ready(mission, "t1"))
        workspace = await events.next(WorkspaceReady)
        sha = commit(workspace.worktree_path, {"shipped.py": "1\n"}, "ship it")
        await publisher.publish(
            AgentCompleted(**meta(mission), task_id="t1", attempt=1, commit_sha=sha, branch="")
        )
        await events.next(BranchMerged)
        await completed_and_handled(pushing, "m-marker1")
    finally:
        await stop_service(service)
    assert git(remote, "rev-parse", branch) == sha

    # Restarted, the broker is told again that the mission completed (a re-sent report):
    # the stream records the delivery, so nothing is pushed (nor looked at again; a
    # delivery left unrecorded by a crash is found on the remote: test_handlers).
    restarted = bootstrap(pushing).service
    await start_service(restarted)
    try:
        await completed_and_handled(pushing, "m-marker2")
    finally:
        await stop_service(restarted)
    assert sample("aether_pushes_total", result="pushed") - pushed_before == 1
    assert sample("aether_pushes_total", result="already_pushed") - already_before == 0
    assert git(remote, "rev-parse", branch) == sha
    # The delivery is on the stream once, after the completion, for the gateway to show.
    (delivered,) = events.of(BranchPushed)
    assert (delivered.integration_branch, delivered.sha, delivered.remote) == (
        branch,
        sha,
        str(remote),
    )
    assert not delivered.already_there
    await events.stop()
