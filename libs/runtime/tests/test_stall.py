"""The verdict on successive readings of a consumer: waiting is not stalling."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.js.api import ConsumerConfig, ConsumerInfo, SequenceInfo

from aether_runtime.stall import ConsumerWatch


def reading(pending: int, delivered: int, acked: int, ack_pending: int = 1) -> ConsumerInfo:
    return ConsumerInfo(
        name="c",
        stream_name="S",
        config=ConsumerConfig(durable_name="c"),
        created=datetime(2026, 1, 1, tzinfo=UTC),
        num_pending=pending,
        num_ack_pending=ack_pending,
        delivered=SequenceInfo(consumer_seq=delivered, stream_seq=delivered),
        ack_floor=SequenceInfo(consumer_seq=acked, stream_seq=acked),
    )


def test_messages_waiting_with_nothing_delivered_for_the_bound_is_a_stall() -> None:
    watch = ConsumerWatch("c", stall_after=10)
    assert watch.observe(reading(3, 5, 4), busy=False, backing_off=False, now=0) is None
    assert watch.observe(reading(3, 5, 4), busy=False, backing_off=False, now=9) is None
    why = watch.observe(reading(3, 5, 4), busy=False, backing_off=False, now=10)
    assert why == "consumer c stalled: 3 pending, 1 unacknowledged, nothing delivered for 10 s"
    # A delivery is progress: the clock starts again.
    assert watch.observe(reading(2, 6, 5), busy=False, backing_off=False, now=11) is None
    assert watch.observe(reading(2, 6, 5), busy=False, backing_off=False, now=20) is None


def test_a_running_handler_a_backoff_or_nothing_pending_is_not_a_stall() -> None:
    watch = ConsumerWatch("c", stall_after=1)
    for now in range(5):
        assert watch.observe(reading(3, 5, 4), busy=True, backing_off=False, now=now) is None
    for now in range(5, 10):
        assert watch.observe(reading(3, 5, 4), busy=False, backing_off=True, now=now) is None
    for now in range(10, 15):
        assert watch.observe(reading(0, 5, 4), busy=False, backing_off=False, now=now) is None
    # Work waiting again: the bound counts from the last reading without any.
    assert watch.observe(reading(1, 5, 4), busy=False, backing_off=False, now=14.5) is None
    assert watch.observe(reading(1, 5, 4), busy=False, backing_off=False, now=15) is not None


def test_a_missing_consumer_is_stalled_at_once() -> None:
    watch = ConsumerWatch("gone", stall_after=60)
    assert watch.observe(None, busy=False, backing_off=False, now=0) == "consumer gone is missing"
