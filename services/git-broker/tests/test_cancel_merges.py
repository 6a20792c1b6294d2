"""A cancelled mission gets no further merge: real NATS JetStream, the real broker,
real repositories and a real sandboxed verification command.

The broker takes a mission's events in order, one at a time; these tests hold it busy
(a verification command that waits for the test's word) while a result and the
mission's cancel are stored, and check that nothing lands and the stream says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY

from aether_events import (
    AgentCompleted,
    BranchMerged,
    EventPublisher,
    MergeWithheld,
    MissionCancelled,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    new_event_id,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.app import GitBroker
from aether_runtime import RuntimeSettings
from tests.eventlog import EventLog

# Waits in its scratch worktree (the one place it may write, which the test can see)
# until the test writes ``release`` there, saying first that it has started.
HOLD = "touch started; until [ -e release ]; do sleep 0.02; done"
# Far beyond the tests' own waits: a verification that ends did so because it was stopped.
VERIFY_TIMEOUT = 120.0


@pytest.fixture
def settings(nats_url: str, worktrees_dir: Path) -> GitBrokerSettings:
    return GitBrokerSettings(
        runtime=RuntimeSettings(nats_url=nats_url, port=0),
        worktrees_dir=worktrees_dir,
        ack_wait_seconds=2.0,
        verify_timeout_seconds=VERIFY_TIMEOUT,
    )


@pytest.fixture
async def broker(nc: NatsClient, settings: GitBrokerSettings) -> AsyncIterator[GitBroker]:
    made = bootstrap(settings)
    try:
        await made.service.start()
        yield made
    finally:
        await made.service.stop()


@pytest.fixture
def publisher(nc: NatsClient) -> EventPublisher:
    return EventPublisher(nc.jetstream())


def meta(mission_id: str) -> dict[str, object]:
    return {
        "event_id": new_event_id(),
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": f"corr-{mission_id}",
    }


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Return once ``check()`` holds (a file a command writes, a cancel heard: nothing
    the stream records), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


async def start_task(
    publisher: EventPublisher,
    events: EventLog,
    mission_id: str,
    repo: Path,
    commit: Callable[..., str],
    verify: str | None = None,
) -> tuple[RepositoryPrepared, AgentCompleted]:
    """A mission with one task whose agent committed: its result, not yet published."""
    await publisher.publish(
        MissionRequested(
            **meta(mission_id), repository=str(repo), requirement="x", verify_command=verify
        )
    )
    prepared = await events.next(RepositoryPrepared)
    await publisher.publish(
        TaskReady(
            **meta(mission_id),
            task=PlannedTask(id="t1", title="t1"),
            attempt=1,
            model="m",
            requirement="x",
            max_cost_usd=1.0,
            context="",
        )
    )
    workspace = await events.next(WorkspaceReady)
    sha = commit(workspace.worktree_path, {f"{mission_id}.py": "1\n"}, f"work of {mission_id}")
    result = AgentCompleted(
        **meta(mission_id), task_id="t1", attempt=1, commit_sha=sha, branch=workspace.branch
    )
    return prepared, result


async def test_a_result_stored_before_the_cancel_does_not_land_behind_a_busy_broker(
    broker: GitBroker,
    nc: NatsClient,
    publisher: EventPublisher,
    repo: Path,
    worktrees_dir: Path,
    git: Callable[..., str],
    commit: Callable[..., str],
) -> None:
    """Another mission's verification holds the broker while a result, then its
    mission's cancel, are stored: once free, the broker does not merge the result."""
    busy, cancelled = "m-busy", "m-cancelled"
    busy_events = await EventLog(nc, busy, declare=True).start()
    events = await EventLog(nc, cancelled, declare=True).start()
    _, busy_result = await start_task(publisher, busy_events, busy, repo, commit, verify=HOLD)
    prepared, result = await start_task(publisher, events, cancelled, repo, commit)
    head = git(repo, "rev-parse", prepared.integration_branch)

    await publisher.publish(busy_result)
    scratch = worktrees_dir / ".verify" / f"{busy}-t1-a1"
    await until((scratch / "started").exists, "the busy mission's verification started")
    await publisher.publish(result)
    await publisher.publish(MissionCancelled(**meta(cancelled), reason="changed my mind"))
    # Heard as it is stored, while the ordered consumer is still busy.
    await until(
        lambda: cancelled in getattr(broker.handlers, "cancels", {}),
        "the broker heard the cancel",
    )
    (scratch / "release").write_text("")

    merged = await busy_events.next(BranchMerged)
    assert merged.task_id == "t1"
    await events.wait_for(lambda log: bool(log.of(MergeWithheld) or log.of(BranchMerged)))
    assert not events.of(BranchMerged), "a cancelled mission's result was merged"
    (withheld,) = events.of(MergeWithheld)
    assert withheld.causation_id == result.event_id
    assert (withheld.task_id, withheld.attempt, withheld.commit_sha) == ("t1", 1, result.commit_sha)
    assert withheld.integration_sha == head
    assert withheld.reason == "the mission was cancelled: changed my mind"
    assert git(repo, "rev-parse", prepared.integration_branch) == head
    await busy_events.stop()
    await events.stop()


