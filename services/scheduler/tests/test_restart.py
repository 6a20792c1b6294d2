"""A scheduler killed with pending timers fires them after its restart, once, on time."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from aether.infra import free_port
from aether_events import (
    TELEMETRY_STREAM,
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    BranchMerged,
    Event,
    EventPublisher,
    MissionCompleted,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    TaskRetried,
    TaskTimedOut,
    TranscriptRecorded,
    WaveCompleted,
    WaveStarted,
    ensure_streams,
    type_subjects,
)
from aether_runtime import tls
from tests.eventlog import EventLog

M = "m-restart"


class Scheduler:
    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "PORT": str(self.port),
            "AETHER_RETRY_BASE_SECONDS": "6",
            "AETHER_HEARTBEAT_TIMEOUT_SECONDS": "8",
            # One scheduler at a time: a restart takes the lease its killed predecessor
            # held at once, rather than once it expires.
            "AETHER_ONE_PROCESS": "1",
        }
        env.pop("ANTHROPIC_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aether_scheduler"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient(verify=tls.shared()) as http:
            for _ in range(300):
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("scheduler not ready")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def scheduler(nats_url: str, nc: NatsClient) -> Iterator[Scheduler]:
    s = Scheduler(nats_url)
    yield s
    if s.process is not None and s.process.poll() is None:
        s.kill()


async def wait_for(nc: NatsClient, predicate: Any, timeout: float = 30.0) -> list[Event]:
    """The mission's stored events once ``predicate(events)`` holds."""
    async with EventLog(nc, M) as log:
        return await log.wait_for(lambda log: predicate(log.events), timeout)


def meta(n: int) -> dict[str, Any]:
    return {
        "event_id": f"restart-{n}",
        "mission_id": M,
        "occurred_at": datetime.now(UTC),
        "correlation_id": "restart-0",
    }


