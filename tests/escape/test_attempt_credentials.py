"""Escape attempts with an agent runner's attempt credential.

The runner's own NATS user publishes no agent event; an attempt's events go out with a
credential the scheduler's authorizer grants through the server's auth callout, for that
attempt only while it is open (``aether_runtime.attempt_auth``). These run against the
NATS server ``aether up`` starts, with its generated configuration (callout included),
and the authorizer connected as the scheduler's user with the scheduler's permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from aether.infra import free_port
from aether.stack import Stack
from aether_events import (
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    TELEMETRY_TYPES,
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentStarted,
    BranchMerged,
    Event,
    EventPublisher,
    MissionCancelled,
    MissionRequested,
    PlanApproved,
    PlanProduced,
    RepositoryPrepared,
    StreamSettings,
    TaskReady,
    TranscriptRecorded,
    UsageRecorded,
    encode,
    ensure_streams,
    subject_for,
    tag_of,
)
from aether_events.catalogue import PlannedTask, Usage
from aether_runtime import Delivery, Projection, tls
from aether_runtime.attempt_auth import (
    AttemptAuthorizer,
    AttemptCredentials,
    AttemptKey,
    CredentialRefused,
    Grants,
)
from aether_runtime.attempt_connections import attempt_connections_held
from aether_runtime.roles import ROLES
from aether_scheduler.app import attempt_credentials, attempt_open
from aether_scheduler.config import SchedulerSettings
from aether_scheduler.domain import State, evolve
from aether_scheduler.handlers import Handlers
from services.scheduler.tests.scenario import CONFIG as SCENARIO_CONFIG
from services.scheduler.tests.scenario import Scenario
from services.scheduler.tests.scenario import task as scenario_task
from tests.eventlog import EventLog

# Another runner's attempt, in another mission.
VICTIM = AttemptKey("m-victim", "t1", 1)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="aether-escape-attempts-"))
    stack = Stack(home=home, random_ports=True, prestart=False, env={})
    stack.start_infrastructure()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)  # its PostgreSQL data among the rest


class Authorizer:
    """The scheduler's side: the authorizer on a connection of the scheduler's user, with
    the set of open attempts in the test's hands."""

    def __init__(self, stack: Stack) -> None:
        self.open: set[AttemptKey] = set()
        self.asked = 0  # how many times the server called out for a credential
        self.service = AttemptAuthorizer(
            issuer_seed=stack.attempt_issuer_seed,
            master=stack.runner_master_secret,
            grants=Grants(self._grant),
            types=ROLES["agent-runner"].attempt_publishes,
        )

    def _grant(self, key: AttemptKey) -> bool:
        self.asked += 1
        return key in self.open


@pytest.fixture
async def authorizer(stack: Stack) -> AsyncIterator[Authorizer]:
    nc = await nats.connect(
        stack.nats_server_url,
        user="scheduler",
        password=stack.nats_passwords["scheduler"],
        inbox_prefix="_INBOX.scheduler",
    )
    await ensure_streams(nc.jetstream(), StreamSettings())
    authorizer = Authorizer(stack)
    await authorizer.service.serve(nc)
    try:
        yield authorizer
    finally:
        await authorizer.service.stop()
        await nc.close()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(stack.nats_url)
    try:
        yield nc
    finally:
        await nc.close()


class Attempt:
    """A raw connection with an attempt's credential, recording the server's errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self.nc: NatsClient | None = None

    async def open(
        self, stack: Stack, key: AttemptKey, runner: str = "r1", secret: str | None = None
    ) -> Attempt:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        async def on_closed() -> None:
            self.closed.set()

        self.nc = await nats.connect(
            stack.nats_server_url,
            user=key.user(runner),
            password=stack.runner_secret(runner) if secret is None else secret,
            inbox_prefix=key.inbox_prefix,
            error_cb=on_error,
            closed_cb=on_closed,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.1,
            connect_timeout=30,
        )
        return self

    async def violation(self, fragment: str, within: float = 30.0) -> str:
        """Wait for the server's permissions violation naming ``fragment`` (the bound only
        keeps a missing one from hanging the test until its timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            for error in self.errors:
                if "permissions violation" in error.lower() and fragment.lower() in error.lower():
                    return error
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {fragment!r}: {self.errors}")

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


def meta(mission_id: str, name: str) -> dict[str, Any]:
    return {
        "event_id": f"{mission_id}-{name}",
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": f"corr-{mission_id}",
    }


def started(key: AttemptKey, name: str = "started") -> AgentStarted:
    return AgentStarted(
        **meta(key.mission_id, name),
        task_id=key.task_id,
        attempt=key.attempt,
        runner_id="r1",
        model="m",
    )


def completed(key: AttemptKey, name: str = "completed") -> AgentCompleted:
    return AgentCompleted(
        **meta(key.mission_id, name),
        task_id=key.task_id,
        attempt=key.attempt,
        commit_sha="0" * 40,
        branch="b",
    )


async def stored_on(admin: NatsClient, subject: str, stream: str = MISSIONS_STREAM) -> int:
    info = await admin.jetstream().stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def refused(stack: Stack, key: AttemptKey, runner: str = "r1", **options: Any) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authoriz"):
        await nats.connect(
            stack.nats_server_url,
            **{
                "user": key.user(runner),
                "password": stack.runner_secret(runner),
                "inbox_prefix": key.inbox_prefix,
                **options,
            },
            allow_reconnect=False,
            max_reconnect_attempts=0,
            # The refusal comes from the authorizer, through the server: wait for it.
            connect_timeout=30,
        )


