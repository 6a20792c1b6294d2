"""A runner's own step records cannot be kept out of the stream by an attempt's credential.

The stream's duplicate window is per stream, whatever the subject. The records a runner's
own user publishes (``StepFailed``, ``StepRecovered``) had ids derived from public parts,
and no runner holds the services' key (decision 0031): an attempt's credential could
store, on its own attempt's subject, the id of a runner's coming ``StepFailed`` first. The
record was then never stored, and if it was a runner giving up on a ``WorkspaceReady``,
the scheduler never started that attempt's clock: it waited until a person retried the
task. Each runner now keys its records with a key of its own secret
(``runner_secrets.step_record_key``, ``Service.step_record_key``, decision 0032).

These run against the NATS server ``aether up`` starts, with its generated configuration
and the callout (an attempt's credential granted by the scheduler's authorizer), the
runner's records published with the runner's own user by the runtime's own code, and the
scheduler's and the gateway's folds of what the stream then holds.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_events import (
    MISSIONS_STREAM,
    Event,
    StepFailed,
    TaskRetried,
    TaskTimedOut,
    WorkspaceReady,
    keyed_id,
    public_step_event_id,
    service_id_key,
    step_ids,
    subject_for,
    use_event_id_key,
)
from aether_gateway.domain.steps import failed_steps
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service
from aether_runtime.attempt_auth import AttemptKey
from aether_runtime.runner_secrets import step_record_key
from aether_runtime.service import CountingPublisher
from aether_runtime.steps import step_failed
from aether_scheduler.domain import tick
from aether_scheduler.domain.decide import mission_timer
from services.scheduler.tests.scenario import CONFIG as SCENARIO_CONFIG
from tests.escape import test_attempt_credentials as credentials
from tests.escape import test_attempt_event_ids as attempt_ids
from tests.escape.test_attempt_credentials import Attempt, SchedulerSide
from tests.escape.test_attempt_event_ids import squat, stored
from tests.eventlog import EventLog

# The server ``aether up`` starts, its administrator's connection, and the scheduler's
# state and authorizer with attempt a/1's credential in a thief's hands (b/1 open).
stack = credentials.stack
admin = credentials.admin
scheduler = attempt_ids.scheduler
thief = attempt_ids.thief

RUNNER = "agent-runner"  # the service, its user, its consumer


@contextlib.contextmanager
def as_scheduler(stack: Stack) -> Iterator[bytes]:
    """This process derives ids as the scheduler does (the services' key, which the
    runner's process never holds); the runner's public ids again afterwards."""
    key = service_id_key(stack.load_event_id_secret())
    use_event_id_key(key)
    try:
        yield key
    finally:
        use_event_id_key(None)


def workspace(stack: Stack, key: AttemptKey) -> WorkspaceReady:
    """The git broker's WorkspaceReady for ``key``, under the id it stores it under."""
    with as_scheduler(stack) as services:
        public = public_step_event_id(
            key.mission_id, step_ids.workspace_ready(key.task_id, key.attempt)
        )
        return msgspec.structs.replace(attempt_ids.ready(key), event_id=keyed_id(services, public))


def record(stack: Stack, cause: WorkspaceReady, runner: str, sequence: int) -> StepFailed:
    """The runtime's record of runner ``runner`` giving up on ``cause`` (built again at
    each call, as a restarted runner builds it)."""
    return step_failed(
        cause,
        service=RUNNER,
        consumer=RUNNER,
        stream=MISSIONS_STREAM,
        sequence=sequence,
        error="RuntimeError: cannot take this workspace",
        attempts=1,
        now=datetime.now(UTC),
        key=step_record_key(stack.runner_secret(runner)),
    )


async def runner_publisher(stack: Stack) -> tuple[NatsClient, CountingPublisher]:
    """A connection of the runners' own user and the runtime's publisher on it."""
    nc = await nats.connect(
        stack.nats_server_url,
        user=RUNNER,
        password=stack.nats_passwords[RUNNER],
        inbox_prefix=f"_INBOX.{RUNNER}",
    )
    return nc, CountingPublisher(nc.jetstream(), RUNNER)


async def publish_workspace(stack: Stack, event: WorkspaceReady) -> int:
    """Store ``event`` as the git broker does (its own user); its stream sequence."""
    nc = await nats.connect(
        stack.nats_server_url,
        user="git-broker",
        password=stack.nats_passwords["git-broker"],
        inbox_prefix="_INBOX.git-broker",
    )
    try:
        ack = await CountingPublisher(nc.jetstream(), "git-broker").publish(event)
    finally:
        await nc.close()
    assert not ack.duplicate
    return ack.seq


async def times_out(scheduler: SchedulerSide, stack: Stack, failed: StepFailed) -> list[Event]:
    """The scheduler folds ``failed`` (its handler, on its own user) and then decides
    once the heartbeat timeout has run out after it."""
    with as_scheduler(stack):
        await scheduler.fold(failed)
        later = failed.occurred_at + timedelta(seconds=SCENARIO_CONFIG.heartbeat_timeout_seconds)
        return tick(scheduler.projection.state, later + timedelta(seconds=1), SCENARIO_CONFIG)


async def test_a_runners_public_step_record_id_sent_first_no_longer_keeps_it_out(
    stack: Stack,
    scheduler: SchedulerSide,
    admin: NatsClient,
    thief: tuple[AttemptKey, Attempt],
) -> None:
    """With attempt a/1's credential, the thief stores on its own subject a message under
    the id the runner's record of giving up on b/1's WorkspaceReady derives from public
    parts (what it was stored under before). The runner (its own user, the runtime's
    failed-step path) then gives up on that WorkspaceReady: its record is stored, under an
    id keyed with its own key, and the scheduler, folding it, times b/1 out and retries
    it."""
    own, attempt = thief
    victim = AttemptKey(own.mission_id, "b", 1)
    cause = workspace(stack, victim)
    step = step_ids.step_failed(RUNNER, RUNNER, cause.event_id)
    public = public_step_event_id(victim.mission_id, step)
    await squat(attempt, own, public)

    name = "host.r-1"
    settings = RuntimeSettings(
        nats_url=stack.nats_server_url,
        nats_user=RUNNER,
        nats_password=stack.nats_passwords[RUNNER],
        port=0,
    )
    runner = Service(
        name=RUNNER,
        settings=settings,
        bus_poll_seconds=0,
        step_record_key=step_record_key(stack.runner_secret(name)),
    )

    async def gives_up(event: Event, delivery: Delivery) -> None:
        raise RuntimeError("cannot take this workspace")

    runner.consume(
        ConsumerSpec(
            durable=RUNNER,
            subject=subject_for(cause),
            handler=gives_up,
            max_deliver=1,
            retry_delays=(),
        )
    )
    log = await EventLog(admin, victim.mission_id).start()
    await runner.start()
    try:
        sequence = await publish_workspace(stack, cause)
        await log.wait_for(lambda log: bool(log.of_type(StepFailed)), timeout=30)
    finally:
        await runner.stop()
        await log.stop()
    (failed,) = log.of_type(StepFailed)
    assert (failed.failed_event_id, failed.stream_sequence) == (cause.event_id, sequence)
    key = step_record_key(stack.runner_secret(name))
    assert failed.event_id == keyed_id(key, public) != public
    [(msg_id, _)] = await stored(admin, failed)
    assert msg_id == failed.event_id

    decided = await times_out(scheduler, stack, failed)
    assert [(type(e), getattr(e, "task_id", None)) for e in decided] == [
        (TaskTimedOut, "b"),
        (TaskRetried, "b"),
    ]


async def test_a_restarted_runners_record_of_a_step_is_a_duplicate(
    stack: Stack, admin: NatsClient
) -> None:
    """Exactly once is kept: the same runner name recording the same step again (a
    restart, a redelivery: a new connection, the record built again at another time) is
    acknowledged as a duplicate of its own record, which the detector lets pass."""
    mission = f"m-steps-{uuid.uuid4().hex[:8]}"
    cause = workspace(stack, AttemptKey(mission, "b", 1))
    sequence = await publish_workspace(stack, cause)
    nc, publisher = await runner_publisher(stack)
    try:
        first = await publisher.publish(record(stack, cause, "host.r-1", sequence))
    finally:
        await nc.close()
    nc, publisher = await runner_publisher(stack)
    try:
        again = await publisher.publish(record(stack, cause, "host.r-1", sequence))
    finally:
        await nc.close()
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    assert len(await stored(admin, record(stack, cause, "host.r-1", sequence))) == 1


async def test_two_runners_records_of_one_step_are_folded_once(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """Two runners giving up on one WorkspaceReady (the advisory of a delivery nobody
    answered reaches each) store two records, under ids of their own keys, neither a
    duplicate. The scheduler starts the attempt's clock once, at the first (the second
    does not put the timeout off), and the gateway shows one failed step."""
    (victim,) = scheduler.start("b")
    cause = workspace(stack, victim)
    sequence = await publish_workspace(stack, cause)
    records = [record(stack, cause, runner, sequence) for runner in ("host.r-1", "host.r-2")]
    assert records[0].event_id != records[1].event_id
    nc, publisher = await runner_publisher(stack)
    try:
        acks = [await publisher.publish(event) for event in records]
    finally:
        await nc.close()
    assert not any(ack.duplicate for ack in acks)
    held = await stored(admin, records[0])
    assert [msg_id for msg_id, _ in held] == [event.event_id for event in records]

    with as_scheduler(stack):
        await scheduler.fold(records[0])
        first = mission_timer(scheduler.projection.state, victim.mission_id, SCENARIO_CONFIG)
        await scheduler.fold(records[1])
        assert first is not None and first == mission_timer(
            scheduler.projection.state, victim.mission_id, SCENARIO_CONFIG
        )
    assert first == records[0].occurred_at + timedelta(
        seconds=SCENARIO_CONFIG.heartbeat_timeout_seconds
    )

    (step,) = failed_steps([msgspec.to_builtins(event) for _, event in held])
    assert (step.failed_event_id, step.attempts) == (cause.event_id, 1)
    assert step.step_failed_event_id == records[0].event_id


@pytest.fixture(autouse=True)
def public_ids() -> Iterator[None]:
    """This process is the runner's: no services' key (set only inside ``as_scheduler``)."""
    use_event_id_key(None)
    yield
    use_event_id_key(None)
