"""A NATS server killed and started again costs a service seconds, not an ack wait; and a
consumer that does stall is reported by ``/readyz``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY

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
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service, health

# What a restart may cost: the goal is under 5 s from the server being back.
STALL_BOUND = 5.0


def requested(mission: str) -> MissionRequested:
    return MissionRequested(
        event_id=derived_id(mission, "requested"),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        repository="/r",
        requirement="x",
    )


class Recorder:
    """A handler that notes when it handled each mission, optionally held at a gate."""

    def __init__(self) -> None:
        self.handled: dict[str, float] = {}
        self.calls: list[str] = []
        self.changed = asyncio.Condition()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        self.calls.append(event.mission_id)
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        async with self.changed:
            self.handled[event.mission_id] = time.monotonic()
            self.changed.notify_all()

    async def wait(self, mission: str, timeout: float = 60.0) -> float:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: mission in self.handled), timeout)
        return self.handled[mission]


def ordered_service(url: str, handler: Recorder) -> Service:
    svc = Service(
        name="restarted", settings=RuntimeSettings(nats_url=url, port=0), bus_poll_seconds=0
    )
    svc.consume(ConsumerSpec(durable="restarted", subject=ALL_MISSION_EVENTS, handler=handler))
    return svc


async def connect(url: str) -> NatsClient:
    return await nats.connect(url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)


async def publish_when_back(nc: NatsClient, event: Event, timeout: float = 30.0) -> None:
    """Publish once the server answers JetStream requests again."""
    publisher = EventPublisher(nc.jetstream(), timeout=1.0)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await publisher.publish(event)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def acknowledged(nc: NatsClient, durable: str, sequence: int) -> None:
    """Wait until the server has recorded the consumer's ack of ``sequence``."""
    js = nc.jetstream()
    for _ in range(400):
        info = await js.consumer_info(MISSIONS_STREAM, durable)
        if info.ack_floor.stream_seq >= sequence:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{durable} never acknowledged {sequence}")


async def test_a_killed_and_restarted_server_stalls_the_next_event_for_seconds(
    nats_server: EmbeddedNats,
) -> None:
    handler = Recorder()
    svc = ordered_service(nats_server.url, handler)
    await svc.start()
    nc = await connect(nats_server.url)
    try:
        await publish_when_back(nc, requested("m-before"))
        await handler.wait("m-before")
        # Killed the moment the server has the acknowledgement: what it had not written
        # to disk is lost with it.
        await acknowledged(nc, "restarted", 1)
        nats_server.kill()
        nats_server.start()
        back = time.monotonic()
        await publish_when_back(nc, requested("m-after"))
        stall = await handler.wait("m-after", timeout=60) - back
        print(f"next event handled {stall:.2f} s after the server came back")
        assert stall < STALL_BOUND
    finally:
        await nc.close()
        await svc.stop()


def ready_metric(service: str) -> float | None:
    return REGISTRY.get_sample_value("aether_service_ready", {"service": service})


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_service_that_lost_its_bus_reads_not_ready_in_readyz_and_in_its_metric(
    nats_server: EmbeddedNats,
) -> None:
    svc = Service(name="bus-lost", settings=RuntimeSettings(nats_url=nats_server.url, port=0))
    svc.consume(ConsumerSpec(durable="bus-lost", subject=ALL_MISSION_EVENTS, handler=Recorder()))
    readyz = health.readyz(svc.ready_check)
    assert ready_metric("bus-lost") == 0.0
    await svc.start()
    try:
        assert (await status(readyz))[0] == 200
        assert ready_metric("bus-lost") == 1.0
        nats_server.kill()
        await until(lambda: svc.nc is not None and not svc.nc.is_connected)
        code, body = await status(readyz)
        assert (code, body["detail"]) == (503, "nats disconnected")
        # The alert on a service not ready reads this gauge, not /readyz.
        assert ready_metric("bus-lost") == 0.0
        nats_server.start()
        await until(lambda: ready_metric("bus-lost") == 1.0)
        assert (await status(readyz))[0] == 200
    finally:
        await svc.stop()
    assert ready_metric("bus-lost") == 0.0


