"""Load → decide → publish, for events and for the passing of time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from aether_events import (
    Event,
    Publisher,
    TaskReady,
    WaveCompleted,
    WaveStarted,
    carried_by,
    publish_in_order,
    tag_of,
)
from aether_runtime import Delivery, Projection, note, stored_sequence
from aether_runtime.lease import LeaseLost
from aether_scheduler import metrics
from aether_scheduler.domain import (
    Config,
    State,
    catch_up,
    decide,
    evolve,
    mission_timer,
    next_timer,
    tick,
)

log = logging.getLogger("aether.scheduler")


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], Publisher],
        config: Config,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self.config = config
        self._clock = clock
        # Events and timer ticks take turns: each sees the other's decisions.
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # When the timer loop looks again unless woken (None: it is looking now).
        self._deadline: datetime | None = None
        self.stopped = asyncio.Event()
        # Told the mission of every event folded here (the cutting of ended attempts'
        # connections, ``attempt_connections.ConnectionCutter``).
        self.on_applied: Callable[[str], None] | None = None
        # Whether this process may publish its decisions now: it holds the scheduler's
        # lease (``aether_runtime.lease``). Checked before every publish, so a process
        # that lost it (paused past its deadline) decides nothing more.
        self.may_act: Callable[[], bool] = lambda: True

    async def handle(self, event: Event, delivery: Delivery) -> None:
        async with self._lock:
            decided: list[Event] = []
            # An attempt's result may carry the attempt's start and usage (``carried_by``):
            # each is folded and answered in turn, as if delivered alone right before the
            # result. Stored in the result's message, they are applied with its sequence:
            # a redelivery finds each by its id, and once the position passes the
            # message, by that sequence.
            for each in carried_by(event):
                self._apply(each, delivery.sequence)
                out = decide(self.projection.state, each, self._clock(), self.config)
                # Stored and applied before the next is folded, as a delivery's would be.
                await self._store(out)
                decided += out
            self._log(decided)
        self._wake_if_sooner(event.mission_id)

    def _wake_if_sooner(self, mission_id: str) -> None:
        """Wake the timer loop when the event's mission now has a timer due before the
        loop would look again (a retry's backoff): only there can an event have moved a
        timer earlier. Waking it for every event cost each delivery a tick over every
        live mission and a new wait."""
        if self._deadline is None:
            return
        due = mission_timer(self.projection.state, mission_id, self.config)
        if due is not None and due < self._deadline:
            self._wake.set()

    def wake(self) -> None:
        """Make the timer loop look again now (a new event, or a stop)."""
        self._wake.set()

    async def handle_telemetry(self, event: Event, delivery: Delivery) -> None:
        """Heartbeats only move liveness clocks forward; nothing is decided."""
        async with self._lock:
            self.fold_telemetry(event)

    def fold(self, event: Event, sequence: int) -> None:
        """Fold an event a standby follows (stored at ``sequence``), deciding nothing."""
        self._apply(event, sequence)

    def fold_telemetry(self, event: Event) -> None:
        self.projection.state = evolve(self.projection.state, event)

    async def catch_up(self) -> None:
        """Decide what the rebuilt state says is owed, before timers and deliveries."""
        async with self._lock:
            if not self.may_act():
                return
            await self._publish(catch_up(self.projection.state, self._clock(), self.config))

    async def on_tick(self) -> None:
        async with self._lock:
            if not self.may_act():
                return  # a standby's timers do not fire (nor those of one that lost the lease)
            await self._publish(tick(self.projection.state, self._clock(), self.config))

    async def _publish(self, decided: list[Event]) -> None:
        await self._store(decided)
        self._log(decided)

    async def _store(self, decided: list[Event]) -> None:
        # In order, with one wait for all the acknowledgements: a merge that frees the
        # next task decides WaveCompleted, WaveStarted and TaskReady, and the TaskReady a
        # chained mission waits for is stored a round trip after them, not three.
        if not decided:
            return
        if not self.may_act():
            raise LeaseLost("not the active scheduler: decisions not published")
        messages = packed(decided)
        acks = await publish_in_order(self._publisher(), messages)
        for message, ack in zip(messages, acks, strict=True):
            # Applied before the lock is let go: the next event must see this decision
            # even before it comes back through the consumer (it is then skipped as
            # already applied).
            for out in carried_by(message):
                self._apply(out, stored_sequence(ack))

    def _log(self, decided: list[Event]) -> None:
        if not decided:
            return
        # On the delivery's line when there is one; a timer's or the start-up's decisions
        # get lines of their own.
        tags = [tag_of(type(out)) for out in decided]
        if not note(decided=tags, decided_event_ids=[out.event_id for out in decided]):
            for tag, out in zip(tags, decided, strict=True):
                log.info("decided %s", tag, extra={"decided_event_id": out.event_id})

    def _apply(self, event: Event, sequence: int = 0) -> None:
        before = self.projection.state
        if self.projection.apply(event, sequence):
            metrics.observe(before, self.projection.state, event)
            if self.on_applied is not None:
                self.on_applied(event.mission_id)

    async def run_timers(self, max_sleep: float = 1.0) -> None:
        """Fire due timers (retry backoffs, heartbeat timeouts) until cancelled.

        Timers live in the state, rebuilt from the stream, so after a restart every
        pending one fires when it is due.
        """
        while not self.stopped.is_set():
            try:
                await self.on_tick()
            except Exception:
                log.exception("timer tick failed; trying again")
            # No await from here to the wait: no event is handled in between, so none
            # can move a timer this look misses.
            due = next_timer(self.projection.state, self.config)
            now = self._clock()
            wait = max_sleep
            if due is not None:
                wait = min(max_sleep, max(0.0, (due - now).total_seconds()))
            wait = max(wait, 0.01)
            self._wake.clear()
            self._deadline = now + timedelta(seconds=wait)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
            finally:
                self._deadline = None
        # Ending on a flag, not only on cancellation: on Python 3.11 ``wait_for`` can
        # swallow a cancellation that arrives just as what it waits for completes.


def packed(decided: list[Event]) -> list[Event]:
    """``decided`` as the messages to publish: the waves decided right before a
    ``TaskReady`` of their mission go inside it (``TaskReady.carried``). A merge that
    frees a chained mission's next task decides WaveCompleted, WaveStarted and
    TaskReady: one message stored and delivered to the gateway instead of three. Every
    consumer unfolds them (``carried_by``), each with its own id, in the same order."""
    out: list[Event] = []
    waves: list[WaveCompleted | WaveStarted] = []
    for event in decided:
        if isinstance(event, WaveCompleted | WaveStarted):
            waves.append(event)
            continue
        if isinstance(event, TaskReady) and all(w.mission_id == event.mission_id for w in waves):
            if waves:
                event = msgspec.structs.replace(event, carried=[*event.carried, *waves])
        else:
            out += waves
        waves = []
        out.append(event)
    return out + waves
