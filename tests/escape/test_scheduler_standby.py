"""A standby scheduler, and an active one that lost its lease, never act.

Real scheduler processes (``python -m aether_scheduler``) on the NATS server ``aether up``
starts, with its generated configuration (per-service users, the attempt callout): a
standby must not answer the server's authorization requests (an attempt or a runner
credential granted by a process whose state may be behind), and an active one paused
past its lease must not decide anything when it resumes (docs/decisions/0027)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_events import (
    AgentStarted,
    EventPublisher,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    TaskTimedOut,
)
from aether_runtime.lease import Lease, ensure_leases_bucket
from aether_runtime.runners import runner_inbox, runner_user
from tests.eventlog import EventLog
from tests.schedulers import SchedulerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="aether-standby-"))
    stack = Stack(home=home, random_ports=True, prestart=False, env={})
    stack.start_infrastructure()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(stack.nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def schedulers() -> Iterator[list[SchedulerProcess]]:
    started: list[SchedulerProcess] = []
    yield started
    for process in started:
        process.stop()


def scheduler(
    stack: Stack, started: list[SchedulerProcess], name: str, **env: str
) -> SchedulerProcess:
    process = SchedulerProcess(
        {**stack.service_env("scheduler"), **env}, stack.home / "logs" / f"{name}.log"
    )
    started.append(process.start())
    return process


async def runner_connects(stack: Stack, name: str = "r1") -> bool:
    """Whether a runner's own credential is granted now (the authorizer answered yes)."""
    try:
        nc = await nats.connect(
            stack.nats_server_url,
            user=runner_user(name, "one"),
            password=stack.runner_secret(name),
            inbox_prefix=runner_inbox(name, "one"),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=10,
        )
    except (nats.errors.Error, OSError):
        return False
    await nc.close()
    return True


async def test_a_standby_never_grants_a_credential_and_grants_once_it_holds_the_lease(
    stack: Stack, admin: NatsClient, schedulers: list[SchedulerProcess]
) -> None:
    js = admin.jetstream()
    # Someone else holds the lease: the scheduler started now stands by.
    await ensure_leases_bucket(js)
    holder = Lease(lambda: js, "scheduler", ttl=60, holder="the-test")
    assert await holder.take()
    standby = scheduler(stack, schedulers, "standby")
    await standby.until("standby")
    assert not await runner_connects(stack)
    assert await standby.metric("aether_leader", service="scheduler") == 0
    # The lease let go, it takes over, and grants.
    await holder.release()
    await standby.until("ok", timeout=30)
    # Its authorizer answers once its subscription reaches the server, a moment after
    # the take-over (a runner refused meanwhile connects again, as runners do).
    async with asyncio.timeout(15):
        while not await runner_connects(stack):
            await asyncio.sleep(0.2)
    assert await standby.metric("aether_leader", service="scheduler") == 1


M = "m-standby-paused"


def meta(n: int) -> dict[str, Any]:
    return {
        "event_id": f"paused-{n}",
        "mission_id": M,
        "occurred_at": datetime.now(UTC),
        "correlation_id": "paused-0",
    }


async def until_handled(process: SchedulerProcess, tag: str, timeout: float = 30.0) -> None:
    """Wait until ``process`` handled an event of type ``tag`` (read off its metrics)."""
    async with asyncio.timeout(timeout):
        while not await process.metric(
            "aether_events_consumed_total", service="scheduler", type=tag, outcome="ok"
        ):
            await asyncio.sleep(0.05)


async def test_a_paused_active_scheduler_that_resumes_after_its_lease_expired_does_not_act(
    stack: Stack, admin: NatsClient, schedulers: list[SchedulerProcess]
) -> None:
    js = admin.jetstream()
    settings = {"AETHER_LEASE_SECONDS": "3", "AETHER_HEARTBEAT_TIMEOUT_SECONDS": "4"}
    first = scheduler(stack, schedulers, "paused-first", **settings)
    await first.until("ok")
    second = scheduler(stack, schedulers, "paused-second", **settings)
    await second.until("standby")
    publisher = EventPublisher(js)
    tasks = [PlannedTask(id="a", title="A", files=["a"])]
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
            PlanApproved(**meta(3), version=1),
        ]
    )
    async with EventLog(admin, M) as log:
        await log.wait_for(lambda log: bool(log.of_type(TaskReady)), timeout=30)
        # A runner took it: its liveness clock runs (4 s without a heartbeat).
        await publisher.publish(
            AgentStarted(**meta(4), task_id="a", attempt=1, runner_id="r", model="m")
        )
        # Folded by the active one: its timer for the attempt is set.
        await until_handled(first, "agent_started")
        before = await first.published()
        assert before > 0  # it decided the start
        assert await second.published() == 0
        first.pause()
        paused_at = asyncio.get_running_loop().time()
        took_over = await second.until("ok", timeout=30)
        # The time to live, a look of the standby's and the server's expiry; generous for a
        # loaded machine, far below a restart's minute and a half.
        assert took_over - paused_at < 3 + 5
        # The attempt times out, decided by the new active one, while the first is paused
        # with the same timer due: at its resume that timer fires before it hears of the
        # bus, and its own deadline alone keeps it from deciding.
        await log.wait_for(lambda log: bool(log.of_type(TaskTimedOut)), timeout=30)
        first.resume()
        # It finds it lost the lease and stands by, having decided nothing.
        await first.until("standby", timeout=30)
        assert await first.published() == before
        assert await first.metric("aether_leader", service="scheduler") == 0
        assert await second.metric("aether_leader", service="scheduler") == 1
        assert await second.metric("aether_lease_takeovers_total", service="scheduler") == 1
        timed_out = [(e.task_id, e.attempt) for e in log.of_type(TaskTimedOut)]
        assert timed_out == [("a", 1)]
