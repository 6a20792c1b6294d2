"""A paced lane (``ConsumerSpec.pace``, the gateway's read model): the first event after a
quiet spell at once, what follows in sweeps of everything stored meanwhile, none lost,
none twice, in order; ``hurry`` sweeps now; a lost request is swept again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from aether.infra import EmbeddedNats
from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    MissionRequested,
    derived_id,
    ensure_streams,
)
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service
from aether_runtime.pull import Puller

HOUR = 3600.0


def requested(mission: str) -> MissionRequested:
    return MissionRequested(
        event_id=derived_id(mission, "requested"),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        repository="/r",
        requirement="x",
    )


def consumer(name: str, max_ack_pending: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        name=name,
        filter_subject=ALL_MISSION_EVENTS,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=HOUR,
        max_deliver=20,
        max_ack_pending=max_ack_pending,
    )


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_first_event_comes_at_once_the_rest_in_one_sweep(nc: NatsClient) -> None:
    """Paced by an hour: only ``hurry`` sweeps. A standing lane would have delivered the
    second to fifth events as each was stored."""
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("paced", 64))
    publisher = EventPublisher(js)
    seen: list[int] = []

    async def handle(msg: Msg) -> None:
        seen.append(msg.metadata.sequence.stream)
        await msg.ack()

    puller = Puller(nc, MISSIONS_STREAM, "paced", nc.new_inbox(), handle, standing=True, pace=HOUR)
    await puller.start()
    try:
        await publisher.publish(requested("m-1"))
        await until(lambda: seen == [1])  # quiet: delivered at once
        for i in range(2, 6):
            await publisher.publish(requested(f"m-{i}"))
        await asyncio.sleep(0.5)
        assert seen == [1], "the lane waits for its sweep"
        asked = puller.requests
        puller.hurry()
        await until(lambda: len(seen) == 5)
        assert seen == [1, 2, 3, 4, 5]
        assert puller.requests == asked + 1, "the four came in one sweep"
        # A sweep that finds nothing leaves the lane quiet: the next event comes at once.
        puller.hurry()
        await until(lambda: puller.requests == asked + 3)  # the empty sweep, then a wait
        await publisher.publish(requested("m-6"))
        await until(lambda: seen == [1, 2, 3, 4, 5, 6])
    finally:
        await puller.stop()


async def test_sweeps_bring_every_event_once_in_order_within_the_limit_in_flight(
    nc: NatsClient,
) -> None:
    """Eight in flight at most on the server, sweeps asking for many: a sweep stopped by
    the limit ends, and the next brings the rest."""
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("limited", 8))
    publisher = EventPublisher(js)
    seen: list[int] = []
    held: list[Msg] = []

    async def handle(msg: Msg) -> None:
        seen.append(msg.metadata.sequence.stream)
        held.append(msg)
        if len(held) >= 4:  # settled in runs, as the read model settles a run's events
            for taken in held:
                await taken.ack()
            held.clear()

    puller = Puller(
        nc, MISSIONS_STREAM, "limited", nc.new_inbox(), handle, standing=True, pace=0.05
    )
    await puller.start()
    try:
        for i in range(60):
            await publisher.publish(requested(f"m-{i:02d}"))
        await until(lambda: len(seen) >= 60)
        await asyncio.sleep(0.3)  # nothing more, nothing twice
        assert seen == list(range(1, 61))
    finally:
        await puller.stop()


async def test_a_paced_service_consumer_is_hurried_by_the_service(
    nats_url: str, nc: NatsClient
) -> None:
    """The gateway's shape: one lane handing its messages off, paced; ``Service.hurry``
    sweeps it at once."""
    order: list[str] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        order.append(event.mission_id)
        delivery.release()

    svc = Service(
        name="paced", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0
    )
    svc.consume(
        ConsumerSpec(
            durable="paced-service",
            subject=ALL_MISSION_EVENTS,
            handler=handler,
            hand_offs=7,
            confirm_settlements=False,
            pace=HOUR,
        )
    )
    js = nc.jetstream()  # the fixture's: the streams start empty
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await svc.start()
    try:
        await publisher.publish(requested("m-a"))
        await until(lambda: order == ["m-a"])
        await publisher.publish(requested("m-b"))
        await publisher.publish(requested("m-c"))
        await asyncio.sleep(0.5)
        assert order == ["m-a"]
        svc.hurry()
        await until(lambda: order == ["m-a", "m-b", "m-c"])
        # Each settled once folded, as the gateway's are.
        info = await js.consumer_info(MISSIONS_STREAM, "paced-service")
        while info.ack_floor.stream_seq < 3:
            await asyncio.sleep(0.05)
            info = await js.consumer_info(MISSIONS_STREAM, "paced-service")
    finally:
        await svc.stop()


async def test_a_paced_lane_sweeps_at_once_when_its_request_is_lost_with_the_server(
    nats_server: EmbeddedNats,
) -> None:
    """Busy (a sweep due an hour on) when the server restarts: the wake at the reconnect
    sweeps what was stored meanwhile, without waiting for the turn."""
    lanes: list[Puller] = []

    async def reconnected() -> None:
        for lane in lanes:
            lane.wake()

    nc = await nats.connect(
        nats_server.url,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        reconnected_cb=reconnected,
    )
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("paced-woken", 64))
    publisher = EventPublisher(js, timeout=1.0)
    seen: list[int] = []

    async def handle(msg: Msg) -> None:
        seen.append(msg.metadata.sequence.stream)
        await msg.ack_sync()

    puller = Puller(
        nc, MISSIONS_STREAM, "paced-woken", nc.new_inbox(), handle, standing=True, pace=HOUR
    )
    lanes.append(puller)
    await puller.start()
    try:
        await publisher.publish(requested("m-first"))
        await until(lambda: seen == [1])  # the lane is busy now: its next sweep an hour on
        nats_server.kill()
        nats_server.start()
        while True:
            try:
                await publisher.publish(requested("m-after"))
                break
            except Exception:
                await asyncio.sleep(0.05)  # the server is not answering yet
        await until(lambda: seen == [1, 2], within=60)
    finally:
        await puller.stop()
        await nc.close()
