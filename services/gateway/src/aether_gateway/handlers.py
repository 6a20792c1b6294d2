"""The projection's entry points: fold each delivered event, catch up on start, repair
what the consumer missed, and rebuild from scratch on an administrator's request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from nats.js import JetStreamContext

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    Event,
    entries_of,
    mission_subject,
)
from aether_events.replay import START_PATIENCE_SECONDS
from aether_gateway.adapters.batches import LIVE_LINGER, LIVE_SPACING, Batcher, InOrder
from aether_gateway.adapters.faults import Stream
from aether_gateway.adapters.read_model import ReadModel, Rebuild
from aether_gateway.adapters.stream import (
    Incoming,
    StoredMessage,
    event_id_at,
    read_stored,
    stored_runs,
)
from aether_gateway.metrics import TELEMETRY_LOST
from aether_runtime import ConsumerSpec, Delivery, ensure_consumer
from aether_runtime.unanswered import asked_again, stream_end

log = logging.getLogger("aether.gateway.projection")

# Stored messages folded per transaction when catching up (at start, after a stall),
# and how many runs the stream is read ahead of the one being written.
CATCH_UP_RUN = 500
READ_AHEAD = 2
# Telemetry handed to the live runs and not folded yet (transcript entries, each
# counted; any other telemetry event as one), past which a telemetry delivery keeps its
# message until it is folded, so the consumer delivers no more telemetry meanwhile. The
# consumer lets ``LIVE_RUN`` messages be in flight, and a runner sends at most 64 entries
# in one, but an attempt's credential publishes what it likes: up to the server's
# largest message, thousands of entries each. Without a bound, a mission event delivered
# after a flood waited for all of it (20,000 entries: about 40 s on a loaded 2-core
# machine, docs/benchmarks.md), and every query meanwhile for ``settled``. With it, a
# mission event waits for this many entries and one message at most.
TELEMETRY_BACKLOG = 1024
# A gateway starting after a flood: the telemetry it folds before the mission consumer
# starts (in entries, as ``TELEMETRY_BACKLOG`` counts them); the live telemetry consumer,
# created after what was folded, delivers the rest, bounded as any flood is. And the
# bytes of telemetry read from the stream at a time (a run, a read), past which a run is
# folded whatever its count of messages: what the catch-up (and a rebuild) holds at once
# stays bounded however large the messages.
TELEMETRY_AT_START = 4 * TELEMETRY_BACKLOG
CATCH_UP_BYTES = 4 << 20


@dataclass
class TelemetryRun:
    """Telemetry to fold in one transaction, its weight (``weight_of``), and the last
    stream sequence it covers (messages passed over included)."""

    items: list[Incoming] = field(default_factory=list)
    weight: int = 0
    last: int = 0


def weight_of(event: Event) -> int:
    """What a telemetry event weighs in a backlog: its transcript entries, or one."""
    return max(len(entries_of(event)), 1)


def telemetry_runs(stored: list[StoredMessage]) -> list[TelemetryRun]:
    """``stored``'s telemetry events (what does not decode is passed over, as a live
    consumer is never given it) in runs of at most ``TELEMETRY_BACKLOG`` entries, the
    last message of each taking it past that at most."""
    runs: list[TelemetryRun] = []
    run = TelemetryRun()
    for item in map(Incoming.of_message, stored):
        run.last = item.seq
        if item.event is None:
            continue
        run.items.append(item)
        run.weight += weight_of(item.event)
        if run.weight >= TELEMETRY_BACKLOG:
            runs.append(run)
            run = TelemetryRun()
    if run.last:
        runs.append(run)
    return runs


async def _released(folding: asyncio.Future[None], delivery: Delivery) -> None:
    """Let the consumer deliver the next message while this one's event (queued
    already) is folded; return once it is."""
    delivery.release()
    await folding


def lost_telemetry(position: int, first_seq: int, last_seq: int) -> int:
    """How many telemetry messages were stored after ``position`` (what the gateway
    folded up to) but are no longer in the stream, whose first and last sequences are
    ``first_seq`` and ``last_seq`` (an empty stream's first is its last plus one). None
    for a gateway that has folded nothing yet (``position`` 0): it never missed any."""
    if position <= 0:
        return 0
    return max(0, min(first_seq - 1, last_seq) - position)


class Projector:
    """Keeps the PostgreSQL read model in step with the mission and telemetry streams.

    Live deliveries are folded in runs (``batches``): a handler hands its event over and
    releases its message, so the next one is delivered while this one is folded, and
    returns (its message is then settled) once its event is committed.

    Both streams' deliveries share one queue, and a run folds its telemetry before its
    mission events: ``aether mission logs -f`` reads an attempt's transcript from the read
    model and stops at the mission's end, so a transcript entry delivered before the
    mission's last events must not be folded after them. Sharing the queue lets
    telemetry wait for company as mission events do (folded alone, it could not). How
    much telemetry waits there is bounded by its transcript entries
    (``TELEMETRY_BACKLOG``), not only by the consumer's messages in flight: a flood an
    attempt publishes delays the mission events delivered after it by that much."""

    def __init__(
        self,
        read_model: ReadModel,
        telemetry: ConsumerSpec | None = None,
        *,
        stopping: Callable[[], bool] = lambda: False,
        spacing: float = LIVE_SPACING,
    ) -> None:
        self.read_model = read_model
        self.telemetry = telemetry
        self._missions = InOrder(read_model.take_items, read_model.position)
        self._telemetry = InOrder(read_model.take_telemetry, read_model.telemetry_position)
        self.runs: Batcher[tuple[Stream, Incoming]] = Batcher(
            self._fold_run,
            name="live",
            stopping=stopping,
            linger=LIVE_LINGER,
            spacing=spacing,
        )
        # Set (and replaced) whenever a live run has been folded: see ``next_fold``.
        self._folded = asyncio.Event()
        # The start found rows folded by an older fold version (``refold``).
        self.refold_due = False
        # Telemetry messages the stream dropped before this gateway's start read them.
        self.telemetry_lost = 0
        # Telemetry handed to the runs and not folded yet (``TELEMETRY_BACKLOG``), and
        # how many deliveries kept their message until folded (for tests).
        self.telemetry_backlog = 0
        self.telemetry_held = 0

    async def on_event(self, event: Event, delivery: Delivery) -> None:
        """The mission consumer's handler: fold the event (a second delivery is a no-op)."""
        folding = self.runs.submit(("missions", Incoming.of_event(event, delivery.sequence)))
        await _released(folding, delivery)

    async def on_telemetry(self, event: Event, delivery: Delivery) -> None:
        """The telemetry consumer's handler: fold a heartbeat, a progress report or
        transcript entries; past ``TELEMETRY_BACKLOG``, its message is released only
        once it is folded."""
        weight = weight_of(event)
        folding = self.runs.submit(("telemetry", Incoming.of_event(event, delivery.sequence)))
        self.telemetry_backlog += weight
        try:
            if self.telemetry_backlog > TELEMETRY_BACKLOG:
                self.telemetry_held += 1
                await folding
            else:
                await _released(folding, delivery)
        finally:
            self.telemetry_backlog -= weight

    async def _fold_run(self, run: list[tuple[Stream, Incoming]]) -> None:
        """Fold a run's telemetry, then its mission events, each stream in the order its
        events were delivered (one transaction each)."""
        telemetry = [item for stream, item in run if stream == "telemetry"]
        missions = [item for stream, item in run if stream == "missions"]
        if telemetry:
            await self._telemetry(telemetry)
        if missions:
            await self._missions(missions)
        self._folded.set()
        self._folded = asyncio.Event()

    def hurry(self) -> None:
        """Someone waits for the read model: fold the deliveries waiting for their run now."""
        self.runs.hurry()

    async def next_fold(self, within: float) -> None:
        """Return once the next live run here has been folded, or after ``within``
        seconds (the position also moves by the catch-up, or another replica's runs)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._folded.wait()

    async def close(self) -> None:
        """Stop folding live deliveries (at the service's stop)."""
        await self.runs.close()

    async def rebuild(self, js: JetStreamContext) -> int:
        """Fold what was stored since the read model's positions; return the mission
        stream's last sequence (where the runtime starts the mission consumer).

        The read model persists its positions, so a restart resumes where it stopped
        instead of replaying the whole stream. A stream whose history is not the one the
        read model folded (recreated, or it lost its tail in a crash) means the read model
        is derived from events that no longer exist: it is dropped and rebuilt.

        Every request to the bus here is asked again while the server does not answer
        (``START_PATIENCE_SECONDS``), as in every service's start: a gateway starting as
        a server of its cluster comes back meets a moment of unanswered requests while
        the streams' groups elect leaders.
        """
        position = await self.read_model.position()
        end = await stream_end(js, MISSIONS_STREAM)
        reason = await asked_again(
            lambda: self.diverged(js, position, end), "the event the read model folded last"
        )
        if reason is not None:
            log.warning(
                "the stream's history is not the read model's; rebuilding the read model",
                extra={"reason": reason, "position": position},
            )
            await self.read_model.reset()
            position = 0
        # Before the catch-up: a read model that has folded nothing is this build's.
        self.refold_due = await self.read_model.refold_due()
        folded = await self._fold_after(js, position, patience=START_PATIENCE_SECONDS)
        last = max(position, await self.read_model.position())
        log.info("read model caught up", extra={"from": position, "to": last, "folded": folded})
        await self._catch_up_telemetry(js)
        return last

    async def _fold_after(
        self, js: JetStreamContext, position: int, limit: int = 0, patience: float = 0.0
    ) -> int:
        """Fold the mission stream's messages stored after ``position`` (at most
        ``limit`` of them when given); returns how many changed the read model.
        ``patience``: for how long a read the server does not answer is made again.

        The stream is read by a task of its own, a few runs ahead: while one run is
        written, the next ones arrive (and no more than those are held)."""
        until = position + limit if limit else None
        ready: asyncio.Queue[list[StoredMessage] | None] = asyncio.Queue(maxsize=READ_AHEAD)

        async def read() -> None:
            subject = ALL_MISSION_EVENTS
            runs = stored_runs(
                js,
                MISSIONS_STREAM,
                subject,
                after=position,
                until=until,
                size=CATCH_UP_RUN,
                patience=patience,
            )
            try:
                async with contextlib.aclosing(runs):
                    async for run in runs:
                        await ready.put(run)
            except asyncio.CancelledError:
                raise  # the folding stopped: nobody waits for the end
            except BaseException:
                await ready.put(None)  # the end, then the error (from reader.result())
                raise
            await ready.put(None)

        reader = asyncio.create_task(read(), name="gateway-catch-up-read")
        folded = 0
        try:
            while (run := await ready.get()) is not None:
                folded += await self.read_model.take_run(run)
        except BaseException:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            raise
        await reader  # a failed read fails the catch-up (what was folded is kept)
        return folded

    async def diverged(self, js: JetStreamContext, position: int, stream_last: int) -> str | None:
        """Why the stream's history differs from what the read model folded, or ``None``.

        The stream's last event folded must still be on the stream, at its sequence: a
        stream deleted and created again, or one that lost its last writes when the
        server died, numbers different events with the sequences the read model knows.
        """
        if position > stream_last:
            return f"position {position} is past the stream's end ({stream_last})"
        folded = await self.read_model.last_folded()
        if folded is None:
            return None
        seq, event_id = folded
        stored = await event_id_at(js, MISSIONS_STREAM, seq)
        if stored != event_id:
            return f"the stream holds {stored or 'nothing'} at {seq}, not {event_id}"
        return None

    async def catch_up(self, js: JetStreamContext, limit: int = 10_000) -> int:
        """Fold from the stream what the consumer has not delivered (it is stalled, or
        lost its place); safe beside the consumer, which then skips what this folded."""
        return await self._fold_after(js, await self.read_model.position(), limit)

    async def fill_gaps(self, js: JetStreamContext) -> int:
        """Look at every sequence range the position jumped over; refold each mission
        with an event there that the read model lacks. Returns the missions refolded.

        A jump is usually harmless (an event type this build does not know, a payload
        the runtime refused as poison); a missed event cannot simply be folded late, as
        later events of its mission were folded without it, so its mission is refolded.
        """
        refolded = 0
        for first, last in await self.read_model.gaps():
            messages = await read_stored(
                js, MISSIONS_STREAM, ALL_MISSION_EVENTS, after=first - 1, until=last
            )
            missing: set[str] = set()
            for message in messages:
                item = Incoming.of_message(message)
                if item.unknown:
                    continue
                if item.event is not None:
                    known = await self.read_model.knows(message.seq, item.event.event_id)
                else:
                    known = await self.read_model.failed_at(message.seq)
                if not known and message.mission_id:
                    missing.add(message.mission_id)
            for mission_id in sorted(missing):
                history = partial(read_stored, js, MISSIONS_STREAM, mission_subject(mission_id))
                folded = await self.read_model.refold_mission(mission_id, history)
                log.warning(
                    "mission refolded: the consumer had skipped some of its events",
                    extra={"refolded_mission": mission_id, "folded": folded},
                )
                refolded += 1
            await self.read_model.close_gap(first)
        return refolded

    async def _catch_up_telemetry(self, js: JetStreamContext) -> None:
        position = await self.read_model.telemetry_position()
        state = (
            await asked_again(lambda: js.stream_info(TELEMETRY_STREAM), "the telemetry stream")
        ).state
        if position > state.last_seq:
            await self.read_model.reset_telemetry_position()
            position = 0
        self.telemetry_lost = lost_telemetry(position, state.first_seq, state.last_seq)
        if self.telemetry_lost:
            # The gateway reads every telemetry subject, so each sequence between where it
            # stopped and the stream's first is a message it never saw: it was dropped by
            # the stream's age or size limit while no gateway ran (transcript entries
            # among them are lost; docs/transcripts.md).
            TELEMETRY_LOST.inc(self.telemetry_lost)
            log.warning(
                "telemetry dropped by the stream before the gateway read it",
                extra={
                    "lost": self.telemetry_lost,
                    "lost_from": position + 1,
                    "lost_to": position + self.telemetry_lost,
                },
            )
        last = await self._fold_telemetry_at_start(js, position)
        if self.telemetry is not None:
            # The runtime starts every consumer after the *mission* stream's position;
            # the telemetry consumer counts another stream, so it is created here first,
            # after what was folded: the live fold takes the rest of a backlog.
            await ensure_consumer(js, self.telemetry, last)

    async def _fold_telemetry_at_start(self, js: JetStreamContext, position: int) -> int:
        """Fold the telemetry stored after ``position``, up to ``TELEMETRY_AT_START``
        entries, in runs of at most ``TELEMETRY_BACKLOG`` entries (and one message more)
        and ``CATCH_UP_BYTES``, read as they are folded; returns the last sequence read
        and folded (where the telemetry consumer starts when it is created now)."""
        last = position
        folded = 0
        runs = stored_runs(
            js,
            TELEMETRY_STREAM,
            ALL_TELEMETRY,
            after=position,
            size=CATCH_UP_RUN,
            patience=START_PATIENCE_SECONDS,
            max_bytes=CATCH_UP_BYTES,
        )
        async with contextlib.aclosing(runs):
            async for stored in runs:
                for run in telemetry_runs(stored):
                    if run.items:
                        await self.read_model.take_telemetry(run.items)
                    folded += run.weight
                    last = run.last
                    if folded >= TELEMETRY_AT_START:
                        break
                if folded >= TELEMETRY_AT_START:
                    break
        if folded:
            log.info("telemetry caught up", extra={"from": position, "to": last, "folded": folded})
        return last

    async def rebuild_all(self, js: JetStreamContext) -> tuple[int, int, int]:
        """Replace the whole read model by folding both streams from their start.

        Returns the mission and telemetry sequences folded up to, and the event count.
        """
        async with self.read_model.rebuilding() as rebuild:
            await self._fold_all(js, rebuild)
        return self._rebuilt(rebuild)

    async def refold(
        self, js: JetStreamContext, began: Callable[[Rebuild], None] = lambda _: None
    ) -> tuple[int, int, int] | None:
        """``rebuild_all`` unless the rows are folded by this build's fold version (or a
        later one) by the time the rebuild's locks are held: then ``None``. ``began``
        is given the rebuild once it holds them (to follow its progress)."""
        async with self.read_model.refolding() as rebuild:
            if rebuild is None:
                return None
            began(rebuild)
            await self._fold_all(js, rebuild)
        return self._rebuilt(rebuild)

    async def _fold_all(self, js: JetStreamContext, rebuild: Rebuild) -> None:
        runs = stored_runs(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, size=CATCH_UP_RUN)
        async with contextlib.aclosing(runs):
            async for run in runs:
                await rebuild.fold_run(run)
        telemetry = stored_runs(
            js, TELEMETRY_STREAM, ALL_TELEMETRY, size=CATCH_UP_RUN, max_bytes=CATCH_UP_BYTES
        )
        async with contextlib.aclosing(telemetry):
            async for stored in telemetry:
                for item in map(Incoming.of_message, stored):
                    if item.event is not None:
                        await rebuild.fold_telemetry(item.event, item.seq)
                # Undecodable events at the end still count as read.
                rebuild.telemetry_last = max(rebuild.telemetry_last, stored[-1].seq)

    def _rebuilt(self, rebuild: Rebuild) -> tuple[int, int, int]:
        log.info(
            "read model rebuilt",
            extra={
                "missions_to": rebuild.missions_last,
                "telemetry_to": rebuild.telemetry_last,
                "folded": rebuild.folded,
            },
        )
        return rebuild.missions_last, rebuild.telemetry_last, rebuild.folded
