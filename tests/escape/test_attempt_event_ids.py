"""Another attempt's events cannot be dropped as duplicates by an attempt's credential.

The stream's duplicate window is per stream, and an id derived from public parts (the
mission, the task, the attempt, the step) is one anybody can compute. An attempt's events
are therefore stored under their step's id keyed with a key of that attempt, which the
scheduler's authorizer gives only to a connection holding that attempt's credential
(``aether_events.attempt_ids``, decision 0030). These run against the NATS server ``aether
up`` starts, with its generated configuration, the scheduler's grant path
(``aether_scheduler.app.attempt_credentials`` on the scheduler's user) and the runner's
own publisher and event constructors.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_agent_runner.domain import decide
from aether_events import (
    MISSIONS_STREAM,
    AgentStarted,
    Event,
    StreamSettings,
    Usage,
    WorkspaceReady,
    decode,
    encode,
    ensure_streams,
    keyed_id,
    subject_for,
)
from aether_events.catalogue import PlannedTask
from aether_events.subjects import task_token
from aether_runtime.attempt_auth import AttemptCredentials, AttemptKey
from tests.escape import test_attempt_credentials as credentials
from tests.escape.test_attempt_credentials import Attempt, SchedulerSide

# The server ``aether up`` starts, and its administrator's connection (the fixtures of the
# attempt credentials' escapes, a server of this module's own).
stack = credentials.stack
admin = credentials.admin

RUNNER = "host.r-1"


def ready(key: AttemptKey) -> WorkspaceReady:
    """The WorkspaceReady the runner works ``key`` from."""
    return WorkspaceReady(
        event_id=f"ready-{key.task_id}-{key.attempt}",
        mission_id=key.mission_id,
        occurred_at=datetime.now(UTC),
        correlation_id=f"corr-{key.mission_id}",
        task=PlannedTask(id=key.task_id, title=key.task_id),
        attempt=key.attempt,
        model="m",
        branch=f"aether/{key.task_id}",
        worktree_path="/nowhere",
        base_sha="0" * 40,
    )


def attempts_events(key: AttemptKey) -> list[Event]:
    """What the runner publishes for ``key``, built by its own constructors (a resumed
    attempt builds them again, at another time)."""
    now = datetime.now(UTC)
    cause = ready(key)
    usage = Usage(input_tokens=10, output_tokens=5)
    return [
        decide.started(cause, now, RUNNER, "bubblewrap", "builtin"),
        decide.usage_recorded(cause, now, 1, usage, offline=True),
        decide.heartbeat(cause, now, RUNNER, 1),
        decide.completed(cause, now, "1" * 40, "done", ["a.txt"], usage),
    ]


async def stored(admin: NatsClient, event: Event) -> list[tuple[str, Event]]:
    """The ``Nats-Msg-Id`` and event of every message on ``event``'s subject."""
    js = admin.jetstream()
    subject = subject_for(event)
    stream = await js.find_stream_name_by_subject(subject)
    found: list[tuple[str, Event]] = []
    seq = 1
    while True:
        try:
            message = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return found
        headers = message.headers or {}
        found.append((headers.get("Nats-Msg-Id", ""), decode(message.data or b"")))
        seq = (message.seq or seq) + 1


async def scheduler_connection(stack: Stack) -> NatsClient:
    nc = await nats.connect(
        stack.nats_server_url,
        user="scheduler",
        password=stack.nats_passwords["scheduler"],
        inbox_prefix="_INBOX.scheduler",
    )
    await ensure_streams(nc.jetstream(), StreamSettings())
    return nc


@pytest.fixture
async def scheduler(stack: Stack) -> AsyncIterator[SchedulerSide]:
    """The scheduler's state, authorizer and cutter on its own user, for a mission of
    the test's own (the ids of its events are the test's alone)."""
    nc = await scheduler_connection(stack)
    side = SchedulerSide(stack, nc, f"m-ids-{uuid.uuid4().hex[:8]}")
    await side.cutter.start()
    await side.authorizer.serve(nc)
    try:
        yield side
    finally:
        await side.authorizer.stop()
        await side.cutter.stop()
        await nc.close()


@pytest.fixture
async def thief(
    stack: Stack, scheduler: SchedulerSide
) -> AsyncIterator[tuple[AttemptKey, Attempt]]:
    """A raw connection with the credential of attempt 1 of task ``a`` (a runner that
    holds it, or whoever stole it); task ``b``'s attempt 1 is open beside it."""
    key, _ = scheduler.start("a", "b")
    attempt = await Attempt().open(stack, key, runner="thief")
    try:
        yield key, attempt
    finally:
        await attempt.close()


async def squat(attempt: Attempt, own: AttemptKey, event_id: str) -> None:
    """Store, on the thief's own attempt's subject, an AgentStarted of its own attempt
    whose id (in the payload and as ``Nats-Msg-Id``) is ``event_id``."""
    assert attempt.nc is not None
    own_start = decide.started(ready(own), datetime.now(UTC), "thief", None)
    own_start = msgspec.structs.replace(own_start, event_id=event_id)
    ack = await attempt.nc.jetstream().publish(
        subject_for(own_start),
        encode(own_start),
        headers={"Nats-Msg-Id": event_id},
        timeout=10.0,
    )
    assert ack.stream == MISSIONS_STREAM and not ack.duplicate


