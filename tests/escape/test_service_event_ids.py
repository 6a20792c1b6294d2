"""A service's events cannot be dropped as duplicates by an attempt's credential.

The stream's duplicate window is per stream, whatever the subject: an attempt's credential
may store, on its own attempt's subjects, a message under any ``Nats-Msg-Id``. The ids of
the services' own events were derived from public parts (decision 0004), so such a
credential could take the id of a service's next event (a ``BranchMerged``, a
``MissionCompleted``) first; the service's event was then acknowledged as a duplicate, never
stored, and taken for done. The services now key their steps' ids with a key of the
deployment's event id secret, which no runner holds (``aether_events.ids``,
``aether_runtime.event_ids``, decision 0031), and a publish acknowledged as a duplicate of
another message fails rather than passing for done.

These run against the NATS server ``aether up`` starts, with its generated configuration
and the callout (an attempt's credential granted by the scheduler's authorizer), each
service publishing with its own user through the runtime's publisher.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_events import (
    AgentCompleted,
    BranchMerged,
    MissionRequested,
    PlanApproved,
    PlanProduced,
    TaskReady,
    caused_by,
    public_step_event_id,
    service_id_key,
    step_ids,
)
from aether_events.catalogue import PlannedTask
from aether_events.ids import keyed_id
from aether_gateway.domain import commands
from aether_gateway.domain.model import Mission
from aether_git_broker.domain.outcomes import MergeOutcome, merge_event
from aether_runtime import metrics
from aether_runtime.attempt_auth import AttemptKey
from aether_runtime.event_ids import EventIdSquatted, configure
from aether_runtime.service import CountingPublisher
from aether_runtime.settings import RuntimeSettings
from tests.escape import test_attempt_credentials as credentials
from tests.escape import test_attempt_event_ids as attempt_ids
from tests.escape.test_attempt_credentials import Attempt
from tests.escape.test_attempt_event_ids import squat, stored

# The server ``aether up`` starts, its administrator's connection, and the scheduler's
# authorizer with attempt a/1's credential in a thief's hands (b/1 open beside it).
stack = credentials.stack
admin = credentials.admin
scheduler = attempt_ids.scheduler
thief = attempt_ids.thief


@pytest.fixture
def keyed(stack: Stack) -> Iterator[bytes]:
    """This process keys its step ids as every service of the stack does (``aether up``
    hands each the same secret); the public ids again afterwards."""
    secret = stack.load_event_id_secret()
    settings = RuntimeSettings(nats_user="git-broker", event_id_secret=secret)
    key = configure("git-broker", settings)
    assert key == service_id_key(secret)
    try:
        yield key
    finally:
        configure("agent-runner", RuntimeSettings())


async def service_publisher(stack: Stack, service: str) -> tuple[NatsClient, CountingPublisher]:
    """A connection of ``service``'s own user and the runtime's publisher on it."""
    nc = await nats.connect(
        stack.nats_server_url,
        user=service,
        password=stack.nats_passwords[service],
        inbox_prefix=f"_INBOX.{service}",
    )
    return nc, CountingPublisher(nc.jetstream(), service)


@pytest.fixture
async def broker(stack: Stack) -> AsyncIterator[CountingPublisher]:
    nc, publisher = await service_publisher(stack, "git-broker")
    try:
        yield publisher
    finally:
        await nc.close()


def ready(key: AttemptKey) -> TaskReady:
    return TaskReady(
        event_id=f"ready-{uuid.uuid4().hex}",
        mission_id=key.mission_id,
        occurred_at=datetime.now(UTC),
        correlation_id=f"corr-{key.mission_id}",
        task=PlannedTask(id=key.task_id, title=key.task_id),
        attempt=key.attempt,
        model="m",
    )


def merged(key: AttemptKey) -> BranchMerged:
    """The git broker's BranchMerged for ``key``, built by its own constructor."""
    completed = AgentCompleted(
        **caused_by(ready(key), datetime.now(UTC), step_ids.agent_completed(key.task_id, 1)),
        task_id=key.task_id,
        attempt=key.attempt,
        commit_sha="1" * 40,
        branch=f"aether/{key.mission_id}/{key.task_id}",
    )
    outcome = MergeOutcome(kind="merged", sha="2" * 40, files=("b.txt",))
    event = merge_event(completed, datetime.now(UTC), f"aether/{key.mission_id}", outcome)
    assert isinstance(event, BranchMerged)
    return event