# --- the credential lets an attempt report on itself ----------------------------------------


async def test_an_open_attempt_publishes_its_own_events(
    stack: Stack, authorizer: Authorizer, admin: NatsClient
) -> None:
    """The control: the runner's real publisher, through the credential of its attempt."""
    key = AttemptKey("m-own", "1.2", 1)  # a task id may hold dots
    authorizer.open.add(key)
    credentials = AttemptCredentials(
        stack.nats_server_url, stack.runner_secret("host.r-1"), "host.r-1"
    )
    async with credentials.scope(key) as publisher:
        ack = await publisher.publish(started(key))
        assert ack.stream == MISSIONS_STREAM
        beat = AgentHeartbeat(
            **meta(key.mission_id, "beat"), task_id=key.task_id, attempt=1, runner_id="r1"
        )
        assert (await publisher.publish(beat)).stream == TELEMETRY_STREAM
        usage = UsageRecorded(
            **meta(key.mission_id, "usage"),
            service="agent-runner",
            model="m",
            usage=Usage(input_tokens=10, output_tokens=5),
            step="turn-1",
            task_id=key.task_id,
            attempt=1,
        )
        await publisher.publish(usage)
        # Published twice (a redelivery): the stream's duplicate window drops the second.
        again = await publisher.publish(started(key))
        assert again.duplicate
    assert await stored_on(admin, subject_for(started(key))) == 1
    assert await stored_on(admin, subject_for(usage)) == 1
    assert await stored_on(admin, subject_for(beat), TELEMETRY_STREAM) == 1


# --- and nothing else ------------------------------------------------------------------------


async def test_the_runners_own_user_publishes_no_agent_event(
    stack: Stack, authorizer: Authorizer, admin: NatsClient
) -> None:
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await nats.connect(
        stack.nats_server_url,
        user="agent-runner",
        password=stack.nats_passwords["agent-runner"],
        inbox_prefix="_INBOX.agent-runner",
        error_cb=on_error,
    )
    try:
        event = completed(VICTIM)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream().publish(subject_for(event), encode(event), timeout=1.0)
        assert any("permissions violation" in error.lower() for error in errors), errors
    finally:
        await nc.close()
    assert await stored_on(admin, subject_for(event)) == 0


async def test_an_attempt_cannot_report_on_another_mission(
    stack: Stack, authorizer: Authorizer, admin: NatsClient
) -> None:
    mine = AttemptKey("m-mine", "t1", 1)
    authorizer.open |= {mine, VICTIM}
    attempt = await Attempt().open(stack, mine)
    assert attempt.nc is not None
    try:
        for event in (completed(VICTIM, "forged-done"), started(VICTIM, "forged-start")):
            with pytest.raises(nats.errors.TimeoutError):
                await attempt.nc.jetstream().publish(subject_for(event), encode(event), timeout=1.0)
            await attempt.violation(subject_for(event))
            assert await stored_on(admin, subject_for(event)) == 0
    finally:
        await attempt.close()


def usage_of(key: AttemptKey, name: str = "usage") -> UsageRecorded:
    return UsageRecorded(
        **meta(key.mission_id, name),
        service="agent-runner",
        model="m",
        usage=Usage(input_tokens=10, output_tokens=5),
        step=name,
        task_id=key.task_id,
        attempt=key.attempt,
    )


def forged(kind: type[Event], key: AttemptKey) -> Event:
    """An event of ``kind`` reporting on ``key``, as a thief of another attempt would."""
    name = f"forged-{tag_of(kind)}-{key.task_id}-a{key.attempt}"
    if kind is AgentCompleted:
        return completed(key, name)
    if kind is UsageRecorded:
        return usage_of(key, name)
    if kind is AgentHeartbeat:
        return AgentHeartbeat(
            **meta(key.mission_id, name), task_id=key.task_id, attempt=key.attempt, runner_id="r1"
        )
    return TranscriptRecorded(
        **meta(key.mission_id, name),
        task_id=key.task_id,
        attempt=key.attempt,
        runner_id="r1",
        sequence=1,
        kind="note",
        text="done",
    )


def stream_of(event: Event) -> str:
    return TELEMETRY_STREAM if type(event) in TELEMETRY_TYPES else MISSIONS_STREAM


