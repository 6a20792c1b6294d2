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
    Event,
    EventPublisher,
    MissionPaused,
    MissionRequested,
    derived_id,
    ensure_streams,
    type_subject,
)
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service


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