async def test_a_services_id_of_before_sent_first_no_longer_drops_its_event(
    stack: Stack,
    keyed: bytes,
    broker: CountingPublisher,
    admin: NatsClient,
    thief: tuple[AttemptKey, Attempt],
) -> None:
    """With attempt a/1's credential, the thief stores on its own subject a message under
    the id b/1's BranchMerged derives from public parts (what the git broker stored it
    under before). The broker's BranchMerged is stored all the same, under its keyed id."""
    own, attempt = thief
    victim = AttemptKey(own.mission_id, "b", 1)
    public = public_step_event_id(victim.mission_id, step_ids.branch_merged("b", 1))
    await squat(attempt, own, public)

    event = merged(victim)
    ack = await broker.publish(event)
    assert not ack.duplicate, "the broker's BranchMerged was dropped as a duplicate"
    [(msg_id, found)] = await stored(admin, event)
    assert isinstance(found, BranchMerged) and found.task_id == "b"
    assert msg_id == found.event_id == keyed_id(keyed, public) != public


async def test_a_duplicate_of_another_message_fails_the_publish_and_is_counted(
    stack: Stack,
    keyed: bytes,
    broker: CountingPublisher,
    admin: NatsClient,
    thief: tuple[AttemptKey, Attempt],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Were the keyed id known (a leaked secret), the thief's message stored first under it
    is found: the broker's publish raises instead of passing for stored, says so with the
    mission's id, and counts it."""
    own, attempt = thief
    victim = AttemptKey(own.mission_id, "b", 1)
    event = merged(victim)
    await squat(attempt, own, event.event_id)
    counter = metrics.EVENT_ID_SQUATTED.labels("git-broker", "branch_merged")
    before = counter._value.get()
    with caplog.at_level(logging.ERROR, "aether.runtime.event_ids"), pytest.raises(EventIdSquatted):
        await broker.publish(event)
    assert counter._value.get() == before + 1
    [record] = [r for r in caplog.records if r.name == "aether.runtime.event_ids"]
    assert record.mission_id == victim.mission_id  # type: ignore[attr-defined]
    assert await stored(admin, event) == []


async def test_a_repeated_step_is_a_duplicate_and_passes(
    stack: Stack, keyed: bytes, broker: CountingPublisher, admin: NatsClient
) -> None:
    """Exactly once is kept: the broker publishing the same step again (a redelivery, a
    restart: built again, at another time) is dropped as a duplicate of its own event."""
    key = AttemptKey(f"m-svc-{uuid.uuid4().hex[:8]}", "b", 1)
    first = await broker.publish(merged(key))
    again = await broker.publish(merged(key))
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    assert len(await stored(admin, merged(key))) == 1


async def test_the_same_step_taken_by_two_services_is_stored_once(
    stack: Stack, keyed: bytes, admin: NatsClient
) -> None:
    """A person's approval (the gateway's) and the automatic one (the scheduler's) of the
    same plan, each published with its service's own user, name one id: the second is a
    duplicate of the first, and passes."""
    mission_id = f"m-svc-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    request = MissionRequested(
        event_id=f"req-{mission_id}",
        mission_id=mission_id,
        occurred_at=now,
        correlation_id=f"req-{mission_id}",
        repository="/nowhere",
        requirement="r",
    )
    plan = PlanProduced(
        **caused_by(request, now, step_ids.planner_outcome("x")), version=1, tasks=[]
    )
    mission = Mission(
        id=mission_id,
        status="awaiting_approval",
        repository="/nowhere",
        base_branch="main",
        requirement="r",
        correlation_id=request.correlation_id,
        created_at=now,
        updated_at=now,
        plan_version=1,
    )
    by_person = commands.approve(mission, 1, now, "alice")
    automatic = PlanApproved(
        **caused_by(plan, now, step_ids.plan_approved(1)), version=1, automatic=True
    )
    public = public_step_event_id(mission_id, step_ids.plan_approved(1))
    assert by_person.event_id == automatic.event_id == keyed_id(keyed, public)
    gateway_nc, gateway = await service_publisher(stack, "gateway")
    scheduler_nc, scheduler = await service_publisher(stack, "scheduler")
    try:
        first = await gateway.publish(by_person)
        second = await scheduler.publish(automatic)
    finally:
        await gateway_nc.close()
        await scheduler_nc.close()
    assert not first.duplicate and second.duplicate and second.seq == first.seq
    [(_, found)] = await stored(admin, by_person)
    assert isinstance(found, PlanApproved) and found.approved_by == "alice"
