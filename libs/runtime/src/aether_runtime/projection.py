"""Holding a projection: a pure ``evolve`` folded over events, each event applied once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS, MISSIONS_STREAM, Event, replay
from aether_runtime import metrics

S = TypeVar("S")


class Projection(Generic[S]):
    """The service's state, folded from the stream.

    Events are applied at most once (by event id), so the same event arriving through the
    start-up replay, the durable consumer and the service's own optimistic apply after
    publishing is folded exactly once. The stream sequence of every replayed event is kept,
    so a service can say where in the stream the work it still owes begins
    (``first_sequence``).
    """

    def __init__(self, initial: S, evolve: Callable[[S, Event], S]) -> None:
        self.state = initial
        self._evolve = evolve
        # event id -> stream sequence (0 when folded from elsewhere than the replay).
        self._seen: dict[str, int] = {}
        self.last_sequence = 0

    def apply(self, event: Event, sequence: int = 0) -> bool:
        """Fold ``event`` unless it was folded before; says whether it was new."""
        if event.event_id in self._seen:
            return False
        self._seen[event.event_id] = sequence
        self.state = self._evolve(self.state, event)
        return True

    def first_sequence(self, event_ids: Iterable[str]) -> int | None:
        """The lowest stream sequence among the replayed events ``event_ids``, or None
        when none of them came from the replay."""
        sequences = [self._seen.get(event_id, 0) for event_id in event_ids]
        return min((seq for seq in sequences if seq > 0), default=None)

    def apply_all(self, events: list[Event]) -> None:
        for event in events:
            self.apply(event)

    async def rebuild(self, js: JetStreamContext, service: str) -> int:
        """Replay the mission stream into this projection; returns the last sequence."""

        def fold(projection: Projection[S], event: Event, seq: int) -> Projection[S]:
            projection.apply(event, seq)
            projection.last_sequence = seq
            return projection

        _, result = await replay(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, self, fold)
        metrics.REPLAYED.labels(service).inc(result.applied)
        return result.last_sequence
