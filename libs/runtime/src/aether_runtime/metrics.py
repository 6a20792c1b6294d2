"""Metrics every service exports (service-specific ones live with the service).

Names follow Prometheus conventions: an ``aether_`` prefix, the unit in the name,
``_total`` on counters (prometheus_client appends it), histograms for durations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from aether_events import ALL_TYPES, tag_of, type_subjects

EVENTS_CONSUMED = Counter(
    "aether_events_consumed_total",
    "Events handled by this service, by event type and outcome",
    ["service", "type", "outcome"],
)
EVENTS_PUBLISHED = Counter(
    "aether_events_published_total",
    "Events published by this service, by event type (duplicates dropped by the stream count)",
    ["service", "type", "duplicate"],
)
EVENT_ID_SQUATTED = Counter(
    "aether_event_id_squatted_total",
    "Publishes acknowledged as duplicates of a message that is not the event published "
    "(another subject or another event stored first under its id): the event was not stored",
    ["service", "type"],
)
HANDLER_SECONDS = Histogram(
    "aether_handler_duration_seconds",
    "Time spent handling one event",
    ["service", "type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HANDLERS_IN_PROGRESS = Gauge(
    "aether_handlers_in_progress",
    "Events being handled right now, by consumer",
    ["service", "consumer"],
)
DELIVERY_DELAY_SECONDS = Histogram(
    "aether_event_delivery_delay_seconds",
    "Time from an event's occurrence to the start of its handling here (bus latency plus "
    "queueing behind other work)",
    ["service", "consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
CONSUMER_WAIT_SECONDS = Histogram(
    "aether_event_consumer_wait_seconds",
    "Time from the stream storing an event to the start of its handling here (the "
    "delivery and queueing behind other work; the delivery delay less the publisher's part)",
    ["service", "consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
EVENT_LOOP_LAG = Histogram(
    "aether_event_loop_lag_seconds",
    "How late the event loop ran a callback that was due (one a second): the time it "
    "spent on other work meanwhile, which every event and request waits behind",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REDELIVERIES = Counter(
    "aether_redeliveries_total",
    "Messages received more than once",
    ["service"],
)
HANDED_BACK = Counter(
    "aether_deliveries_handed_back_total",
    "Deliveries lost with a restarting bus, handed back for redelivery after a reconnect",
    ["service", "consumer"],
)
POISON = Counter(
    "aether_poison_messages_total",
    "Messages that could not be decoded and were terminated",
    ["service"],
)
LEADER = Gauge(
    "aether_leader",
    "1 while this process holds its service's lease and acts, 0 while it stands by "
    "(services that run one active process among several: the scheduler)",
    ["service"],
)
LEASE_TAKEOVERS = Counter(
    "aether_lease_takeovers_total",
    "Times this process took its service's lease and became the active one",
    ["service"],
)
CONSUMER_PENDING = Gauge(
    "aether_consumer_pending_messages",
    "Messages waiting for this service's durable consumer (lag)",
    ["service", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "aether_consumer_ack_pending_messages",
    "Messages delivered to this service's durable consumer and not acknowledged yet",
    ["service", "consumer"],
)
CONSUMER_REDELIVERED = Gauge(
    "aether_consumer_redelivered_messages",
    "Messages of this service's durable consumer being redelivered now",
    ["service", "consumer"],
)
STREAM_MESSAGES = Gauge(
    "aether_stream_messages",
    "Messages held in a JetStream stream",
    ["stream"],
)
STREAM_BYTES = Gauge(
    "aether_stream_bytes",
    "Bytes held in a JetStream stream",
    ["stream"],
)
STREAM_CONSUMERS = Gauge(
    "aether_stream_consumers",
    "Consumers defined on a JetStream stream",
    ["stream"],
)
BUS_POLL_ERRORS = Counter(
    "aether_bus_poll_errors_total",
    "Failed attempts to read stream and consumer state for the metrics above",
    ["service"],
)
REPLAYED = Counter(
    "aether_projection_replayed_events_total",
    "Events folded while rebuilding the projection at start-up",
    ["service"],
)
READY = Gauge("aether_service_ready", "1 when the service is ready to handle events", ["service"])


def at_zero(metric: Counter | Histogram, **values: Iterable[str]) -> None:
    """Export now, at zero, the series of ``metric`` for every combination of the given
    label values (one iterable per label, by name).

    A labelled series is otherwise created by its first increment, so Prometheus first
    sees it at 1; ``increase()`` and ``rate()`` count from a series' first sample, and so
    never count that first event (a dashboard reads 0 after the first mission completes).
    Every metric with labels whose values are known in advance is set up through this at
    start, so each of those series exists, at 0, before anything happens.
    """
    names = list(values)
    for combination in itertools.product(*(tuple(values[name]) for name in names)):
        metric.labels(**dict(zip(names, combination, strict=True)))


def _overlap(subject_filter: str, type_filter: str) -> bool:
    """Whether a consumer's subject filter can match a subject of an event type's filter
    (``…*.<type>``: ``*`` stands for any mission id on either side, ``>`` for the rest)."""
    wanted, parts = subject_filter.split("."), type_filter.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(parts) > index
        if index >= len(parts):
            return False
        if "*" not in (part, parts[index]) and part != parts[index]:
            return False
    return len(wanted) == len(parts)


def event_types_on(subject_filters: Iterable[str]) -> list[str]:
    """The tags of the catalogue's event types that consumers with these subject filters
    receive."""
    filters = list(subject_filters)
    return [
        tag_of(cls)
        for cls in ALL_TYPES
        if any(_overlap(f, subject) for f in filters for subject in type_subjects(cls))
    ]


def service_at_zero(service: str, consumes: Iterable[str]) -> None:
    """Export a service's event metrics at zero: what it consumes (``consumes`` are the
    subject filters of its consumers) and, since any service may publish any event, every
    event type it could publish."""
    consumed = event_types_on(consumes)
    published = [tag_of(cls) for cls in ALL_TYPES]
    at_zero(EVENTS_PUBLISHED, service=[service], type=published, duplicate=["false", "true"])
    at_zero(EVENT_ID_SQUATTED, service=[service], type=published)
    at_zero(EVENTS_CONSUMED, service=[service], type=consumed, outcome=["ok", "error"])
    at_zero(HANDLER_SECONDS, service=[service], type=consumed)
    for counter in (REDELIVERIES, POISON, BUS_POLL_ERRORS, REPLAYED):
        at_zero(counter, service=[service])