@pytest.mark.slow
async def test_pending_backoff_and_heartbeat_timers_fire_after_a_kill(
    scheduler: Scheduler, nc: NatsClient
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    tasks = [
        PlannedTask(id="a", title="A", files=["a"]),
        PlannedTask(id="b", title="B", files=["b"]),
    ]
    await publisher.publish_all(
        [
            MissionRequested(**meta(0), repository="/r", requirement="r"),
            RepositoryPrepared(
                **meta(1),
                repository_path="/r",
                base_branch="main",
                base_sha="s",
                integration_branch="aether/x",
            ),
            PlanProduced(**meta(2), version=1, tasks=tasks),
        ]
    )
    scheduler.start()
    await scheduler.ready()
    await publisher.publish(PlanApproved(**meta(3), version=1))
    await wait_for(nc, lambda ev: len([e for e in ev if isinstance(e, TaskReady)]) == 2)
    await publisher.publish(
        AgentStarted(**meta(4), task_id="b", attempt=1, runner_id="r", model="m")
    )
    await publisher.publish(
        AgentFailed(**meta(5), task_id="a", attempt=1, reason="flaky", retryable=True)
    )
    events = await wait_for(nc, lambda ev: any(isinstance(e, TaskRetried) for e in ev))
    retried = next(e for e in events if isinstance(e, TaskRetried))
    assert retried.not_before is not None and retried.not_before > datetime.now(UTC)

    scheduler.kill()  # with a backoff pending for a and a heartbeat deadline running for b
    scheduler.start()
    await scheduler.ready()

    events = await wait_for(
        nc,
        lambda ev: (
            any(isinstance(e, TaskReady) and e.attempt == 2 and e.task.id == "a" for e in ev)
            and any(isinstance(e, TaskTimedOut) for e in ev)
        ),
        timeout=40,
    )
    again = next(
        e for e in events if isinstance(e, TaskReady) and e.attempt == 2 and e.task.id == "a"
    )
    assert again.occurred_at >= retried.not_before - timedelta(milliseconds=50)
    timed_out = next(e for e in events if isinstance(e, TaskTimedOut))
    assert timed_out.task_id == "b" and timed_out.attempt == 1
    starts = [(e.task.id, e.attempt) for e in events if isinstance(e, TaskReady)]
    assert len(starts) == len(set(starts)), f"a task started twice: {starts}"


@pytest.mark.slow
async def test_a_restart_replays_the_beats_and_not_the_progress_into_the_liveness_clock(
    scheduler: Scheduler, nc: NatsClient
) -> None:
    """The telemetry a restart replays is what the live consumer folds: the runner's beats.
    A beat stored while the scheduler was down moves the task's deadline; progress, stored
    later still, does not (the timeout names the beat as the last sign of life)."""
    publisher, _ = await a_chain_started(scheduler, nc)
    await publisher.publish(
        AgentStarted(**meta(3), task_id="a", attempt=1, runner_id="r", model="m")
    )
    scheduler.kill()
    beat_at = datetime.now(UTC) + timedelta(seconds=1)
    await publisher.publish(
        AgentHeartbeat(**{**meta(4), "occurred_at": beat_at}, task_id="a", attempt=1, runner_id="r")
    )
    progress_at = beat_at + timedelta(seconds=2)
    await publisher.publish(
        AgentProgress(
            **{**meta(5), "occurred_at": progress_at}, task_id="a", attempt=1, runner_id="r"
        )
    )
    scheduler.start()
    await scheduler.ready()
    events = await wait_for(nc, lambda ev: any(isinstance(e, TaskTimedOut) for e in ev), timeout=40)
    timed_out = next(e for e in events if isinstance(e, TaskTimedOut))
    assert (timed_out.task_id, timed_out.attempt) == ("a", 1)
    assert timed_out.last_heartbeat_at == beat_at


async def publish_a_chain_of_two(publisher: EventPublisher) -> None:
    """A mission, auto-approved, whose plan is task a, then b depending on it."""
    tasks = [
        PlannedTask(id="a", title="A", files=["a"]),
        PlannedTask(id="b", title="B", files=["b"], depends_on=["a"]),
    ]
    await publisher.publish_all(
        [
            MissionRequested(**meta(0), repository="/r", requirement="r", auto_approve=True),
            RepositoryPrepared(
                **meta(1),
                repository_path="/r",
                base_branch="main",
                base_sha="s",
                integration_branch="aether/x",
            ),
            PlanProduced(**meta(2), version=1, tasks=tasks),
        ]
    )


async def run_to_merge(publisher: EventPublisher, task_id: str, first: int) -> None:
    """Task ``task_id``'s first attempt started, completed and merged (events numbered from
    ``first``)."""
    await publisher.publish_all(
        [
            AgentStarted(**meta(first), task_id=task_id, attempt=1, runner_id="r", model="m"),
            AgentCompleted(
                **meta(first + 1),
                task_id=task_id,
                attempt=1,
                commit_sha=f"c-{task_id}",
                branch=f"t/{task_id}",
            ),
            BranchMerged(
                **meta(first + 2),
                task_id=task_id,
                attempt=1,
                merge_sha=f"m-{task_id}",
                integration_branch="aether/x",
            ),
        ]
    )


async def a_chain_started(
    scheduler: Scheduler, nc: NatsClient
) -> tuple[EventPublisher, list[Event]]:
    """A chain of two published before the scheduler first starts (its consumer is
    created after it replays them, so no delivery brings them), then started: the
    publisher and the events once the first task is ready."""
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await publish_a_chain_of_two(publisher)
    scheduler.start()
    await scheduler.ready()
    events = await wait_for(nc, lambda ev: any(isinstance(e, TaskReady) for e in ev))
    return publisher, events


async def test_a_plan_produced_before_the_scheduler_first_started_is_approved_and_started(
    scheduler: Scheduler, nc: NatsClient
) -> None:
    _, events = await a_chain_started(scheduler, nc)
    approvals = [e for e in events if isinstance(e, PlanApproved)]
    assert len(approvals) == 1 and approvals[0].automatic
    assert [e.task.id for e in events if isinstance(e, TaskReady)] == ["a"]


async def test_the_consumers_leave_out_its_own_events_and_transcripts_and_a_chain_moves_on(
    scheduler: Scheduler, nc: NatsClient
) -> None:
    """The scheduler applies what it publishes when the stream stores it, so its consumer
    does not deliver those types back; its telemetry consumer delivers heartbeats alone
    (progress and transcript entries say nothing about liveness that the runner's beats
    do not). A chain still moves on:
    the dependent task is readied by the merge alone."""
    js = nc.jetstream()
    await ensure_streams(js)
    scheduler.start()
    await scheduler.ready()
    missions = (await js.consumer_info("AETHER_MISSIONS", "scheduler")).config.filter_subjects
    assert missions is not None
    for own in (TaskReady, WaveStarted, WaveCompleted):
        assert not set(type_subjects(own)) & set(missions), own
    for folded in (AgentStarted, BranchMerged, PlanApproved, MissionRequested):
        assert set(type_subjects(folded)) <= set(missions), folded
    telemetry = (await js.consumer_info(TELEMETRY_STREAM, "scheduler-telemetry")).config
    assert telemetry.filter_subjects is not None
    assert set(type_subjects(AgentHeartbeat)) <= set(telemetry.filter_subjects)
    for unfolded in (TranscriptRecorded, AgentProgress):
        assert not set(type_subjects(unfolded)) & set(telemetry.filter_subjects), unfolded

    publisher = EventPublisher(js)
    await publish_a_chain_of_two(publisher)
    await wait_for(nc, lambda ev: any(isinstance(e, TaskReady) for e in ev))
    await run_to_merge(publisher, "a", 3)
    events = await wait_for(
        nc, lambda ev: any(isinstance(e, TaskReady) and e.task.id == "b" for e in ev)
    )
    starts = [(e.task.id, e.attempt) for e in events if isinstance(e, TaskReady)]
    assert starts == [("a", 1), ("b", 1)]


async def test_every_event_delivered_again_decides_nothing_new_and_is_settled(
    scheduler: Scheduler, nc: NatsClient
) -> None:
    """The scheduler settles its deliveries without waiting for the server's answer, on
    the ground that a message delivered again changes nothing. The server here forgets
    its consumer's state (made again from the stream's first message, as a server killed
    before writing that state down delivers what it had delivered, as new): every event
    comes again, none is decided on a second time, each is settled, and the mission goes
    on."""
    js = nc.jetstream()
    await ensure_streams(js)
    scheduler.start()
    await scheduler.ready()
    publisher = EventPublisher(js)
    await publish_a_chain_of_two(publisher)
    await wait_for(nc, lambda ev: any(isinstance(e, TaskReady) for e in ev))
    await run_to_merge(publisher, "a", 3)
    await wait_for(nc, lambda ev: any(isinstance(e, TaskReady) and e.task.id == "b" for e in ev))
    stored = (await js.stream_info("AETHER_MISSIONS")).state.last_seq

    config = (await js.consumer_info("AETHER_MISSIONS", "scheduler")).config
    await js.delete_consumer("AETHER_MISSIONS", "scheduler")
    await js.add_consumer(
        "AETHER_MISSIONS",
        dataclasses.replace(
            config, deliver_policy=DeliverPolicy.ALL, opt_start_seq=None, opt_start_time=None
        ),
    )
    for _ in range(300):
        info = await js.consumer_info("AETHER_MISSIONS", "scheduler")
        # Everything it filters for delivered (the scheduler's own events are not), and
        # every delivery settled.
        if info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.consumer_seq:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the events delivered again were not all settled: {info}")
    assert info.num_redelivered == 0  # each settled on its first delivery of the new state
    assert (await js.stream_info("AETHER_MISSIONS")).state.last_seq == stored

    await run_to_merge(publisher, "b", 6)
    events = await wait_for(nc, lambda ev: any(isinstance(e, MissionCompleted) for e in ev))
    starts = [(e.task.id, e.attempt) for e in events if isinstance(e, TaskReady)]
    assert starts == [("a", 1), ("b", 1)]
    assert sum(isinstance(e, MissionCompleted) for e in events) == 1
