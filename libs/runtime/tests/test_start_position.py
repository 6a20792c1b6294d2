"""Where a durable consumer created at start-up begins: at the earliest work still due."""

from __future__ import annotations

from datetime import UTC, datetime

from aether_events import Event, MissionMessagePosted
from aether_runtime import Projection
from aether_runtime.consumers import start_sequence


def message(event_id: str) -> MissionMessagePosted:
    return MissionMessagePosted(
        event_id=event_id,
        mission_id="m",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        correlation_id="c",
        text="x",
        author="a",
    )


def count(state: int, event: Event) -> int:
    return state + 1


def test_nothing_due_starts_right_after_the_replay() -> None:
    assert start_sequence(0, None) == 1
    assert start_sequence(41, None) == 42


def test_due_work_in_the_replayed_history_starts_the_consumer_there() -> None:
    assert start_sequence(41, 7) == 7
    # Work due beyond the replay cannot start it later than right after the replay.
    assert start_sequence(41, 90) == 42


def test_the_projection_knows_where_replayed_events_were_stored() -> None:
    projection: Projection[int] = Projection(0, count)
    projection.apply(message("a"), 5)
    projection.apply(message("b"), 9)
    projection.apply(message("own"))  # published by the service itself, not replayed
    assert projection.apply(message("a"), 12) is False  # folded once, first place kept
    assert projection.state == 3
    assert projection.first_sequence(["b", "a"]) == 5
    assert projection.first_sequence(["b", "own", "unknown"]) == 9
    assert projection.first_sequence(["own"]) is None
    assert projection.first_sequence([]) is None