@pytest.mark.parametrize(
    "kind", [AgentCompleted, UsageRecorded, TranscriptRecorded, AgentHeartbeat]
)
@pytest.mark.parametrize(
    "victim",
    [AttemptKey("m-same", "t2", 1), AttemptKey("m-same", "t1", 2)],
    ids=["another-task", "another-attempt"],
)
async def test_an_attempt_cannot_report_on_other_work_of_its_mission(
    stack: Stack, authorizer: Authorizer, admin: NatsClient, kind: type[Event], victim: AttemptKey
) -> None:
    """With the credential of attempt 1 of t1: nothing for t2 of the same mission, nor
    for attempt 2 of t1, though both are open (held by other runners); the server
    refuses the publish, so the scheduler never sees it."""
    mine = AttemptKey("m-same", "t1", 1)
    authorizer.open |= {mine, victim}
    attempt = await Attempt().open(stack, mine)
    assert attempt.nc is not None
    event = forged(kind, victim)
    try:
        await attempt.nc.publish(subject_for(event), encode(event))
        await attempt.nc.flush()
        await attempt.violation(subject_for(event))
        assert await stored_on(admin, subject_for(event), stream_of(event)) == 0
        # Nor on the subject that names no attempt (how agent events were stored before).
        untasked = subject_for(event).rsplit(".", 2)[0]
        await attempt.nc.publish(untasked, encode(event))
        await attempt.nc.flush()
        await attempt.violation(f'"{untasked}"')
        assert await stored_on(admin, untasked, stream_of(event)) == 0
        # The control: the same kind of event, on its own attempt, is taken.
        own = forged(kind, mine)
        ack = await attempt.nc.jetstream().publish(subject_for(own), encode(own), timeout=5.0)
        assert ack.stream == stream_of(own)
    finally:
        await attempt.close()


@pytest.mark.parametrize("kind", [TaskReady, BranchMerged])
async def test_an_attempt_cannot_publish_what_is_not_an_agent_event(
    stack: Stack, authorizer: Authorizer, admin: NatsClient, kind: type[Event]
) -> None:
    key = AttemptKey(f"m-{kind.__name__.lower()}", "t1", 1)
    authorizer.open.add(key)
    attempt = await Attempt().open(stack, key)
    assert attempt.nc is not None
    event: Event
    if kind is TaskReady:
        task = PlannedTask(id="t1", title="x")
        event = TaskReady(**meta(key.mission_id, "ready"), task=task, attempt=2, model="x")
    else:
        event = BranchMerged(
            **meta(key.mission_id, "merged"),
            task_id="t1",
            attempt=1,
            merge_sha="0" * 40,
            integration_branch="main",
        )
    try:
        await attempt.nc.publish(subject_for(event), encode(event))
        await attempt.nc.flush()
        await attempt.violation(subject_for(event))
        assert await stored_on(admin, subject_for(event)) == 0
    finally:
        await attempt.close()


