"""The runtime's HTTP request metrics, its reading of the bus into gauges, and its
series exported at zero before anything is counted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    ALL_TYPES,
    MISSIONS_STREAM,
    TELEMETRY_TYPES,
    Event,
    EventPublisher,
    MissionRequested,
    WorkspaceReady,
    derived_id,
    ensure_streams,
    tag_of,
    type_subject,
)
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service, http
from aether_runtime.bus_metrics import read_bus
from aether_runtime.health import Message, Scope
from aether_runtime.metrics import at_zero, event_types_on, service_at_zero


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def unavailable(scope: Scope, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


# Each test has its own registry: the process-wide one may hold the gateway's metrics of
# the same names, which tests of the gateway register at import.


async def test_requests_are_counted_by_route_method_and_status_and_timed() -> None:
    registry = CollectorRegistry()
    app = http.instrument(unavailable, "/readyz", registry)
    sent = await call(app, {"type": "http", "method": "GET", "path": "/readyz"})
    assert sent[0]["status"] == 503  # passed through untouched
    labels = {"route": "/readyz", "method": "GET"}
    assert registry.get_sample_value(http.REQUESTS, {**labels, "status": "503"}) == 1
    assert registry.get_sample_value(f"{http.SECONDS}_count", labels) == 1


async def test_a_raw_path_never_becomes_a_label_without_a_route_template() -> None:
    registry = CollectorRegistry()
    app = http.instrument(unavailable, registry=registry)
    await call(app, {"type": "http", "method": "GET", "path": "/missions/m-123"})
    templated = {"type": "http", "method": "GET", "path": "/m/1", "path_template": "/m/{id}"}
    await call(app, templated)
    for route in ("unmatched", "/m/{id}"):
        labels = {"route": route, "method": "GET", "status": "503"}
        assert registry.get_sample_value(http.REQUESTS, labels) == 1


def test_metrics_a_process_registered_already_with_the_same_labels_are_shared() -> None:
    registry = CollectorRegistry()
    own = Counter(http.REQUESTS, "theirs", ["route", "method", "status"], registry=registry)
    requests, _ = http.http_metrics(registry)
    assert requests is own
    clashing = CollectorRegistry()
    Counter(http.REQUESTS, "raw paths", ["path"], registry=clashing)
    with pytest.raises(ValueError, match="another type or labels"):
        http.http_metrics(clashing)


async def test_reading_the_bus_sets_consumer_lag_and_stream_size(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            durable_name="lagging", filter_subject=ALL_MISSION_EVENTS, ack_policy=AckPolicy.EXPLICIT
        ),
    )
    publisher = EventPublisher(js)
    for mission in ("m-1", "m-2", "m-3"):
        await publisher.publish(
            MissionRequested(
                event_id=derived_id(mission, "requested"),
                mission_id=mission,
                occurred_at=datetime.now(UTC),
                correlation_id="c",
                repository="/r",
                requirement="x",
            )
        )
    await read_bus(js, "tester", [(MISSIONS_STREAM, "lagging")])
    assert value("aether_consumer_pending_messages", service="tester", consumer="lagging") == 3
    assert value("aether_consumer_ack_pending_messages", service="tester", consumer="lagging") == 0
    assert value("aether_stream_messages", stream=MISSIONS_STREAM) == 3
    assert value("aether_stream_bytes", stream=MISSIONS_STREAM) > 0


def test_at_zero_exports_every_combination_of_the_known_label_values_at_zero() -> None:
    registry = CollectorRegistry()
    counter = Counter("things", "things", ["kind", "result"], registry=registry)
    at_zero(counter, result=["ok", "failed"], kind=["a", "b"])  # by name, in any order
    for kind in ("a", "b"):
        for result in ("ok", "failed"):
            sample = {"kind": kind, "result": result}
            assert registry.get_sample_value("things_total", sample) == 0.0
    assert registry.get_sample_value("things_total", {"kind": "c", "result": "ok"}) is None
    with pytest.raises(ValueError, match="label names"):
        at_zero(counter, kind=["a"])  # every label must be given


def test_consumed_event_types_follow_the_consumers_subject_filters() -> None:
    every_type = {tag_of(cls) for cls in ALL_TYPES}
    telemetry = {tag_of(cls) for cls in TELEMETRY_TYPES}
    assert set(event_types_on([ALL_MISSION_EVENTS])) == every_type - telemetry
    assert set(event_types_on([ALL_TELEMETRY])) == telemetry
    assert event_types_on([type_subject(WorkspaceReady)]) == ["workspace_ready"]
    assert set(event_types_on(["aether.mission.m-1.>"])) == every_type - telemetry
    assert event_types_on(["aether.mission.*.no_such_type", "other.>"]) == []


def test_a_service_exports_its_event_metrics_at_zero_before_any_event() -> None:
    service_at_zero("zero-test", [type_subject(WorkspaceReady)])
    published = {"service": "zero-test", "type": "mission_completed", "duplicate": "false"}
    assert value_or_none("aether_events_published_total", **published) == 0.0
    consumed = {"service": "zero-test", "type": "workspace_ready", "outcome": "ok"}
    assert value_or_none("aether_events_consumed_total", **consumed) == 0.0
    timed = {"service": "zero-test", "type": "workspace_ready"}
    assert value_or_none("aether_handler_duration_seconds_count", **timed) == 0.0
    # A type it does not consume has no consumed series.
    other = {**consumed, "type": "task_ready"}
    assert value_or_none("aether_events_consumed_total", **other) is None
    assert value_or_none("aether_poison_messages_total", service="zero-test") == 0.0


def test_a_consumers_series_are_exported_at_zero_once_it_is_registered() -> None:
    svc = Service(name="zero-consumer", settings=RuntimeSettings(port=0))

    async def handler(event: Any, delivery: Delivery) -> None:
        return None

    svc.consume(ConsumerSpec(durable="zero-consumer", subject="aether.mission.>", handler=handler))
    labels = {"service": "zero-consumer", "consumer": "zero-consumer"}
    for name in (
        "aether_consumer_pending_messages",
        "aether_handlers_in_progress",
        # A counter first seen at 1 would never be counted by increase().
        "aether_deliveries_handed_back_total",
    ):
        assert value_or_none(name, **labels) == 0.0, name


def value_or_none(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_delivery_tells_the_publishers_lag_from_the_consumers(
    nc: NatsClient, nats_url: str
) -> None:
    """An event published half a minute after it occurred (a publisher that waited) is
    half a minute old when handled, but the stream stored it just now: the delivery
    delay counts both parts, the consumer's wait only the time since it was stored."""
    js = nc.jetstream()
    await ensure_streams(js)
    name = "lagging-publisher"
    handled = asyncio.Event()

    async def handle(event: Event, delivery: Delivery) -> None:
        handled.set()

    service = Service(name=name, settings=RuntimeSettings(nats_url=nats_url, port=0))
    service.consume(ConsumerSpec(durable=name, subject=ALL_MISSION_EVENTS, handler=handle))
    await service.start()
    try:
        late = MissionRequested(
            event_id=derived_id("m-late", "requested"),
            mission_id="m-late",
            occurred_at=datetime.now(UTC) - timedelta(seconds=30),
            correlation_id="c",
            repository="/r",
            requirement="x",
        )
        await EventPublisher(js).publish(late)
        await asyncio.wait_for(handled.wait(), 30)
    finally:
        await service.stop()
    labels = {"service": name, "consumer": name}
    assert value("aether_event_delivery_delay_seconds_count", **labels) == 1
    assert value("aether_event_delivery_delay_seconds_sum", **labels) >= 30
    assert value("aether_event_consumer_wait_seconds_count", **labels) == 1
    assert value("aether_event_consumer_wait_seconds_sum", **labels) < 10
