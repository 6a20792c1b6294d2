"""Metrics every service exports (service-specific ones live with the service)."""

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
REPLAYED = Counter(
    "aether_projection_replayed_events_total",
    "Events folded while rebuilding the projection at start-up",
    ["service"],
)
READY = Gauge("aether_service_ready", "1 when the service is ready to handle events", ["service"])