async def test_a_message_past_the_servers_largest_is_refused_at_the_door(
    stack: Stack, authorizer: Authorizer, admin: NatsClient
) -> None:
    """A hostile runner skips its client's own check of the server's largest message:
    the server refuses the message and drops the connection, nothing is stored, and the
    attempt connects again and publishes what fits."""
    key = AttemptKey("m-oversized", "t1", 1)
    authorizer.open.add(key)
    attempt = await Attempt().open(stack, key)
    assert attempt.nc is not None
    largest = attempt.nc.max_payload
    event = TranscriptRecorded(
        **meta(key.mission_id, "huge"),
        task_id="t1",
        attempt=1,
        runner_id="r1",
        sequence=0,
        kind="output",
        text="x" * largest,
    )
    subject = subject_for(event)
    try:
        attempt.nc._max_payload = 4 * largest  # what a hostile client would not check
        with contextlib.suppress(nats.errors.Error):
            await attempt.nc.publish(subject, encode(event))
            await attempt.nc.flush(timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # The server answers ``-ERR 'Maximum Payload Violation'`` and closes at once,
        # so the client may see only the reset.
        cut = ("maximum payload", "reset by peer", "unexpected eof")
        while not any(word in error.lower() for error in attempt.errors for word in cut):
            assert loop.time() < deadline, attempt.errors
            await asyncio.sleep(0.02)
        assert await stored_on(admin, subject, TELEMETRY_STREAM) == 0
    finally:
        await attempt.close()
    again = await Attempt().open(stack, key)
    assert again.nc is not None
    try:
        small = msgspec.structs.replace(event, event_id=f"{key.mission_id}-small", text="ok")
        ack = await again.nc.jetstream().publish(subject, encode(small), timeout=10)
        assert ack.stream == TELEMETRY_STREAM
    finally:
        await again.close()


@pytest.mark.parametrize("subject", ["aether.>", "_INBOX.>", "_INBOX.scheduler.>", "$SYS.>"])
async def test_an_attempt_cannot_listen(stack: Stack, authorizer: Authorizer, subject: str) -> None:
    key = AttemptKey("m-listen", "t1", 1)
    authorizer.open.add(key)
    attempt = await Attempt().open(stack, key)
    assert attempt.nc is not None
    try:
        await attempt.nc.subscribe(subject)
        await attempt.nc.flush()
        await attempt.violation(f'subscription to "{subject}"')
    finally:
        await attempt.close()


async def test_no_credential_for_an_attempt_that_is_not_open(
    stack: Stack, authorizer: Authorizer
) -> None:
    # Another task of the same mission, a later attempt of the same task, another mission.
    authorizer.open.add(AttemptKey("m-closed", "t1", 1))
    for key in (
        AttemptKey("m-closed", "t2", 1),
        AttemptKey("m-closed", "t1", 2),
        AttemptKey("m-other", "t1", 1),
    ):
        await refused(stack, key)


async def test_no_credential_for_an_attempt_another_runner_holds(
    stack: Stack, authorizer: Authorizer
) -> None:
    key = AttemptKey("m-held", "t1", 1)
    authorizer.open.add(key)
    holder = await Attempt().open(stack, key, runner="r-holder")
    try:
        await refused(stack, key, runner="r-thief")
        # The holder itself may connect again (its reconnection after a bus restart).
        again = await Attempt().open(stack, key, runner="r-holder")
        await again.close()
    finally:
        await holder.close()


async def test_a_runner_cannot_ask_an_attempt_credential_under_another_runners_name(
    stack: Stack, authorizer: Authorizer
) -> None:
    """A runner's secret is derived for its own name, which an attempt user ends with: under
    another runner's name (the host the attempt is delivered to, before that runner asks)
    it is refused, and the attempt stays free for that runner. Its own attempts it is
    granted. (With one secret shared by every runner, the thief was granted the attempt
    under the other's name, and became its holder.)"""
    key = AttemptKey("m-other-name", "t1", 1)
    own = AttemptKey("m-other-name", "t2", 1)
    authorizer.open |= {key, own}
    thiefs = stack.runner_secret("r-thief")
    await refused(stack, key, runner="r-victim", password=thiefs)
    victim = await Attempt().open(stack, key, runner="r-victim")
    await victim.close()
    mine = await Attempt().open(stack, own, runner="r-thief", secret=thiefs)
    await mine.close()


async def test_no_credential_without_the_runners_secret(
    stack: Stack, authorizer: Authorizer
) -> None:
    key = AttemptKey("m-secret", "t1", 1)
    authorizer.open.add(key)
    await refused(stack, key, password="guessed")
    # Nor with the master, which no runner holds.
    await refused(stack, key, password=stack.runner_master_secret)
    # The runner's NATS password is not the attempt secret either.
    await refused(stack, key, password=stack.nats_passwords["agent-runner"])
    # A forged "attempt" with a static user's name is that user's login, not an attempt's.
    with pytest.raises(nats.errors.Error, match=r"(?i)authoriz"):
        await nats.connect(
            stack.nats_server_url,
            user="agent-runner",
            password=stack.runner_secret("agent-runner"),
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )


async def test_the_credential_ends_with_its_attempt(
    stack: Stack, authorizer: Authorizer, admin: NatsClient
) -> None:
    """Once the attempt is closed, the credential expires and is not granted again: the
    connection is closed by the server and nothing more is stored."""
    authorizer.service.ttl_seconds = 2.0
    key = AttemptKey("m-ended", "t1", 1)
    authorizer.open.add(key)
    attempt = await Attempt().open(stack, key)
    assert attempt.nc is not None
    await attempt.nc.jetstream().publish(
        subject_for(started(key)), encode(started(key)), timeout=5.0
    )
    authorizer.open.discard(key)
    await refused(stack, key)
    # The server disconnects the expired credential; the reconnections are refused.
    await attempt.closed.wait()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await attempt.nc.publish(subject_for(completed(key)), encode(completed(key)))
    assert await stored_on(admin, subject_for(completed(key))) == 0


async def test_an_open_attempts_credential_is_renewed_when_it_expires(
    stack: Stack, authorizer: Authorizer, admin: NatsClient
) -> None:
    """The control of the test above: while the attempt is open, the runner's publisher
    asks again after the server closed the expired credential, and goes on publishing."""
    authorizer.service.ttl_seconds = 2.0
    key = AttemptKey("m-long", "t1", 1)
    authorizer.open.add(key)
    credentials = AttemptCredentials(stack.nats_server_url, stack.runner_secret("r1"), "r1")
    async with credentials.scope(key) as publisher:
        await publisher.publish(started(key))
        first = publisher.connection
        assert first is not None
        while not first.is_closed:  # until it expires and the server closes it
            await asyncio.sleep(0.05)
        ack = await publisher.publish(completed(key))
        assert ack.stream == MISSIONS_STREAM
        assert publisher.connection is not first
    assert await stored_on(admin, subject_for(completed(key))) == 1


async def test_a_stopping_runner_does_not_ask_again_for_a_refused_credential(
    stack: Stack, authorizer: Authorizer
) -> None:
    """Once the runner stops, a refused credential is not asked for again: the attempt's
    delivery is handed back at once instead of holding the stop for the tries left."""
    key = AttemptKey("m-never-open-at-stop", "t1", 1)
    credentials = AttemptCredentials(
        stack.nats_server_url, stack.runner_secret("host.r-1"), "host.r-1"
    )
    await credentials.stop()
    async with credentials.scope(key) as publisher:
        with pytest.raises(CredentialRefused, match="the runner is stopping"):
            await publisher.publish(started(key))
    # One try (nats-py retries a first connection once within it), not five.
    assert 1 <= authorizer.asked <= 2


async def test_the_runners_publisher_gives_up_on_a_refused_credential(
    stack: Stack, authorizer: Authorizer, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner's own publisher, for an attempt that is not open: it asks a few times,
    then raises ``CredentialRefused`` (its delivery is handed back), never asking forever;
    the attempt's next events are refused at once, without asking again. The refusals
    are logged as information, not as errors with a traceback each."""
    caplog.set_level(logging.INFO)
    key = AttemptKey("m-never-open", "t1", 1)
    credentials = AttemptCredentials(
        stack.nats_server_url, stack.runner_secret("host.r-1"), "host.r-1"
    )
    async with credentials.scope(key) as publisher:
        with pytest.raises(CredentialRefused, match="no NATS credential for attempt 1"):
            await publisher.publish(started(key))
        asked = authorizer.asked
        assert asked >= 1
        for event in (started(key), completed(key)):
            with pytest.raises(CredentialRefused, match="no NATS credential for attempt 1"):
                await asyncio.wait_for(publisher.publish(event), 1.0)
        assert authorizer.asked == asked
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any(r.getMessage() == "attempt connection error" for r in caplog.records)


# --- an ended attempt's connection is cut at once ------------------------------------------

# An ended mission's grace that no test waits out: its attempts keep their connections.
LONG_GRACE = 60.0
# One a test waits out.
SHORT_GRACE = 2.0


class SchedulerSide:
    """The scheduler's own pieces on the bus: its state, folded by its handler (whose
    decisions go to the stream on the scheduler's user), the authorizer that reads that
    state, and the cutter on the scheduler's user of the system account, as
    ``aether_scheduler.app.attempt_credentials`` wires them."""

    def __init__(
        self, stack: Stack, nc: NatsClient, mission_id: str, grace: float = LONG_GRACE
    ) -> None:
        self.nc = nc
        self.scenario = Scenario(mission_id=mission_id, now=datetime.now(UTC))
        self.projection: Projection[State] = Projection(State(), evolve)
        self.handlers = Handlers(
            self.projection,
            lambda: EventPublisher(nc.jetstream()),
            SCENARIO_CONFIG,
            clock=lambda: self.scenario.now,
        )
        settings = SchedulerSettings.from_env(
            {
                "NATS_URL": stack.nats_server_url,
                "AETHER_ATTEMPT_ISSUER_SEED": stack.attempt_issuer_seed,
                "AETHER_RUNNER_MASTER_SECRET": stack.runner_master_secret,
                "AETHER_SYSTEM_NATS_PASSWORD": stack.nats_passwords["scheduler-system"],
                "AETHER_ATTEMPT_STOP_GRACE_SECONDS": str(grace),
            }
        )
        made = attempt_credentials(self.projection, settings, self.handlers)
        assert made is not None
        self.authorizer, cutter = made
        assert cutter is not None
        self.cutter = cutter

    def start(self, *tasks: str) -> list[AttemptKey]:
        """The mission's tasks dispatched (each attempt open), as the scheduler's state."""
        self.scenario.start(*(scenario_task(t) for t in tasks))
        self.projection.state = self.scenario.state
        return [AttemptKey(self.scenario.mission_id, t, self.scenario.attempt(t)) for t in tasks]

    async def fold(self, event: Event) -> None:
        await self.handlers.handle(event, Delivery(sequence=0, num_delivered=1, pending=0))

    async def kicked(self) -> None:
        """Until every kick the folds so far asked for is answered."""
        await asyncio.gather(*self.cutter._kicks)


@pytest.fixture
async def scheduler(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[SchedulerSide]:
    nc = await nats.connect(
        stack.nats_server_url,
        user="scheduler",
        password=stack.nats_passwords["scheduler"],
        inbox_prefix="_INBOX.scheduler",
    )
    await ensure_streams(nc.jetstream(), StreamSettings())
    callspec = getattr(request.node, "callspec", None)
    suffix = callspec.id if callspec is not None else request.node.name.removeprefix("test_")
    # A test may ask for its grace (``indirect``): a short one, to see it run out.
    grace = float(getattr(request, "param", LONG_GRACE))
    side = SchedulerSide(stack, nc, f"m-cut-{suffix.replace('_', '-')[:48]}", grace)
    await side.cutter.start()
    await side.authorizer.serve(nc)
    try:
        yield side
    finally:
        await side.authorizer.stop()
        await side.cutter.stop()
        await nc.close()


def ending(key: AttemptKey, how: str) -> list[Event]:
    """The events that end ``key`` as ``how`` says (none: the timer ends it)."""
    m = key.mission_id
    failed = AgentFailed(
        **meta(m, "failed"), task_id=key.task_id, attempt=key.attempt, reason="boom"
    )
    if how == "completed":
        return [completed(key)]
    if how == "failed":  # retried: the next attempt is another credential
        return [failed]
    return []


@pytest.mark.parametrize("how", ["completed", "failed", "timed-out"])
async def test_an_ended_attempts_connection_is_cut_at_once(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient, how: str
) -> None:
    """The credential lives 120 s, but once the scheduler folds the attempt's end, the
    server closes the connection within a couple of seconds and it publishes nothing
    more; the other task's live attempt goes on, untouched."""
    key, live = scheduler.start("a", "b")
    attempt = await Attempt().open(stack, key)
    other = await Attempt().open(stack, live)
    assert attempt.nc is not None and other.nc is not None
    await scheduler.fold(started(key))
    await attempt.nc.jetstream().publish(
        subject_for(started(key)), encode(started(key)), timeout=5.0
    )
    ends = ending(key, how)
    for end in ends:
        await scheduler.fold(end)
    if not ends:
        scheduler.scenario.now += timedelta(seconds=SCENARIO_CONFIG.heartbeat_timeout_seconds + 1)
        await scheduler.handlers.on_tick()
    assert not attempt_open(scheduler.projection.state, key)
    async with asyncio.timeout(5.0):
        await attempt.closed.wait()
    assert scheduler.cutter.cut >= 1
    with pytest.raises(nats.errors.ConnectionClosedError):
        await attempt.nc.publish(subject_for(completed(key)), encode(completed(key)))
    assert await stored_on(admin, subject_for(completed(key))) == 0
    assert not other.closed.is_set() and other.nc.is_connected
    await other.nc.jetstream().publish(
        subject_for(started(live)), encode(started(live)), timeout=5.0
    )
    assert await stored_on(admin, subject_for(started(live))) == 1
    await attempt.close()
    await other.close()


async def test_a_cancelled_missions_attempt_reports_its_usage_and_stop_within_the_grace(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """A mission cancelled while one attempt runs, another waits for its runner (which
    has connected), and a third has no runner yet. The runner told to stop still has its
    last model call's usage and its stop report to publish: after the scheduler has
    folded the cancel (and sent every kick it decided), its connection is live, both
    are stored, and the holder may connect again. The attempt no runner asked for before
    the cancel is refused; the stop report folded, that attempt's connection is cut at
    once."""
    running, waiting, new = scheduler.start("a", "b", "c")
    attempts = [await Attempt().open(stack, key) for key in (running, waiting)]
    await scheduler.fold(started(running))
    await scheduler.fold(MissionCancelled(**meta(running.mission_id, "cancel"), reason="stop"))
    await scheduler.kicked()
    assert not any(attempt.closed.is_set() for attempt in attempts)
    await refused(stack, new)
    await refused(stack, running, runner="r-other")
    # The holder's reconnection (a bus restart, its credential expired) is granted.
    again = await Attempt().open(stack, running)
    await again.close()

    nc = attempts[0].nc
    assert nc is not None
    usage = usage_of(running, "usage-last-call")
    stop = AgentFailed(
        **meta(running.mission_id, "stopped"),
        task_id=running.task_id,
        attempt=running.attempt,
        reason="the mission was cancelled: stop",
        retryable=False,
    )
    for event in (usage, stop):
        await nc.jetstream().publish(subject_for(event), encode(event), timeout=5.0)
        assert await stored_on(admin, subject_for(event)) == 1
    await scheduler.fold(stop)
    async with asyncio.timeout(5.0):
        await attempts[0].closed.wait()
    await refused(stack, running)
    # The other, which has not reported, keeps its connection until the grace is over.
    assert not attempts[1].closed.is_set()
    await attempts[1].close()


@pytest.mark.parametrize("scheduler", [SHORT_GRACE], ids=["short-grace"], indirect=True)
async def test_a_cancelled_missions_attempt_that_never_reports_is_cut_after_the_grace(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """Its runner never reports the stop: the connection is kept through the grace
    (counted from the cancel's own time), then the server closes it, though its
    credential had two minutes left, with nothing more folded by the scheduler; it is
    not granted again."""
    (running,) = scheduler.start("a")
    attempt = await Attempt().open(stack, running)
    assert attempt.nc is not None
    await scheduler.fold(started(running))
    cancel = MissionCancelled(**meta(running.mission_id, "cancel"), reason="stop")
    await scheduler.fold(cancel)
    await scheduler.kicked()
    assert not attempt.closed.is_set()
    await attempt.nc.jetstream().publish(
        subject_for(usage_of(running)), encode(usage_of(running)), timeout=5.0
    )
    async with asyncio.timeout(SHORT_GRACE + 10.0):
        await attempt.closed.wait()
    closed_after = (datetime.now(UTC) - cancel.occurred_at).total_seconds()
    assert closed_after >= SHORT_GRACE
    assert scheduler.cutter.cut == 1
    await refused(stack, running)


async def test_the_servers_list_every_attempt_connection_page_by_page(
    stack: Stack, scheduler: SchedulerSide
) -> None:
    """What a restarted scheduler reads to find its predecessor's grants: every attempt
    connection the server holds, named by its attempt and runner, however many pages the
    list takes (one connection a page here); the services' own connections are not
    attempts."""
    keys = scheduler.start("a", "b")
    attempts = [await Attempt().open(stack, key, runner=f"r{n}") for n, key in enumerate(keys)]
    nc = scheduler.cutter._nc
    assert nc is not None
    held = await attempt_connections_held(nc, page=1)
    mine = sorted((c.key.task_id, c.runner_id) for c in held if c.key in keys)
    assert mine == [("a", "r0"), ("b", "r1")]
    assert len({(c.server_id, c.client_id) for c in held}) == len(held)
    for attempt in attempts:
        await attempt.close()


async def test_a_new_scheduler_cuts_what_its_predecessor_granted(
    stack: Stack, scheduler: SchedulerSide, admin: NatsClient
) -> None:
    """The process that granted two attempts' connections is gone (its memory of where
    they are with it). Its successor, from a state where one attempt has ended, finds
    both on the server as it starts: it cuts the ended one, and the other when it ends."""
    ended, live = scheduler.start("a", "b")
    attempts = [await Attempt().open(stack, key) for key in (ended, live)]
    await scheduler.authorizer.stop()
    await scheduler.cutter.stop()
    assert all(not attempt.closed.is_set() for attempt in attempts)

    successor = SchedulerSide(stack, scheduler.nc, scheduler.scenario.mission_id)
    successor.start("a", "b")
    await successor.fold(completed(ended))
    assert not attempt_open(successor.projection.state, ended)
    await successor.cutter.start()
    await successor.authorizer.serve(scheduler.nc)
    try:
        await successor.cutter.sweep()
        async with asyncio.timeout(5.0):
            await attempts[0].closed.wait()
        assert not attempts[1].closed.is_set()
        await successor.fold(completed(live, "completed-live"))
        async with asyncio.timeout(5.0):
            await attempts[1].closed.wait()
        assert successor.cutter.cut == 2
    finally:
        await successor.authorizer.stop()
        await successor.cutter.stop()


@pytest.mark.parametrize("cancelled", ["within-the-grace", "before-the-grace"])
async def test_a_new_scheduler_keeps_a_cancelled_missions_attempts_for_their_grace(
    stack: Stack, scheduler: SchedulerSide, cancelled: str
) -> None:
    """The scheduler that granted a running attempt's connection is gone; its mission
    is cancelled. Its successor, starting within the grace that follows the cancel's own
    time, keeps the connection (the runner may still report its stop) and cuts it when
    the grace is over; starting after it, it cuts the connection as it starts."""
    (running,) = scheduler.start("a")
    attempt = await Attempt().open(stack, running)
    await scheduler.authorizer.stop()
    await scheduler.cutter.stop()

    successor = SchedulerSide(stack, scheduler.nc, scheduler.scenario.mission_id, grace=SHORT_GRACE)
    successor.start("a")
    await successor.fold(started(running))
    ago = 0.0 if cancelled == "within-the-grace" else SHORT_GRACE + 1.0
    cancel = MissionCancelled(**meta(running.mission_id, "cancel"), reason="stop")
    cancel = msgspec.structs.replace(
        cancel, occurred_at=cancel.occurred_at - timedelta(seconds=ago)
    )
    await successor.fold(cancel)
    await successor.cutter.start()
    await successor.authorizer.serve(scheduler.nc)
    try:
        await successor.cutter.sweep()
        await successor.kicked()
        if cancelled == "within-the-grace":
            assert not attempt.closed.is_set()
            # The holder found on the server connects again; no other runner does.
            again = await Attempt().open(stack, running)
            await again.close()
            await refused(stack, running, runner="r-other")
        async with asyncio.timeout(SHORT_GRACE + 10.0):
            await attempt.closed.wait()
        assert (datetime.now(UTC) - cancel.occurred_at).total_seconds() >= SHORT_GRACE
        assert successor.cutter.cut >= 1
    finally:
        await successor.authorizer.stop()
        await successor.cutter.stop()
        await attempt.close()


class SchedulerProcess:
    """``python -m aether_scheduler`` on the stack's bus, with the environment ``aether up``
    gives it (its users, the issuer's seed, the runners' secret), and ``extra``."""

    def __init__(self, stack: Stack, log: Path, **extra: str) -> None:
        self.stack = stack
        self.log = log
        self.env = {**stack.service_env("scheduler"), "PORT": str(free_port()), **extra}
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> SchedulerProcess:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aether_scheduler"],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{self.env['PORT']}/readyz"
        async with httpx.AsyncClient(verify=tls.shared()) as http:
            for _ in range(600):
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return self
                await asyncio.sleep(0.1)
        raise AssertionError(f"the scheduler is not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.mark.slow
async def test_a_restarted_scheduler_process_cuts_the_connections_its_predecessor_granted(
    stack: Stack, admin: NatsClient, tmp_path: Path
) -> None:
    """A scheduler process grants two attempts their connections and is killed: where
    they are was known to it alone. One attempt ends meanwhile (its runner reports while
    no scheduler runs). The next scheduler process cuts that connection as it starts, and
    the other one when its attempt ends, though each credential has ten minutes left."""
    m = "m-restarted-scheduler"
    # Ten minutes: a connection closed within the test was cut, not expired.
    settings = {
        "AETHER_ATTEMPT_CREDENTIAL_SECONDS": "600",
        "AETHER_HEARTBEAT_TIMEOUT_SECONDS": "600",
    }
    await ensure_streams(admin.jetstream(), StreamSettings())
    publisher = EventPublisher(admin.jetstream())
    await publisher.publish_all(
        [
            MissionRequested(**meta(m, "requested"), repository="/r", requirement="r"),
            RepositoryPrepared(
                **meta(m, "prepared"),
                repository_path="/r",
                base_branch="main",
                base_sha="s",
                integration_branch=f"aether/{m}",
            ),
            PlanProduced(
                **meta(m, "planned"),
                version=1,
                tasks=[
                    PlannedTask(id="a", title="A", files=["a"]),
                    PlannedTask(id="b", title="B", files=["b"]),
                ],
            ),
        ]
    )
    first = await SchedulerProcess(stack, tmp_path / "first.log", **settings).start()
    attempts: list[Attempt] = []
    second: SchedulerProcess | None = None
    try:
        async with EventLog(admin, m) as log:
            await publisher.publish(PlanApproved(**meta(m, "approved"), version=1))
            await log.wait_for(lambda log: len(log.of(TaskReady)) == 2, timeout=60)
            keys = {e.task.id: AttemptKey(m, e.task.id, e.attempt) for e in log.of(TaskReady)}
        ended, live = keys["a"], keys["b"]
        attempts = [await Attempt().open(stack, key) for key in (ended, live)]
        first.kill()
        for attempt, key in zip(attempts, (ended, live), strict=True):
            assert attempt.nc is not None
            report = started(key, f"started-{key.task_id}")
            await attempt.nc.jetstream().publish(subject_for(report), encode(report), timeout=5)
        assert attempts[0].nc is not None
        result = completed(ended, "completed-a")
        await attempts[0].nc.jetstream().publish(subject_for(result), encode(result), timeout=5)

        second = await SchedulerProcess(stack, tmp_path / "second.log", **settings).start()
        async with asyncio.timeout(30):
            await attempts[0].closed.wait()
        assert not attempts[1].closed.is_set()
        assert attempts[1].nc is not None
        result = completed(live, "completed-b")
        await attempts[1].nc.jetstream().publish(subject_for(result), encode(result), timeout=5)
        async with asyncio.timeout(30):
            await attempts[1].closed.wait()
    finally:
        first.kill()
        if second is not None:
            second.kill()
        for attempt in attempts:
            await attempt.close()


async def test_the_system_user_can_only_cut_connections(stack: Stack, admin: NatsClient) -> None:
    """The scheduler's user of the system account publishes no mission event and asks
    the servers nothing but to close a connection and to list the global account's
    connections: not the system account's, nor every account's."""
    # The stream exists, so that "nothing stored" means refused, not dropped unheard.
    await ensure_streams(admin.jetstream(), StreamSettings())
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error).lower())

    nc = await nats.connect(
        stack.nats_server_url,
        user="scheduler-system",
        password=stack.nats_passwords["scheduler-system"],
        inbox_prefix="_INBOX.scheduler-system",
        error_cb=on_error,
    )
    key = AttemptKey("m-system", "t1", 1)
    refused = (
        subject_for(completed(key)).lower(),
        "mission_cancelled",
        "$sys.req.server.ping",
        "$sys.req.server.ping.connz",
        "$sys.req.account.sys.connz",
        "aether.>",
    )
    try:
        await nc.publish(subject_for(completed(key)), encode(completed(key)))
        await nc.publish("aether.mission.m-system.mission_cancelled", b"{}")
        for request in ("$SYS.REQ.SERVER.PING", "$SYS.REQ.SERVER.PING.CONNZ"):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(request, b"", timeout=1.0)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("$SYS.REQ.ACCOUNT.SYS.CONNZ", b"", timeout=1.0)
        await nc.subscribe("aether.>")
        await nc.flush(timeout=2.0)
        # The server's refusals reach the error callback on their own time (on a busy
        # machine, after the flush's answer): waited for, not assumed.
        deadline = asyncio.get_running_loop().time() + 10.0
        while not all(any(subject in e for e in errors) for subject in refused):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    for subject in refused:
        assert any("permissions violation" in e and subject in e for e in errors), (
            subject,
            errors,
        )
    assert await stored_on(admin, subject_for(completed(key))) == 0
    assert await stored_on(admin, "aether.mission.m-system.>") == 0


HEADERS = {
    "rollup-all": {"Nats-Rollup": "all"},
    "rollup-sub": {"Nats-Rollup": "sub"},
    "ttl": {"Nats-TTL": "1s"},
    "ttl-never": {"Nats-TTL": "never"},
    "expected-stream": {"Nats-Expected-Stream": "AETHER_LEASES"},
}


@pytest.mark.parametrize("name", sorted(HEADERS))
async def test_an_attempts_own_subject_takes_no_header_that_purges_or_expires(
    stack: Stack, authorizer: Authorizer, admin: NatsClient, name: str
) -> None:
    """The headers JetStream acts on, sent with an agent event on the attempt's own
    subject: a roll-up would purge the whole stream (every mission's history) or the
    attempt's earlier events, a TTL would have the server expire the event later, and
    none of it is the attempt's to decide. The streams take neither; another
    mission's history and the attempt's own earlier event stay."""
    headers = HEADERS[name]
    victim = AttemptKey("m-rolled-victim", "t1", 1)
    mine = AttemptKey(f"m-header-{name}", "t1", 1)
    authorizer.open |= {victim, mine}
    held = await Attempt().open(stack, victim)
    attempt = await Attempt().open(stack, mine)
    assert held.nc is not None and attempt.nc is not None
    try:
        victims = started(victim, f"victim-{mine.mission_id}")
        await held.nc.jetstream().publish(subject_for(victims), encode(victims), timeout=5.0)
        first = started(mine, "first")
        await attempt.nc.jetstream().publish(subject_for(first), encode(first), timeout=5.0)
        before = (await admin.jetstream().stream_info(MISSIONS_STREAM)).state.messages
        victims_before = await stored_on(admin, subject_for(victims))
        assert victims_before >= 1
        usage = usage_of(mine, "with-header")
        ack = None
        with contextlib.suppress(nats.js.errors.APIError):
            ack = await attempt.nc.jetstream().publish(
                subject_for(usage), encode(usage), timeout=5.0, headers=headers
            )
        # Refused outright: a roll-up or a TTL the stream does not allow, a stream that
        # is not this one.
        assert ack is None, ack
        state = (await admin.jetstream().stream_info(MISSIONS_STREAM)).state
        assert state.messages >= before
        assert await stored_on(admin, subject_for(victims)) == victims_before
        assert await stored_on(admin, subject_for(first)) == 1
        assert await stored_on(admin, subject_for(usage)) == 0
    finally:
        await attempt.close()
        await held.close()
