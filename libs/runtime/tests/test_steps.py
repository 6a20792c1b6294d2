"""A handler failing at the delivery limit leaves a failed step on the mission, which a
retry request runs again; the consumer goes on with later events meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    MissionRequested,
    StepFailed,
    StepRecovered,
    StepRetryRequested,
    derived_id,
    ensure_streams,
    new_event_id,
)
from aether_runtime import ConsumerSpec, Delivery, RetryLater, RuntimeSettings, Service
from tests.support import MissionLog


def requested(mission: str) -> MissionRequested:
    return MissionRequested(
        event_id=derived_id(mission, "requested"),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id(mission, "requested"),
        repository="/r",
        requirement="x",
    )


class Flaky:
    """A handler that fails on the requests of the missions in ``failing`` and records
    every other event."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.handled: list[str] = []
        self.requests_handled: list[str] = []
        self.calls: list[tuple[str, int]] = []
        self.changed = asyncio.Condition()

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        self.calls.append((event.mission_id, delivery.sequence))
        if isinstance(event, MissionRequested) and event.mission_id in self.failing:
            raise RuntimeError(f"cannot handle {event.mission_id}")
        async with self.changed:
            self.handled.append(event.mission_id)
            if isinstance(event, MissionRequested):
                self.requests_handled.append(event.mission_id)
            self.changed.notify_all()

    async def wait_handled(self, mission: str, timeout: float = 15.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: mission in self.handled), timeout)


def flaky_service(url: str, handler: Flaky, name: str = "flaky") -> Service:
    svc = Service(name=name, settings=RuntimeSettings(nats_url=url, port=0), bus_poll_seconds=0)
    svc.consume(
        ConsumerSpec(durable=name, subject=ALL_MISSION_EVENTS, handler=handler, max_deliver=3)
    )
    return svc


async def test_a_handler_that_always_fails_ends_as_a_failed_step_and_the_consumer_goes_on(
    nc: NatsClient, nats_url: str
) -> None:
    handler = Flaky({"m-bad"})
    svc = flaky_service(nats_url, handler)
    await svc.start()
    log = await MissionLog(nc, "m-bad").start()
    try:
        publisher = EventPublisher(nc.jetstream())
        bad = requested("m-bad")
        stored = await publisher.publish(bad)
        await publisher.publish(requested("m-good"))
        await log.wait_for(lambda log: bool(log.of_type(StepFailed)), timeout=30)
        await handler.wait_handled("m-good")
        failed = log.of_type(StepFailed)[0]
        assert failed.service == "flaky" and failed.consumer == "flaky"
        assert failed.failed_event_id == bad.event_id
        assert failed.failed_event_type == "mission_requested"
        assert (failed.stream, failed.stream_sequence) == (MISSIONS_STREAM, stored.seq)
        assert failed.attempts == 3 and "cannot handle m-bad" in failed.error
        assert failed.causation_id == bad.event_id and failed.mission_id == "m-bad"
        assert handler.calls.count(("m-bad", stored.seq)) == 3
        # Terminated, not waiting for a redelivery: the consumer settles with nothing in
        # flight (once it has handled the StepFailed event itself).
        await handler.wait_handled("m-bad")
        js = nc.jetstream()
        for _ in range(100):
            info = await js.consumer_info(MISSIONS_STREAM, "flaky")
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        assert len(log.of_type(StepFailed)) == 1
    finally:
        await log.stop()
        await svc.stop()


async def test_a_retry_request_runs_the_handler_on_the_failed_event_again(
    nc: NatsClient, nats_url: str
) -> None:
    handler = Flaky({"m-bad"})
    svc = flaky_service(nats_url, handler)
    await svc.start()
    log = await MissionLog(nc, "m-bad").start()
    try:
        publisher = EventPublisher(nc.jetstream())
        await publisher.publish(requested("m-bad"))
        await log.wait_for(lambda log: bool(log.of_type(StepFailed)), timeout=30)
        failed = log.of_type(StepFailed)[0]

        def retry_request() -> StepRetryRequested:
            return StepRetryRequested(
                event_id=new_event_id(),
                mission_id="m-bad",
                occurred_at=datetime.now(UTC),
                correlation_id=failed.correlation_id,
                causation_id=failed.event_id,
                service=failed.service,
                consumer=failed.consumer,
                failed_event_id=failed.failed_event_id,
                stream=failed.stream,
                stream_sequence=failed.stream_sequence,
                requested_by="tester",
            )

        # Still failing: the retry is recorded as failing again, once.
        first = retry_request()
        await publisher.publish(first)
        await log.wait_for(lambda log: len(log.of_type(StepFailed)) == 2, timeout=15)
        again = log.of_type(StepFailed)[1]
        assert again.retry_of == first.event_id and again.attempts == 1
        assert again.failed_event_id == failed.failed_event_id
        # Repaired: the retry handles the original event and records the recovery.
        handler.failing.clear()
        second = retry_request()
        await publisher.publish(second)
        await log.wait_for(lambda log: bool(log.of_type(StepRecovered)), timeout=15)
        recovered = log.of_type(StepRecovered)[0]
        assert recovered.retry_of == second.event_id
        assert recovered.failed_event_id == failed.failed_event_id
        assert handler.requests_handled == ["m-bad"]
        # Three deliveries, then one call per retry.
        assert handler.calls.count(("m-bad", failed.stream_sequence)) == 5
        assert len(log.of_type(StepFailed)) == 2
    finally:
        await log.stop()
        await svc.stop()


