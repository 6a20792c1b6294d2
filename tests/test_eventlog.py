"""The tests' event log (``tests/eventlog.py``) on a real NATS: ``completion`` returns the
mission's completion, and fails at once, not at its timeout, when only a person could
bring one; an attempt's result that carries its start and usage is read as those events."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    AgentCompleted,
    AgentStarted,
    EventPublisher,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionPaused,
    TaskEscalated,
    Usage,
    UsageRecorded,
)

from .eventlog import EventLog

# Far longer than any of these tests may take: one that waited it out would show.
LONG = 60.0


def _meta(mission_id: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": mission_id,
    }


def _completed(mission_id: str) -> MissionCompleted:
    return MissionCompleted(
        **_meta(mission_id),
        final_sha="0" * 40,
        integration_branch=f"aether/{mission_id}",
        tasks_merged=1,
    )


def _mission_id() -> str:
    return f"m-{uuid.uuid4().hex[:16]}"


async def test_completion_is_the_missions_completion_once_stored(nc: NatsClient):
    mission_id = _mission_id()
    async with EventLog(nc, mission_id, declare=True) as log:
        publisher = EventPublisher(nc.jetstream())
        waiting = asyncio.create_task(log.completion(timeout=LONG))
        await publisher.publish(MissionPaused(**_meta(mission_id)))
        await asyncio.sleep(0.2)  # a quiet spell: nothing ends the wait yet
        assert not waiting.done()
        completed = _completed(mission_id)
        await publisher.publish(completed)
        assert await waiting == completed


@pytest.mark.parametrize(
    "ending",
    [
        lambda m: MissionFailed(**_meta(m), reason="the plan could not be made"),
        lambda m: MissionCancelled(**_meta(m), reason="not needed"),
        lambda m: TaskEscalated(**_meta(m), task_id="t1", attempt=3, reason="three failures"),
    ],
    ids=["failed", "cancelled", "escalated"],
)
async def test_completion_fails_at_once_when_only_a_person_could_bring_it(
    nc: NatsClient, ending: Any
):
    mission_id = _mission_id()
    async with EventLog(nc, mission_id, declare=True) as log:
        publisher = EventPublisher(nc.jetstream())
        waiting = asyncio.create_task(log.completion(timeout=LONG))
        began = time.monotonic()
        await publisher.publish(ending(mission_id))
        with pytest.raises(AssertionError, match="cannot complete on its own") as failure:
            await waiting
        assert time.monotonic() - began < LONG / 2
        assert type(ending(mission_id)).__name__ in str(failure.value)


async def test_completion_still_times_out_when_nothing_comes(nc: NatsClient):
    async with EventLog(nc, _mission_id(), declare=True) as log:
        with pytest.raises(AssertionError, match=r"not met within 0\.3s"):
            await log.completion(timeout=0.3)


async def test_a_result_is_read_as_the_events_it_carries_then_itself(nc: NatsClient):
    mission_id = _mission_id()
    attempt = {"task_id": "t1", "attempt": 1}
    started = AgentStarted(**_meta(mission_id), **attempt, runner_id="r", model="m")
    used = UsageRecorded(
        **_meta(mission_id), **attempt, service="agent-runner", model="m", usage=Usage(), step="s"
    )
    result = AgentCompleted(
        **_meta(mission_id), **attempt, commit_sha="c" * 40, branch="b", carried=[started, used]
    )
    async with EventLog(nc, mission_id, declare=True) as log:
        publisher = EventPublisher(nc.jetstream())
        # The start was published alone too before the result carried it: the same event.
        await publisher.publish(started)
        assert await log.next(AgentStarted) == started
        await publisher.publish(result)
        assert await log.next(UsageRecorded) == used
        assert await log.first(AgentCompleted) == result
        assert log.events == [started, used, result]
        (first, _), (second, _), (third, _) = log.entries
        assert first < second == third