async def test_another_attempts_next_event_id_sent_first_does_not_drop_its_event(
    stack: Stack,
    scheduler: SchedulerSide,
    admin: NatsClient,
    thief: tuple[AttemptKey, Attempt],
) -> None:
    """With attempt a/1's credential, the thief stores on its own subjects events whose
    ids are what b/1's start would have been: the id its step derives from public parts
    (how every attempt event was stored before), and that id keyed with the key the
    thief's own grant yields. Attempt b/1's runner then publishes its start: stored,
    under an id that is neither."""
    own, attempt = thief
    victim = AttemptKey(scheduler.scenario.mission_id, "b", 1)
    start = attempts_events(victim)[0]
    assert isinstance(start, AgentStarted)
    public_id = start.event_id  # what anybody derives from the step
    assert attempt.nc is not None
    answer = (await attempt.nc.request(own.key_subject, b"", timeout=10.0)).data.decode()
    thief_key = base64.urlsafe_b64decode(answer + "=" * (-len(answer) % 4))
    # The thief's grant yields its own attempt's key, as the scheduler derives it.
    assert thief_key == scheduler.authorizer.event_key(own.mission_id, task_token("a"), 1)
    for squatted in (public_id, keyed_id(thief_key, public_id)):
        await squat(attempt, own, squatted)

    credentials = AttemptCredentials(stack.nats_server_url, stack.runner_secret(RUNNER), RUNNER)
    async with credentials.scope(victim) as publisher:
        ack = await publisher.publish(start)
    assert not ack.duplicate, "the victim's start was dropped as a duplicate"
    [(msg_id, event)] = await stored(admin, start)
    assert isinstance(event, AgentStarted) and event.runner_id == RUNNER
    assert msg_id == event.event_id
    assert msg_id not in (public_id, keyed_id(thief_key, public_id))
    victim_key = scheduler.authorizer.event_key(victim.mission_id, "b", 1)
    assert msg_id == keyed_id(victim_key, public_id)


async def test_an_attempts_credential_is_not_given_another_attempts_key(
    stack: Stack, scheduler: SchedulerSide, thief: tuple[AttemptKey, Attempt]
) -> None:
    """The key is asked for on a subject that names the attempt, which only that
    attempt's credential may publish on: the thief asking for b/1's is refused by the
    server, and gets no answer."""
    own, attempt = thief
    victim = AttemptKey(own.mission_id, "b", 1)
    assert attempt.nc is not None
    with pytest.raises(nats.errors.Error):
        await attempt.nc.request(victim.key_subject, b"", timeout=2.0)
    await attempt.violation(victim.key_subject)
    # Nor with a wildcard, nor by listening where the answers go.
    with pytest.raises(nats.errors.Error):
        await attempt.nc.request(f"aether.attempt_key.{own.mission_id}.*.1", b"", timeout=2.0)
    await attempt.violation(f"aether.attempt_key.{own.mission_id}.*.1")
    await attempt.nc.subscribe(f"{victim.inbox_prefix}.>")
    await attempt.nc.flush()
    await attempt.violation(f"{victim.inbox_prefix}.>")


async def test_static_users_cannot_ask_an_attempts_key(
    stack: Stack, scheduler: SchedulerSide
) -> None:
    """No service's user may ask for a key (the runner's own user included): the
    scheduler's is the one that answers, and publishes nothing there."""
    victim = AttemptKey(scheduler.scenario.mission_id, "b", 1)
    scheduler.start("a", "b")
    for user in ("agent-runner", "gateway", "git-broker", "planner"):
        errors: list[str] = []

        async def on_error(error: Exception, errors: list[str] = errors) -> None:
            errors.append(str(error))

        nc = await nats.connect(
            stack.nats_server_url,
            user=user,
            password=stack.nats_passwords[user],
            inbox_prefix=f"_INBOX.{user}",
            error_cb=on_error,
        )
        try:
            with pytest.raises(nats.errors.Error):
                await nc.request(victim.key_subject, b"", timeout=2.0)
            assert any("permissions violation" in error.lower() for error in errors), errors
        finally:
            await nc.close()


async def test_a_resumed_attempt_stores_nothing_twice(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """Exactly once is kept: the attempt's events published again by its runner
    restarted, then by another runner under a scheduler that took over (its own process,
    the same master), are each dropped as duplicates, under the ids stored first."""
    _, victim = scheduler.start("a", "b")
    first = attempts_events(victim)
    credentials = AttemptCredentials(stack.nats_server_url, stack.runner_secret(RUNNER), RUNNER)
    async with credentials.scope(victim) as publisher:
        acks = [await publisher.publish(event) for event in first]
    assert not any(ack.duplicate for ack in acks)
    ids = {type(event): (await stored(admin, event))[0][0] for event in first}

    # The same runner, restarted: a new process, a new connection, the key asked again.
    async with credentials.scope(victim) as publisher:
        again = [await publisher.publish(event) for event in attempts_events(victim)]
    assert all(ack.duplicate for ack in again)
    assert [ack.seq for ack in again] == [ack.seq for ack in acks]

    # The active scheduler gone, a standby takes over (no holder known); another runner
    # takes the attempt.
    await scheduler.authorizer.stop()
    nc = await scheduler_connection(stack)
    try:
        standby = SchedulerSide(stack, nc, scheduler.scenario.mission_id)
        standby.start("a", "b")
        await standby.authorizer.serve(nc)
        other = AttemptCredentials(
            stack.nats_server_url, stack.runner_secret("host.r-2"), "host.r-2"
        )
        async with other.scope(victim) as publisher:
            moved = [await publisher.publish(event) for event in attempts_events(victim)]
        await standby.authorizer.stop()
    finally:
        await nc.close()
    assert all(ack.duplicate for ack in moved)
    assert [ack.seq for ack in moved] == [ack.seq for ack in acks]
    for event in first:
        assert [msg_id for msg_id, _ in await stored(admin, event)] == [ids[type(event)]]
