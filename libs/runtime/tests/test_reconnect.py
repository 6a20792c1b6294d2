"""What a restarted NATS server lost is given back at the reconnect, not after a timer: an
acknowledgement it will never answer, a publish it never got, a delivery nobody holds (on
a consumer shared by lanes or processes too), a fetch's pull request.

The consumers here run with an ack wait of an hour and the publisher with its usual ten
seconds, far longer than the tests wait for an event: a recovery that waited out a timer
instead fails them, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig

from aether.infra import EmbeddedNats
from aether_events import ALL_MISSION_EVENTS, MISSIONS_STREAM, EventPublisher, ensure_streams
from aether_runtime import ConsumerSpec, RuntimeSettings, Service
from aether_runtime.acks import ACK, confirm, server_view
from aether_runtime.reconnect import Reconnects
from aether_runtime.service import CountingPublisher

from .test_bus_restart import Recorder, connect, publish_when_back, requested

HOUR = 3600.0


def consumer(durable: str, max_ack_pending: int = 1) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        name=durable,
        filter_subject=ALL_MISSION_EVENTS,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=HOUR,
        max_deliver=20,
        max_ack_pending=max_ack_pending,
    )


async def test_an_ack_the_server_no_longer_counts_as_delivered_is_not_waited_for(
    nc: NatsClient,
) -> None:
    """A server restarted before it wrote down a delivery ignores its ack without a
    reply; ``confirm`` sees that in the consumer's state and stops waiting."""
    js = nc.jetstream()
    await ensure_streams(js)
    await EventPublisher(js).publish(requested("m-1"))
    await js.add_consumer(MISSIONS_STREAM, consumer("forgetful"))
    sub = await js.pull_subscribe_bind("forgetful", stream=MISSIONS_STREAM)
    (msg,) = await sub.fetch(1)
    assert await server_view(nc, msg) is None  # delivered and pending: send the ack again
    # The consumer as a restarted server that never wrote the delivery down sees it.
    await sub.unsubscribe()
    await js.delete_consumer(MISSIONS_STREAM, "forgetful")
    await js.add_consumer(MISSIONS_STREAM, consumer("forgetful"))
    assert await server_view(nc, msg) == "forgotten"
    # Within the hour it would otherwise retry for.
    assert await asyncio.wait_for(confirm(nc, msg, ACK, HOUR), 30) is False


