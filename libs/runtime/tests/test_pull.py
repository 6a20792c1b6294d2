"""A consumer's lane: one standing pull request for a one-at-a-time consumer's many
messages, in order and each as soon as it is there; a shared lane asks only for what it
can hold; a message delivered again after its lane settled it is not handled twice. A
paced lane (``ConsumerSpec.pace``, the gateway's read model): the first event after a
quiet spell at once, what follows in sweeps of everything stored meanwhile, none lost,
none twice, in order; ``hurry`` sweeps now; a lost request is swept again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nats
import pytest
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


async def test_a_standing_request_delivers_many_messages_in_order(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("standing", 1))
    publisher = EventPublisher(js)
    for i in range(30):
        await publisher.publish(requested(f"m-{i}"))
    seen: list[int] = []
    asking: list[int] = []
    done = asyncio.Event()

    async def handle(msg: Msg) -> None:
        seen.append(msg.metadata.sequence.stream)
        asking.append(puller.asking)
        await msg.ack_sync()
        if len(seen) == 31:
            done.set()

    # A request lives an hour here: only the server's one-at-a-time delivery paces it.
    puller = Puller(
        nc, MISSIONS_STREAM, "standing", nc.new_inbox(), handle, standing=True, expires=HOUR
    )
    await puller.start()
    try:
        while len(seen) < 30:
            await asyncio.sleep(0.01)
        # One more, published to a lane that waits: it comes on the request waiting (an
        # hour long here), as soon as it is there.
        await publisher.publish(requested("m-late"))
        await asyncio.wait_for(done.wait(), 30)
        assert seen == list(range(1, 32))
        # Every message came on the one request, which still asked for more meanwhile.
        assert puller.requests == 1
        assert all(left > 0 for left in asking)
    finally:
        await puller.stop()


async def test_a_lane_that_shares_its_consumer_holds_one_message_at_a_time(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    # Room for many on the server: the lane itself must ask for no more than it holds.
    await js.add_consumer(MISSIONS_STREAM, consumer("shared", 1000))
    publisher = EventPublisher(js)
    for i in range(5):
        await publisher.publish(requested(f"m-{i}"))
    pending_seen: list[int] = []
    seen: list[int] = []

    async def handle(msg: Msg) -> None:
        info = await js.consumer_info(MISSIONS_STREAM, "shared")
        pending_seen.append(info.num_ack_pending)
        seen.append(msg.metadata.sequence.stream)
        await msg.ack_sync()

    puller = Puller(
        nc, MISSIONS_STREAM, "shared", nc.new_inbox(), handle, standing=False, expires=HOUR
    )
    await puller.start()
    try:
        while len(seen) < 5:
            await asyncio.sleep(0.01)
        assert seen == [1, 2, 3, 4, 5]
        assert pending_seen == [1] * 5
    finally:
        await puller.stop()


async def test_a_settled_message_delivered_again_is_not_handled_twice(
    nats_url: str, nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that holds the event loop past the ack wait (no in-progress ack can go
    out meanwhile): the server delivers the message again, onto the lane's standing
    request; the lane's settlement of the first delivery covers it."""
    calls: list[str] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        calls.append(event.mission_id)
        if event.mission_id == "m-blocking":
            time.sleep(4.0)  # the handler's own (blocking) work, four ack waits long

    svc = Service(
        name="blocked", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0
    )
    svc.consume(
        ConsumerSpec(
            durable="blocked", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=1.0
        )
    )
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    caplog.set_level(logging.INFO, logger="aether.runtime")
    await svc.start()
    try:
        await publisher.publish(requested("m-blocking"))
        await publisher.publish(requested("m-next"))
        while "m-next" not in calls:
            await asyncio.sleep(0.05)
        info = await js.consumer_info(MISSIONS_STREAM, "blocked")
        while info.ack_floor.stream_seq < 2:
            await asyncio.sleep(0.05)
            info = await js.consumer_info(MISSIONS_STREAM, "blocked")
        assert calls == ["m-blocking", "m-next"]
        assert "a settled message delivered again is settled again" in caplog.messages
    finally:
        await svc.stop()