@pytest.mark.slow
async def test_a_handler_at_work_through_a_restart_is_not_redelivered_and_settles(
    nats_server: EmbeddedNats,
) -> None:
    handler = Recorder()
    handler.gate = asyncio.Event()
    svc = ordered_service(nats_server.url, handler)
    await svc.start()
    nc = await connect(nats_server.url)
    try:
        await publish_when_back(nc, requested("m-long"))
        await asyncio.wait_for(handler.entered.wait(), 30)
        nats_server.kill()
        nats_server.start()
        await publish_when_back(nc, requested("m-next"))
        # Longer than the ack wait: the in-progress acks keep the message ours.
        await asyncio.sleep(6)  # the handler's own work, not a wait for an event
        handler.gate.set()
        done = await handler.wait("m-long")
        handled_next = await handler.wait("m-next", timeout=30)
        assert handled_next - done < STALL_BOUND
        assert handler.calls == ["m-long", "m-next"]
    finally:
        handler.gate.set()
        await nc.close()
        await svc.stop()


async def test_readyz_reports_a_consumer_whose_in_flight_slot_nobody_works_on(
    nc: NatsClient, nats_url: str
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await publisher.publish(requested("m-1"))
    await publisher.publish(requested("m-2"))
    # Another client holds the one in-flight message and never answers.
    await js.add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            durable_name="held",
            name="held",
            filter_subject=ALL_MISSION_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=20,
            max_ack_pending=1,
        ),
    )
    sub = await js.pull_subscribe_bind("held", stream=MISSIONS_STREAM)
    (taken,) = await sub.fetch(1)
    handler = Recorder()
    svc = Service(
        name="held",
        settings=RuntimeSettings(nats_url=nats_url, port=0),
        bus_poll_seconds=0.1,
        stall_after_seconds=1.0,
    )
    svc.consume(
        ConsumerSpec(
            durable="held", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=60
        )
    )
    readyz = health.readyz(svc.ready_check)
    await svc.start()
    try:
        assert (await status(readyz))[0] == 200
        deadline = time.monotonic() + 15
        while svc.stalled() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        code, body = await status(readyz)
        assert code == 503, body
        assert "consumer held stalled" in body["detail"] and "1 pending" in body["detail"]
        # The slot is freed: the consumer moves on and is ready again.
        await taken.ack()
        await handler.wait("m-2", timeout=15)
        deadline = time.monotonic() + 15
        while svc.stalled() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await status(readyz))[0] == 200
    finally:
        await svc.stop()


async def status(app: health.ASGIApp) -> tuple[int, dict[str, str]]:
    sent: list[health.Message] = []

    async def receive() -> health.Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: health.Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/readyz"}, receive, send)
    return int(sent[0]["status"]), json.loads(sent[1]["body"])


async def test_a_delivery_nobody_here_holds_is_handed_back_after_a_reconnect(
    nats_server: EmbeddedNats,
) -> None:
    """The server still owes the consumer's one in-flight message to a delivery nobody
    works on (as when it went down with the message in flight): after the reconnect the
    service hands it back, rather than waiting out an ack wait far longer than the test."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await publisher.publish(requested("m-lost"))
    await publisher.publish(requested("m-next"))
    await js.add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            durable_name="restarted",
            name="restarted",
            filter_subject=ALL_MISSION_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=3600,
            max_deliver=20,
            max_ack_pending=1,
        ),
    )
    # Delivered to a subscription that goes away without an answer: the lost delivery.
    sub = await js.pull_subscribe_bind("restarted", stream=MISSIONS_STREAM)
    (lost,) = await sub.fetch(1)
    assert lost.metadata.sequence.stream == 1
    await sub.unsubscribe()
    handler = Recorder()
    svc = Service(name="restarted", settings=RuntimeSettings(nats_url=nats_server.url, port=0))
    svc.bus_poll_seconds = 0
    svc.consume(
        ConsumerSpec(
            durable="restarted", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=3600
        )
    )
    await svc.start()
    try:
        # Stopped cleanly, the server keeps the consumer's state, the lost delivery too.
        nats_server.stop()
        nats_server.start()
        # Far less than the hour the server would otherwise hold the message for.
        await handler.wait("m-lost", timeout=60)
        await handler.wait("m-next", timeout=60)
        assert handler.calls == ["m-lost", "m-next"]
    finally:
        await nc.close()
        await svc.stop()
