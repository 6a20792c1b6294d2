"""Two scheduler processes, one active by the lease, the other a hot standby.

The whole system with its own NATS (the five services, the scheduler twice): a mission is
decided by one of them only, each decision once; the active one SIGKILLed mid-mission is
replaced by the standby within seconds, which finishes the mission without deciding
anything a second time (docs/decisions/0027-scheduler-standby-by-lease.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dulwich.repo import Repo

from aether.stack import SERVICES, Stack
from aether_events import AgentStarted, BranchMerged, MissionCompleted, TaskReady
from aether_llm import MessagesServer
from tests.e2e.test_mission_flow import create_database, stack_for, submit_and_approve, tree_files
from tests.schedulers import SchedulerProcess
from tests.support import ScriptedModel

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 3


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
    shared_model: tuple[MessagesServer, ScriptedModel],
    database_url: str,
) -> AsyncIterator[Stack]:
    """Every service but the scheduler, which each test starts twice itself."""
    stack = stack_for(
        tmp_path_factory.mktemp("standby"), shared_model[0], create_database(database_url)
    )
    stack.env["AETHER_LEASE_SECONDS"] = str(LEASE_SECONDS)
    # A killed scheduler's unacknowledged message comes back within seconds.
    stack.env["AETHER_ACK_WAIT_SECONDS"] = "6"
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        for name in SERVICES:
            if name != "scheduler":
                stack.start_service(name)
        # Ready once a scheduler has declared the streams (``two_schedulers``).
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


@pytest.fixture
def schedulers(stack: Stack) -> Iterator[list[SchedulerProcess]]:
    started: list[SchedulerProcess] = []
    yield started
    for process in started:
        process.stop()


async def two_schedulers(
    stack: Stack, started: list[SchedulerProcess], prefix: str
) -> tuple[SchedulerProcess, SchedulerProcess]:
    """The first started active, the second a standby."""
    env = stack.service_env("scheduler")
    first = SchedulerProcess(env, stack.home / "logs" / f"{prefix}-first.log").start()
    started.append(first)
    await first.until("ok")
    await asyncio.to_thread(stack.wait_ready)
    second = SchedulerProcess(env, stack.home / "logs" / f"{prefix}-second.log").start()
    started.append(second)
    await second.until("standby")
    return first, second


def assert_decided_once(ready: list[tuple[str, int]]) -> None:
    assert sorted(ready) == [("a", 1), ("b", 1), ("c", 1)], ready


async def test_of_two_schedulers_only_the_one_holding_the_lease_decides(
    stack: Stack,
    repo: Path,
    schedulers: list[SchedulerProcess],
    shared_model: tuple[MessagesServer, ScriptedModel],
) -> None:
    shared_model[1].calls.clear()
    active, standby = await two_schedulers(stack, schedulers, "one-acts")
    _, log, nc = await submit_and_approve(stack, repo)
    try:
        await log.completion(timeout=120)
    finally:
        await log.stop()
        await nc.close()
    assert_decided_once([(e.task.id, e.attempt) for e in log.of_type(TaskReady)])
    assert len(log.of_type(MissionCompleted)) == 1
    # The standby consumed, decided and published nothing; it is still a standby, warm.
    assert await standby.published() == 0
    assert await standby.metric("aether_events_consumed_total", service="scheduler") == 0
    assert await standby.metric("aether_leader", service="scheduler") == 0
    assert await active.metric("aether_leader", service="scheduler") == 1
    assert await active.published() > 0
    assert (
        await active.metric("aether_events_published_total", service="scheduler", duplicate="true")
        == 0
    )
    assert (await standby.readiness()) == (200, "standby")
    # It followed the mission to its end, the active one's decisions included (its
    # gauges are read off its projection).
    async with asyncio.timeout(10):
        while not await standby.metric("aether_missions", state="completed"):
            await asyncio.sleep(0.05)
    assert await standby.metric("aether_missions", state="completed") == await active.metric(
        "aether_missions", state="completed"
    )


async def test_the_standby_takes_over_a_killed_active_scheduler_and_decides_nothing_twice(
    stack: Stack,
    repo: Path,
    schedulers: list[SchedulerProcess],
    shared_model: tuple[MessagesServer, ScriptedModel],
) -> None:
    shared_model[1].calls.clear()
    active, standby = await two_schedulers(stack, schedulers, "kill")
    _, log, nc = await submit_and_approve(stack, repo)
    try:
        # Task a merged while b's agent waits on its (slow) model reply: b's attempt holds
        # a credential the active scheduler granted; c waits for both.
        await log.wait_for(
            lambda log: (
                any(e.task_id == "a" for e in log.of_type(BranchMerged))
                and any(e.task_id == "b" for e in log.of_type(AgentStarted))
            ),
            timeout=90,
        )
        assert await standby.published() == 0
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        active.kill()
        took_over = await standby.until("ok", timeout=60)
        # Within the lease's seconds, a look of the standby's and the server's expiry (and
        # a loaded machine's slack): far below a restart's minute and a half.
        assert took_over - killed_at < LEASE_SECONDS + 5
        await log.completion(timeout=120)
    finally:
        await log.stop()
        await nc.close()
    assert_decided_once([(e.task.id, e.attempt) for e in log.of_type(TaskReady)])
    assert sorted(e.task_id for e in log.of_type(BranchMerged)) == ["a", "b", "c"]
    assert len(log.of_type(MissionCompleted)) == 1
    # The new active one decided c and the completion; nothing it published was a
    # decision the killed one had stored already (the stream would have dropped it).
    assert await standby.published() > 0
    assert (
        await standby.metric("aether_events_published_total", service="scheduler", duplicate="true")
        == 0
    )
    assert await standby.metric("aether_lease_takeovers_total", service="scheduler") == 1
    completed = log.of_type(MissionCompleted)[0]
    assert set(tree_files(repo, completed.final_sha)) >= {"a.txt", "b.txt", "c.txt"}
    with Repo(str(repo)) as r:
        merges = [
            entry.commit
            for entry in r.get_walker([completed.final_sha.encode()])
            if b"Aether-Task:" in entry.commit.message and len(entry.commit.parents) > 1
        ]
    tasks_in_merges = [m.message.decode().split("Aether-Task: ")[1].split()[0] for m in merges]
    assert len(tasks_in_merges) == len(set(tasks_in_merges))
    assert shared_model[1].calls.count("plan") == 1