async def test_a_retry_for_another_service_is_left_to_it(nc: NatsClient, nats_url: str) -> None:
    handler = Flaky(set())
    svc = flaky_service(nats_url, handler)
    await svc.start()
    log = await MissionLog(nc, "m-x").start()
    try:
        publisher = EventPublisher(nc.jetstream())
        stored = await publisher.publish(requested("m-x"))
        await handler.wait_handled("m-x")
        await publisher.publish(
            StepRetryRequested(
                event_id=new_event_id(),
                mission_id="m-x",
                occurred_at=datetime.now(UTC),
                correlation_id="c",
                service="someone-else",
                consumer="flaky",
                failed_event_id=derived_id("m-x", "requested"),
                stream=MISSIONS_STREAM,
                stream_sequence=stored.seq,
            )
        )
        # The flaky service's retry consumer takes the request and acknowledges it...
        js = nc.jetstream()
        for _ in range(100):
            info = await js.consumer_info(MISSIONS_STREAM, "flaky-step-retries")
            if info.ack_floor.stream_seq >= stored.seq + 1:
                break
            await asyncio.sleep(0.05)
        assert info.ack_floor.stream_seq >= stored.seq + 1
        # ...without running anything again or recording anything.
        assert handler.calls.count(("m-x", stored.seq)) == 1
        assert not log.of_type(StepRecovered) and not log.of_type(StepFailed)
    finally:
        await log.stop()
        await svc.stop()


async def test_a_last_delivery_that_gets_no_answer_is_recorded_from_the_advisory(
    nc: NatsClient, nats_url: str
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    # One delivery allowed, and the client that takes it goes away without a word (as a
    # process killed mid-handler would): JetStream gives up on the message.
    await js.add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            durable_name="dies",
            name="dies",
            filter_subject=ALL_MISSION_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=3,
            max_deliver=1,
            max_ack_pending=1,
        ),
    )
    lost = requested("m-lost")
    stored = await EventPublisher(js).publish(lost)
    sub = await js.pull_subscribe_bind("dies", stream=MISSIONS_STREAM)
    (taken,) = await sub.fetch(1)
    assert taken.metadata.sequence.stream == stored.seq
    handler = Flaky(set())
    settings = RuntimeSettings(nats_url=nats_url, port=0)
    svc = Service(name="dies", settings=settings, bus_poll_seconds=0)
    svc.consume(
        ConsumerSpec(
            durable="dies",
            subject=ALL_MISSION_EVENTS,
            handler=handler,
            ack_wait_seconds=3,
            max_deliver=1,
        )
    )
    log = await MissionLog(nc, "m-lost").start()
    await svc.start()
    try:
        await log.wait_for(lambda log: bool(log.of_type(StepFailed)), timeout=30)
        (failed,) = log.of_type(StepFailed)
        assert failed.failed_event_id == lost.event_id
        assert (failed.service, failed.consumer, failed.stream_sequence) == (
            "dies",
            "dies",
            stored.seq,
        )
        assert "no answer" in failed.error
        # Never handed to the handler: the limit was reached. (The StepFailed event the
        # service recorded after it is a mission event of its own, which the consumer
        # may deliver meanwhile.)
        assert ("m-lost", stored.seq) not in handler.calls
        assert handler.requests_handled == []
    finally:
        await log.stop()
        await svc.stop()


async def test_a_retry_whose_event_is_gone_is_recorded_as_failing_again_once(
    nc: NatsClient, nats_url: str
) -> None:
    handler = Flaky(set())
    svc = flaky_service(nats_url, handler)
    await svc.start()
    log = await MissionLog(nc, "m-gone").start()
    try:
        js = nc.jetstream()
        publisher = EventPublisher(js)
        stored = await publisher.publish(requested("m-gone"))
        await handler.wait_handled("m-gone")
        await js.delete_msg(MISSIONS_STREAM, stored.seq)
        retry = StepRetryRequested(
            event_id=new_event_id(),
            mission_id="m-gone",
            occurred_at=datetime.now(UTC),
            correlation_id="c",
            service="flaky",
            consumer="flaky",
            failed_event_id=derived_id("m-gone", "requested"),
            stream=MISSIONS_STREAM,
            stream_sequence=stored.seq,
        )
        await publisher.publish(retry)
        await log.wait_for(lambda log: bool(log.of_type(StepFailed)), timeout=15)
        (failed,) = log.of_type(StepFailed)
        assert failed.retry_of == retry.event_id and "no longer holds" in failed.error
        # Answered at once, not retried until the retry consumer's own limit.
        info = await js.consumer_info(MISSIONS_STREAM, "flaky-step-retries")
        assert info.num_redelivered == 0
        assert handler.calls.count(("m-gone", stored.seq)) == 1
    finally:
        await log.stop()
        await svc.stop()


