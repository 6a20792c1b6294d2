"""Metrics every service exports (service-specific ones live with the service).

Names follow Prometheus conventions: an ``aether_`` prefix, the unit in the name,
``_total`` on counters (prometheus_client appends it), histograms for durations.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
REDELIVERIES = Counter(
    "aether_redeliveries_total",
    "Messages received more than once",
    ["service"],
)
POISON = Counter(
    "aether_poison_messages_total",
    "Messages that could not be decoded and were terminated",
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