async def waking(server: EmbeddedNats, lanes: list[Puller]) -> NatsClient:
    """A connection to ``server`` that wakes ``lanes`` at every reconnect, as the
    service's does."""

    async def reconnected() -> None:
        for lane in lanes:
            lane.wake()

    return await nats.connect(
        server.url,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        reconnected_cb=reconnected,
    )


async def restarted_with(server: EmbeddedNats, publisher: EventPublisher, event: Event) -> None:
    """Kill ``server`` and start it again, then publish ``event`` once it answers."""
    server.kill()
    server.start()
    while True:
        try:
            await publisher.publish(event)
            return
        except Exception:
            await asyncio.sleep(0.05)  # the server is not answering yet


async def test_a_lane_asks_again_at_once_when_its_request_is_lost_with_the_server(
    nats_server: EmbeddedNats,
) -> None:
    """Its request lives an hour: only the wake at the reconnect makes the lane ask the
    restarted server again."""
    lanes: list[Puller] = []
    nc = await waking(nats_server, lanes)
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("woken", 1))
    seen: list[int] = []
    arrived = asyncio.Event()

    async def handle(msg: Msg) -> None:
        seen.append(msg.metadata.sequence.stream)
        await msg.ack_sync()
        arrived.set()

    puller = Puller(
        nc, MISSIONS_STREAM, "woken", nc.new_inbox(), handle, standing=True, expires=HOUR
    )
    lanes.append(puller)
    await puller.start()
    try:
        while puller.requests < 1:
            await asyncio.sleep(0.01)
        await restarted_with(nats_server, EventPublisher(js, timeout=1.0), requested("m-after"))
        await asyncio.wait_for(arrived.wait(), 60)
        assert seen == [1]
        assert puller.requests >= 2
    finally:
        await puller.stop()
        await nc.close()


@pytest.mark.parametrize("confirm", [True, False], ids=["confirmed", "sent"])
async def test_a_hand_off_lane_keeps_one_request_and_settles_each_message_once(
    nats_url: str, nc: NatsClient, confirm: bool
) -> None:
    """A lane whose handlers release their messages (``hand_offs``) is still one lane the
    server holds to the consumer's limit: one standing request serves every message.
    Unconfirmed settlements (``confirm_settlements=False``) send each acknowledgement
    and wait for no answer: a message each way fewer per delivery, every one settled."""
    count = 40
    order: list[str] = []
    done = asyncio.Event()

    async def handler(event: Event, delivery: Delivery) -> None:
        order.append(event.mission_id)
        delivery.release()
        await asyncio.sleep(0.01)  # the slow part, after the release
        if len(order) == count:
            done.set()

    svc = Service(
        name="handing", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0
    )
    svc.consume(
        ConsumerSpec(
            durable="handing",
            subject=ALL_MISSION_EVENTS,
            handler=handler,
            hand_offs=7,
            confirm_settlements=confirm,
        )
    )
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await svc.start()
    try:
        assert svc.nc is not None
        before = dict(svc.nc.stats)
        for i in range(count):
            await publisher.publish(requested(f"m-{i:02d}"))
        await asyncio.wait_for(done.wait(), 30)
        info = await js.consumer_info(MISSIONS_STREAM, "handing")
        while info.ack_floor.stream_seq < count:
            await asyncio.sleep(0.02)
            info = await js.consumer_info(MISSIONS_STREAM, "handing")
        assert order == [f"m-{i:02d}" for i in range(count)]
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
        (lane,) = [p for p in svc._pullers if p.durable == "handing"]
        assert lane.requests == 1
        sent = svc.nc.stats["out_msgs"] - before["out_msgs"]
        received = svc.nc.stats["in_msgs"] - before["in_msgs"]
        # Each delivery in, its settlement out; confirmed, the server's answer comes in
        # too. (A few more for the service's own bus readings, which are off here.)
        assert count <= sent <= count + 3
        if confirm:
            assert received >= 2 * count
        else:
            assert count <= received <= count + 3
    finally:
        await svc.stop()


# --- paced lanes ---------------------------------------------------------------------


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
    nc = await waking(nats_server, lanes)
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
        await restarted_with(nats_server, publisher, requested("m-after"))
        await until(lambda: seen == [1, 2], within=60)
    finally:
        await puller.stop()
        await nc.close()
