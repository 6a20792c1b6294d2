"""A consumer that names the event types it folds gets only those, and an existing durable
is brought to that filter without losing its place."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    AgentCompleted,
    Event,
    EventPublisher,
    MissionPaused,
    MissionRequested,
    derived_id,
    encode,
    ensure_streams,
    type_subject,
    type_subjects,
)
from aether_runtime import ConsumerSpec, Delivery, Projection, RuntimeSettings, Service


def requested(mission: str) -> MissionRequested:
    return MissionRequested(
        event_id=derived_id(mission, "requested"),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id(mission, "requested"),
        repository="/r",
        requirement="x",
    )


def paused(mission: str) -> MissionPaused:
    return MissionPaused(
        event_id=derived_id(mission, "paused"),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id(mission, "requested"),
    )


async def test_an_existing_durable_gets_the_types_filter_and_keeps_its_place(
    nc: NatsClient, nats_url: str
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    # A durable as an older build made it: every mission event, one at a time.
    await js.add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            durable_name="folds-requests",
            name="folds-requests",
            filter_subject=ALL_MISSION_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=1,
        ),
    )
    publisher = EventPublisher(js)
    await publisher.publish(requested("m-before"))
    sub = await js.pull_subscribe_bind("folds-requests", stream=MISSIONS_STREAM)
    (taken,) = await sub.fetch(1)
    await taken.ack_sync()  # handled by the older build
    await sub.unsubscribe()

    seen: list[tuple[str, str]] = []
    arrived = asyncio.Event()

    async def handler(event: Event, delivery: Delivery) -> None:
        seen.append((type(event).__name__, event.mission_id))
        if event.mission_id == "m-after":
            arrived.set()

    svc = Service(
        name="filters", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0
    )
    svc.consume(
        ConsumerSpec(
            durable="folds-requests",
            subject=ALL_MISSION_EVENTS,
            handler=handler,
            types=(MissionRequested,),
        )
    )
    await svc.start()
    try:
        await publisher.publish(paused("m-before"))  # a type it does not fold
        await publisher.publish(requested("m-after"))
        await asyncio.wait_for(arrived.wait(), timeout=20)
        info = await js.consumer_info(MISSIONS_STREAM, "folds-requests")
    finally:
        await svc.stop()
    assert seen == [("MissionRequested", "m-after")]
    assert info.config.filter_subjects == [type_subject(MissionRequested)]
    assert not info.config.filter_subject


def completed(mission: str, task_id: str) -> AgentCompleted:
    return AgentCompleted(
        event_id=derived_id(mission, "completed", task_id),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id(mission, "requested"),
        task_id=task_id,
        attempt=1,
        commit_sha="0" * 40,
        branch="b",
    )


async def test_an_attempts_events_are_found_on_both_subject_forms(
    nc: NatsClient, nats_url: str
) -> None:
    """An agent event stored on the four-token subject (before subjects named the
    attempt) and one on the attempt's subject: a service folding that type gets both,
    from its start-up replay and from its durable. One stored on another attempt's
    subject (what that attempt's credential could publish about this one) it does not."""
    js = nc.jetstream()
    await ensure_streams(js)
    old = completed("m-old", "t1")
    await js.publish("aether.mission.m-old.agent_completed", encode(old))
    publisher = EventPublisher(js)
    new = completed("m-new", "t2")
    await publisher.publish(new)
    forged = completed("m-new", "t3")
    await js.publish("aether.mission.m-new.agent_completed.t2.1", encode(forged))
    await publisher.publish(paused("m-new"))

    def evolve(state: list[str], event: Event) -> list[str]:
        return [*state, event.event_id] if isinstance(event, AgentCompleted) else state

    projection: Projection[list[str]] = Projection([], evolve)
    await projection.rebuild(js, "filters", types=(AgentCompleted,))
    assert projection.state == [old.event_id, new.event_id]

    seen: list[str] = []
    arrived = asyncio.Event()

    async def handler(event: Event, delivery: Delivery) -> None:
        seen.append(event.event_id)
        if isinstance(event, MissionPaused):
            arrived.set()

    svc = Service(
        name="filters", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0
    )
    svc.consume(
        ConsumerSpec(
            durable="folds-completions",
            subject=ALL_MISSION_EVENTS,
            handler=handler,
            types=(AgentCompleted, MissionPaused),
        )
    )
    await svc.start()
    try:
        await asyncio.wait_for(arrived.wait(), timeout=20)
        info = await js.consumer_info(MISSIONS_STREAM, "folds-completions")
    finally:
        await svc.stop()
    assert seen == [old.event_id, new.event_id, paused("m-new").event_id]
    assert info.config.filter_subjects == sorted(
        [*type_subjects(AgentCompleted), type_subject(MissionPaused)]
    )