class Failing:
    """A handler that raises ``error()`` for mission ``failing``'s request on its first
    ``times`` calls, and records each call with the delivery count it was given."""

    def __init__(self, failing: str, error: Callable[[], Exception], times: int) -> None:
        self.failing, self.error, self.times = failing, error, times
        self.calls: list[tuple[str, int]] = []
        self.changed = asyncio.Condition()
        self.handled: list[str] = []

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, MissionRequested):
            return
        self.calls.append((event.mission_id, delivery.num_delivered))
        if event.mission_id == self.failing and len(self.of(self.failing)) <= self.times:
            raise self.error()
        async with self.changed:
            self.handled.append(event.mission_id)
            self.changed.notify_all()

    def of(self, mission: str) -> list[int]:
        return [count for m, count in self.calls if m == mission]

    async def wait_handled(self, mission: str, timeout: float = 30.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: mission in self.handled), timeout)


def ordered(url: str, handler: Failing, name: str) -> Service:
    """A single-writer consumer with the default delivery limit and retries in place."""
    svc = Service(name=name, settings=RuntimeSettings(nats_url=url, port=0), bus_poll_seconds=0)
    svc.consume(ConsumerSpec(durable=name, subject=ALL_MISSION_EVENTS, handler=handler))
    return svc


async def test_a_poison_event_fails_its_step_on_its_first_delivery_and_the_next_mission_follows(
    nc: NatsClient, nats_url: str
) -> None:
    handler = Failing("m-poison", lambda: RuntimeError("bad data"), times=1000)
    svc = ordered(nats_url, handler, "poisoned")
    await svc.start()
    log = await MissionLog(nc, "m-poison").start()
    try:
        publisher = EventPublisher(nc.jetstream())
        await publisher.publish(requested("m-poison"))
        await publisher.publish(requested("m-other"))
        await handler.wait_handled("m-other")
        await log.wait_for(lambda log: bool(log.of_type(StepFailed)), timeout=30)
        spec = ConsumerSpec(durable="x", subject="x", handler=handler)
        budget = 1 + len(spec.retry_delays)
        # Retried in place within the one delivery (each run counted), then recorded and
        # terminated: the other mission is handled next, not after the delivery limit.
        assert handler.calls == [("m-poison", n) for n in range(1, budget + 1)] + [("m-other", 1)]
        (failed,) = log.of_type(StepFailed)
        assert failed.attempts == budget and "bad data" in failed.error
        assert failed.consumer == "poisoned"
        info = await nc.jetstream().consumer_info(MISSIONS_STREAM, "poisoned")
        assert info.num_redelivered == 0
    finally:
        await log.stop()
        await svc.stop()


async def test_a_failure_of_the_bus_or_a_database_is_retried_in_place_without_failing_the_step(
    nc: NatsClient, nats_url: str
) -> None:
    # More failures than the retries in place a bad event gets: these are about the world.
    handler = Failing("m-outage", lambda: ConnectionRefusedError("database down"), times=5)
    svc = ordered(nats_url, handler, "outage")
    await svc.start()
    try:
        js = nc.jetstream()
        publisher = EventPublisher(js)
        await publisher.publish(requested("m-outage"))
        await publisher.publish(requested("m-after"))
        await handler.wait_handled("m-after")
        assert handler.handled == ["m-outage", "m-after"]
        assert handler.of("m-outage") == [1, 2, 3, 4, 5, 6]
        # Nothing but the two requests on the stream: no step recorded as failed.
        assert (await js.stream_info(MISSIONS_STREAM)).state.messages == 2
    finally:
        await svc.stop()


async def test_a_handler_asking_to_retry_later_gets_the_message_again_from_the_server(
    nc: NatsClient, nats_url: str
) -> None:
    handler = Failing("m-busy", lambda: RetryLater("another process holds it"), times=1)
    svc = ordered(nats_url, handler, "busy")
    await svc.start()
    try:
        js = nc.jetstream()
        await EventPublisher(js).publish(requested("m-busy"))
        await handler.wait_handled("m-busy")
        # Handed back at once and delivered again by the server (its count), no step failed.
        assert handler.of("m-busy") == [1, 2]
        assert (await js.stream_info(MISSIONS_STREAM)).state.messages == 1
    finally:
        await svc.stop()


async def test_a_handler_may_choose_how_soon_its_message_comes_back(
    nc: NatsClient, nats_url: str
) -> None:
    """An agent runner handing an attempt on to another runner asks for it back within a
    fraction of a second, not after the growing delays of a busy holder (1, 2, 4 s)."""
    handler = Failing("m-soon", lambda: RetryLater("not mine", delay=0.05), times=3)
    svc = ordered(nats_url, handler, "soon")
    await svc.start()
    try:
        began = time.monotonic()
        await EventPublisher(nc.jetstream()).publish(requested("m-soon"))
        await handler.wait_handled("m-soon")

        assert handler.of("m-soon") == [1, 2, 3, 4]
        assert time.monotonic() - began < 5.0  # by the growing delays: 7 s at least
    finally:
        await svc.stop()
