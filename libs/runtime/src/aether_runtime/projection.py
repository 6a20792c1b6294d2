"""Holding a projection: a pure ``evolve`` folded over events, each event applied once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import msgspec
from nats.js import JetStreamContext

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    Event,
    UnknownEventType,
    decode,
    on_its_subject,
    replay,
    type_subjects,
)
from aether_events.replay import START_PATIENCE_SECONDS, ReplayResult, stored_messages
from aether_runtime import metrics
from aether_runtime.unanswered import stream_end

S = TypeVar("S")


def stored_sequence(ack: object) -> int:
    """The stream sequence a publish acknowledgement names (0 from a publisher that
    names none), to apply a service's own event with."""
    seq = getattr(ack, "seq", 0)
    return seq if isinstance(seq, int) else 0


class Projection(Generic[S]):
    """The service's state, folded from the stream.

    Events are applied at most once, so the same event arriving through the start-up
    replay, the durable consumer, a follower and the service's own optimistic apply after
    publishing is folded exactly once. Two means, so that what is remembered does not grow
    with the stream's history:

    - ``position``: every event stored at or below it that can reach the projection was
      folded (the start-up replay folds the whole stream up to its end; ``advance`` moves
      it to where every lane feeding the projection has settled). An event given with its
      stream sequence at or below the position is known by that alone.
    - above the position (or given without a sequence), by event id: the ids folded since
      the position, forgotten when it passes them.

    Callers therefore give the stream sequence wherever they know it (a delivery's, a
    publish acknowledgement's); an event given without one is recognised by id only.
    """

    def __init__(self, initial: S, evolve: Callable[[S, Event], S]) -> None:
        self.state = initial
        self._evolve = evolve
        # event id -> stream sequence (0 when not known) of events folded above the position.
        self._seen: dict[str, int] = {}
        self.position = 0
        self.last_sequence = 0
        # The stream sequence of the earliest replayed event whose work is still due (see
        # ``rebuild``), or None.
        self.first_due: int | None = None

    def apply(self, event: Event, sequence: int = 0) -> bool:
        """Fold ``event`` unless it was folded before; says whether it was new."""
        if 0 < sequence <= self.position:
            # Folded before: any id kept for it (applied without a sequence) can go.
            self._seen.pop(event.event_id, None)
            return False
        known = self._seen.get(event.event_id)
        if known is not None:
            if sequence and not known:
                self._seen[event.event_id] = sequence
            return False
        self._seen[event.event_id] = sequence
        self.state = self._evolve(self.state, event)
        return True

    def advance(self, position: int) -> None:
        """Every event stored at or below ``position`` that can reach this projection has
        been applied: recognise them by sequence from now on and forget their ids."""
        if position <= self.position:
            return
        self.position = position
        self._seen = {i: s for i, s in self._seen.items() if s == 0 or s > position}

    @property
    def remembered(self) -> int:
        """How many event ids are kept (those folded above the position)."""
        return len(self._seen)

    def first_sequence(self, event_ids: Iterable[str]) -> int | None:
        """The lowest stream sequence among the events ``event_ids`` still remembered
        with their sequence, or None."""
        sequences = [self._seen.get(event_id, 0) for event_id in event_ids]
        return min((seq for seq in sequences if seq > 0), default=None)

    def apply_all(self, events: list[Event]) -> None:
        for event in events:
            self.apply(event)

    async def rebuild(
        self,
        js: JetStreamContext,
        service: str,
        due: Callable[[S], Iterable[str]] | None = None,
        types: Iterable[type[Event]] | None = None,
        unfold: Callable[[Event], Iterable[Event]] | None = None,
    ) -> int:
        """Replay the mission stream into this projection; returns the sequence it is
        complete up to.

        ``types``, when given, are the only event types ``evolve`` changes the state for
        (every other leaves it as it is): only those are read back, so a long history of
        other events costs nothing to replay. ``due`` names the replayed events whose
        work is still owed by the rebuilt state; the lowest sequence among them is kept
        as ``first_due``. The position then moves to the end of the replay, so the
        replayed events' ids are not kept.

        ``unfold``, when given, says which events one stored event stands for
        (``aether_events.carried_by``: an attempt's result, the events it carries and
        then itself), for a service whose handler folds them so: each is applied in
        turn with the message's sequence. ``types`` must then name the types that carry
        them as well as theirs.
        """

        def fold(projection: Projection[S], event: Event, seq: int) -> Projection[S]:
            projection._apply_stored(event, seq, unfold)
            projection.last_sequence = seq
            return projection

        # Everything stored by now is read back (of the types asked for), whatever the
        # last one read was.
        end = await stream_end(js, MISSIONS_STREAM)
        if types is None:
            _, result = await replay(
                js, MISSIONS_STREAM, ALL_MISSION_EVENTS, self, fold, patience=START_PATIENCE_SECONDS
            )
        else:
            result = await self._replay_types(js, types, end, unfold)
        metrics.REPLAYED.labels(service).inc(result.applied)
        last = max(result.last_sequence, end)
        if due is not None:
            self.first_due = self.first_sequence(due(self.state))
        self.advance(last)
        self.last_sequence = last
        return last

    def _apply_stored(
        self, event: Event, sequence: int, unfold: Callable[[Event], Iterable[Event]] | None
    ) -> None:
        for each in (event,) if unfold is None else unfold(event):
            self.apply(each, sequence)

    async def _replay_types(
        self,
        js: JetStreamContext,
        types: Iterable[type[Event]],
        end: int,
        unfold: Callable[[Event], Iterable[Event]] | None = None,
    ) -> ReplayResult:
        """Fold the events of ``types`` stored up to ``end``, in stream order.

        One read per type, merged by sequence: the server finds one subject's messages
        quickly, while a consumer filtered to several subjects is slower to read than
        the whole stream. Events stored after ``end`` are left to the consumers.
        """
        stored: list[tuple[int, str, bytes]] = []
        for subject in sorted({subject for t in types for subject in type_subjects(t)}):
            async for msg in stored_messages(
                js, MISSIONS_STREAM, subject, patience=START_PATIENCE_SECONDS
            ):
                seq = msg.metadata.sequence.stream
                if seq <= end:
                    stored.append((seq, msg.subject, msg.data))
        stored.sort(key=lambda item: item[0])
        result = ReplayResult(last_sequence=0)
        for seq, subject, data in stored:
            try:
                event = decode(data)
            except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
                result.skipped += 1
            else:
                if on_its_subject(event, subject, len(data)):
                    self._apply_stored(event, seq, unfold)
                    result.applied += 1
                else:
                    result.skipped += 1
            result.last_sequence = seq
        return result
