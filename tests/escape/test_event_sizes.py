"""The largest events an attempt's credential may publish, folded by the scheduler, never
make the scheduler's own events (the next attempt's context, an escalation, a failed
mission's reason) larger than the bus takes: the mission goes on.
The stack is ``aether up``'s NATS server with its generated configuration, the authorizer
and the scheduler's handlers as in ``test_attempt_credentials``.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_events import (
    ATTEMPT_MAX_PAYLOAD,
    MISSIONS_STREAM,
    AgentFailed,
    Event,
    MissionFailed,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    decode,
    encode,
    subject_for,
    tag_of,
)
from aether_runtime.attempt_auth import AttemptKey
from services.scheduler.tests.scenario import CONFIG as SCENARIO_CONFIG
from services.scheduler.tests.scenario import task as scenario_task
from tests.escape import test_attempt_credentials as credentials
from tests.escape.test_attempt_credentials import Attempt, SchedulerSide, meta

# The fixtures of the attempt credentials' tests: a stack, its admin, the scheduler's side.
stack = credentials.stack
admin = credentials.admin
scheduler = credentials.scheduler

# Room for the headers a JetStream publish adds (the server counts them with the payload).
HEADERS = 512


def sized(event: Event, field: str, size: int, unit: str = "é😀x") -> Event:
    """``event`` with ``field`` filled with ``unit`` (multi-byte characters) until the
    event encodes to about ``size`` bytes, and not more."""
    base = len(encode(msgspec.structs.replace(event, **{field: ""})))
    room = size - base
    step = len(unit.encode())
    text = unit * (room // step) + "x" * (room % step)
    filled = msgspec.structs.replace(event, **{field: text})
    assert size - 8 <= len(encode(filled)) <= size
    return filled


async def published_and_folded(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient, event: Event
) -> None:
    """``event`` published with its attempt's credential, then folded by the scheduler's
    handler as the stream stored it (its decisions published on the scheduler's user:
    a publish the bus refuses fails the fold)."""
    assert isinstance(event, AgentFailed)
    key = AttemptKey(event.mission_id, event.task_id, event.attempt)
    attempt = await Attempt().open(stack, key)
    assert attempt.nc is not None
    try:
        ack = await attempt.nc.jetstream().publish(subject_for(event), encode(event), timeout=10)
    finally:
        await attempt.close()
    stored = await admin.jetstream().get_msg(MISSIONS_STREAM, ack.seq)
    assert stored.data is not None
    await scheduler.fold(decode(stored.data))


async def last_of(admin: NatsClient, scheduler: SchedulerSide, cls: type[Event]) -> bytes:
    """The last stored event of ``cls`` in the scheduler's mission, as stored."""
    subject = f"aether.mission.{scheduler.scenario.mission_id}.{tag_of(cls)}"
    message = await admin.jetstream().get_last_msg(MISSIONS_STREAM, subject)
    assert message.data is not None
    return message.data


def failure(key: AttemptKey, retryable: bool) -> AgentFailed:
    event = AgentFailed(
        **meta(key.mission_id, f"failed-{key.task_id}-{key.attempt}"),
        task_id=key.task_id,
        attempt=key.attempt,
        reason="",
        retryable=retryable,
    )
    filled = sized(event, "reason", ATTEMPT_MAX_PAYLOAD - HEADERS)
    assert isinstance(filled, AgentFailed)
    return filled


async def test_the_largest_failures_an_attempt_may_send_are_retried_then_escalated(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """An attempt fails with the largest reason its credential takes: the scheduler's
    TaskRetried and the next attempt's TaskReady (the reason as its context) are stored,
    small, and the next attempt's largest failure escalates the task."""
    scheduler.scenario.mission_id = "m-sizes-retried"
    (key,) = scheduler.start("t1")
    await published_and_folded(stack, scheduler, admin, failure(key, True))
    retried = decode(await last_of(admin, scheduler, TaskRetried))
    assert isinstance(retried, TaskRetried) and retried.attempt == 2
    assert "bytes cut" in retried.reason

    scheduler.scenario.now += timedelta(seconds=SCENARIO_CONFIG.retry_base_seconds * 10)
    await scheduler.handlers.on_tick()
    stored = await last_of(admin, scheduler, TaskReady)
    ready = decode(stored)
    assert isinstance(ready, TaskReady) and ready.attempt == 2
    assert ready.context.startswith("Previous attempt failed: é😀") and "bytes cut" in ready.context
    assert len(stored) < 32 * 1024

    second = AttemptKey(key.mission_id, key.task_id, 2)
    await published_and_folded(stack, scheduler, admin, failure(second, True))
    stored = await last_of(admin, scheduler, TaskEscalated)
    escalated = decode(stored)
    assert isinstance(escalated, TaskEscalated) and escalated.task_id == "t1"
    assert len(stored) < 32 * 1024


async def test_a_mission_whose_tasks_all_fail_with_the_largest_reasons_fails(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """Every task of a wide mission fails for good with the largest reason its attempt's
    credential takes: the MissionFailed naming them all is stored (their reasons side by
    side were several times the bus's largest message)."""
    scheduler.scenario.mission_id = "m-sizes-failed"
    tasks = [f"t{n}" for n in range(6)]
    scheduler.scenario.start(*(scenario_task(t) for t in tasks), max_concurrency=len(tasks))
    scheduler.projection.state = scheduler.scenario.state
    mission_id = scheduler.scenario.mission_id
    keys = [AttemptKey(mission_id, t, 1) for t in tasks]
    for key in keys:
        await published_and_folded(stack, scheduler, admin, failure(key, False))
    stored = await last_of(admin, scheduler, MissionFailed)
    failed = decode(stored)
    assert isinstance(failed, MissionFailed)
    assert failed.reason.startswith("task(s) t0, t1, t2, t3, t4, t5 failed")
    assert "bytes cut" in failed.reason
    assert len(stored) < 32 * 1024