async def test_an_acknowledged_delivery_reads_as_recorded(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await EventPublisher(js).publish(requested("m-1"))
    await js.add_consumer(MISSIONS_STREAM, consumer("recorded"))
    sub = await js.pull_subscribe_bind("recorded", stream=MISSIONS_STREAM)
    (msg,) = await sub.fetch(1)
    assert await confirm(nc, msg, ACK, 30) is True
    assert await server_view(nc, msg) == "recorded"


async def test_a_publish_lost_with_the_server_is_sent_again_at_the_reconnect(
    nats_server: EmbeddedNats,
) -> None:
    """The server takes the publish and dies before storing or answering it; the
    publisher sends it again once the connection is back (the publish timeout, ten
    seconds, would otherwise end it with an error)."""
    reconnects = Reconnects()

    async def back() -> None:
        reconnects.happened()

    nc = await nats.connect(
        nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1, reconnected_cb=back
    )
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        publisher = CountingPublisher(js, "resender", reconnects)
        assert nats_server.process is not None
        os.kill(nats_server.process.pid, signal.SIGSTOP)  # takes the request, never answers
        await stopped(nats_server.process.pid)
        sending = asyncio.create_task(publisher.publish(requested("m-lost")))
        await asyncio.sleep(0.3)  # the request is on its way to the frozen server
        assert not sending.done()
        nats_server.kill()
        nats_server.start()
        ack = await asyncio.wait_for(sending, 60)
        assert ack.seq == 1
        info = await js.stream_info(MISSIONS_STREAM)
        assert info.state.messages == 1
    finally:
        await nc.close()


async def stopped(pid: int) -> None:
    """Until every thread of the process is stopped (a signal is delivered to each as it
    next enters the kernel)."""
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        await asyncio.sleep(0.01)


async def test_a_shared_consumer_hands_back_only_what_no_process_holds(
    nats_server: EmbeddedNats,
) -> None:
    """Two processes of one service, two lanes each, on one durable. Through a restart,
    one holds a message at work, and another message was delivered to a client that went
    away (lost in flight): the lost one is delivered again at once, once; the held one is
    never delivered again."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("shared", max_ack_pending=1000))
    await publisher.publish(requested("m-lost"))
    sub = await js.pull_subscribe_bind("shared", stream=MISSIONS_STREAM)
    (_lost,) = await sub.fetch(1)
    await sub.unsubscribe()
    handler = Recorder()
    gate = handler.gate = asyncio.Event()
    processes = [shared_service(nats_server.url, handler) for _ in range(2)]
    for svc in processes:
        await svc.start()
    try:
        await publisher.publish(requested("m-held"))
        await asyncio.wait_for(handler.entered.wait(), 30)
        handler.gate = None  # later deliveries go straight through
        nats_server.stop()
        nats_server.start()
        await handler.wait("m-lost", timeout=60)
        await publish_when_back(nc, requested("m-after"))
        await handler.wait("m-after", timeout=60)
        gate.set()
        await handler.wait("m-held", timeout=60)
        assert handler.calls.count("m-lost") == 1
        assert handler.calls.count("m-held") == 1
    finally:
        gate.set()
        for svc in processes:
            await svc.stop()
        await nc.close()


def shared_service(url: str, handler: Recorder) -> Service:
    svc = Service(name="sharing", settings=RuntimeSettings(nats_url=url, port=0))
    svc.bus_poll_seconds = 0
    for _ in range(2):
        svc.consume(
            ConsumerSpec(
                durable="shared", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=HOUR
            )
        )
    return svc


async def test_a_released_delivery_is_kept_and_the_lost_one_handed_back(
    nats_server: EmbeddedNats,
) -> None:
    """A consumer with hand-offs (the planner's) holds a released message at work through
    the restart while an earlier one was lost in flight: the lost one comes back at once,
    the released one is not delivered again."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("releasing", max_ack_pending=3))
    gate = asyncio.Event()
    calls: list[str] = []
    handled: dict[str, asyncio.Event] = {}

    async def handle(event: object, delivery: object) -> None:
        mission = event.mission_id  # type: ignore[attr-defined]
        calls.append(mission)
        if mission == "m-released":
            delivery.release()  # type: ignore[attr-defined]
            await gate.wait()
        handled.setdefault(mission, asyncio.Event()).set()

    svc = Service(name="releasing", settings=RuntimeSettings(nats_url=nats_server.url, port=0))
    svc.bus_poll_seconds = 0
    svc.consume(
        ConsumerSpec(
            durable="releasing",
            subject=ALL_MISSION_EVENTS,
            handler=handle,  # type: ignore[arg-type]
            ack_wait_seconds=HOUR,
            hand_offs=2,
        )
    )
    # Delivered to a client that goes away: lost in flight.
    await publisher.publish(requested("m-lost"))
    sub = await js.pull_subscribe_bind("releasing", stream=MISSIONS_STREAM)
    (lost,) = await sub.fetch(1)
    assert lost.metadata.sequence.stream == 1
    await sub.unsubscribe()
    await publisher.publish(requested("m-released"))
    await svc.start()
    try:
        while "m-released" not in calls:
            await asyncio.sleep(0.05)
        nats_server.stop()
        nats_server.start()
        await asyncio.wait_for(handled.setdefault("m-lost", asyncio.Event()).wait(), 60)
        gate.set()
        await asyncio.wait_for(handled.setdefault("m-released", asyncio.Event()).wait(), 60)
        assert calls == ["m-released", "m-lost"]
    finally:
        gate.set()
        await svc.stop()
        await nc.close()


async def test_consumers_start_once_a_server_restarted_during_start_up_is_back(
    nats_server: EmbeddedNats,
) -> None:
    """The server goes down while the consumers are being set up, taking their requests
    with it: the start is tried again until it succeeds, rather than failing and leaving
    the process up with no consumer."""
    handler = Recorder()
    svc = Service(name="restarted", settings=RuntimeSettings(nats_url=nats_server.url, port=0))
    svc.bus_poll_seconds = 0
    svc.consume(
        ConsumerSpec(
            durable="restarted", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=HOUR
        )
    )
    await svc._start()
    await svc.broker.connect()
    assert nats_server.process is not None
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    await stopped(nats_server.process.pid)
    starting = asyncio.create_task(svc.start_consumers())
    await asyncio.sleep(0.5)  # its requests are on their way to the frozen server
    nats_server.kill()
    nats_server.start()
    nc = await connect(nats_server.url)
    try:
        await asyncio.wait_for(starting, 60)
        await svc._after_start()
        await publish_when_back(nc, requested("m-1"))
        await handler.wait("m-1", timeout=60)
    finally:
        await nc.close()
        await svc.stop()


async def test_a_single_writer_starting_is_handed_what_its_killed_predecessor_held(
    nats_server: EmbeddedNats,
) -> None:
    """The one process of a single-writer service (the git broker, the scheduler) was
    killed holding a delivery of its one-at-a-time durable, whose ack wait is an hour:
    the process that replaces it is handed that delivery at once, handles it once, and
    the messages behind it follow."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await js.add_consumer(MISSIONS_STREAM, consumer("writer"))
    await publisher.publish(requested("m-of-the-dead"))
    dead = await js.pull_subscribe_bind("writer", stream=MISSIONS_STREAM)
    (taken,) = await dead.fetch(1, timeout=10)
    assert b"m-of-the-dead" in taken.data
    await dead.unsubscribe()  # killed: its delivery neither acknowledged nor handed back
    await publisher.publish(requested("m-behind"))
    handler = Recorder()
    svc = Service(
        name="writer",
        settings=RuntimeSettings(nats_url=nats_server.url, port=0),
        bus_poll_seconds=0,
    )
    svc.single_writer = True
    svc.consume(
        ConsumerSpec(
            durable="writer", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=HOUR
        )
    )
    try:
        await svc.start()
        await handler.wait("m-of-the-dead", timeout=30)
        await handler.wait("m-behind", timeout=30)
        assert handler.calls == ["m-of-the-dead", "m-behind"]
    finally:
        await svc.stop()
        await nc.close()