def verifications(result: str) -> float:
    return REGISTRY.get_sample_value("aether_verifications_total", {"result": result}) or 0.0


async def test_a_cancel_heard_during_verification_stops_it_and_nothing_lands(
    nc: NatsClient,
    settings: GitBrokerSettings,
    publisher: EventPublisher,
    repo: Path,
    worktrees_dir: Path,
    git: Callable[..., str],
    commit: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mission's own merge is being verified when it is cancelled: the command is
    killed (long before its time limit), counted as stopped (not failed) with what it
    printed until then logged and carried on the ``MergeWithheld``, the branch stays, and
    a restarted broker that gets the same result again neither merges nor records it
    twice."""
    caplog.set_level(logging.INFO, logger="aether.git_broker.verify")
    counted = {result: verifications(result) for result in ("stopped", "failed")}
    mission = "m-verifying"
    events = await EventLog(nc, mission, declare=True).start()
    broker = bootstrap(settings)
    await broker.service.start()
    try:
        prepared, result = await start_task(
            publisher, events, mission, repo, commit, verify=f"echo 'checked 3 of 5'; {HOLD}"
        )
        head = git(repo, "rev-parse", prepared.integration_branch)
        await publisher.publish(result)
        scratch = worktrees_dir / ".verify" / f"{mission}-t1-a1"
        await until((scratch / "started").exists, "the verification started")
        began = time.monotonic()
        await publisher.publish(MissionCancelled(**meta(mission), requested_by="alice"))
        withheld = await events.next(MergeWithheld, timeout=30.0)
        stopped_after = time.monotonic() - began
    finally:
        await broker.service.stop()
    assert stopped_after < VERIFY_TIMEOUT / 4
    assert verifications("stopped") == counted["stopped"] + 1
    assert verifications("failed") == counted["failed"]
    [stopped] = [r for r in caplog.records if r.getMessage() == "verification stopped"]
    assert "checked 3 of 5" in stopped.output  # type: ignore[attr-defined]
    assert withheld.reason == "the mission was cancelled by alice"
    # What it printed until then travels with the event, as a failed one's output does.
    assert withheld.verification.startswith("verification stopped: `echo 'checked 3 of 5';")
    assert "--- output ---\n" in withheld.verification
    assert "checked 3 of 5" in withheld.verification
    assert withheld.integration_sha == head
    assert not events.of(BranchMerged)
    assert git(repo, "rev-parse", prepared.integration_branch) == head

    # A restart, the same result sent again (a runner's report repeated): nothing more.
    restarted = bootstrap(settings)
    await restarted.service.start()
    try:
        await publisher.publish(
            AgentCompleted(
                **meta(mission),
                task_id="t1",
                attempt=1,
                commit_sha=result.commit_sha,
                branch=result.branch,
            )
        )
        # The broker takes events in order: another mission's answer shows it got there.
        marker = await EventLog(nc, "m-marker", declare=True).start()
        await publisher.publish(
            MissionRequested(**meta("m-marker"), repository=str(repo), requirement="x")
        )
        await marker.next(RepositoryPrepared)
        await marker.stop()
    finally:
        await restarted.service.stop()
    assert len(events.of(MergeWithheld)) == 1
    assert not events.of(BranchMerged)
    assert git(repo, "rev-parse", prepared.integration_branch) == head
    await events.stop()
