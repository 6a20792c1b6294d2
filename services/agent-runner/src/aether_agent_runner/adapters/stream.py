"""The one way an attempt's events reach the stream while it works.

The handler opens an ``AttemptStream`` per attempt and hands its ``emit`` to the attempt:
AgentStarted, UsageRecorded, AgentProgress and TranscriptRecorded are queued there and
published in the background, in the order emitted (what is queued together goes out
together, with one wait for its acknowledgements), so the agent never waits on a publish
acknowledgement. The queue is bounded: an attempt that emits faster than the bus takes
waits for room rather than holding an unbounded backlog. The handler closes the stream
with the attempt's result (``close(then=...)``), published last: after every event the
attempt emitted, on the same connection, so the stream stores it after them. What is
left when the attempt ends is usually its last transcript entries (telemetry, lost
without failing the attempt): the result goes out right behind them, with one wait for
all their acknowledgements, instead of a round trip after theirs. Any other event left
(a model call's cost) is stored first, and the result published only once it is: a cost
must not be lost behind a result already stored. Each event's id is derived from its
step, so an entry published again (a retried publish, a resumed attempt) is stored once.

Transcript entries queued together go out together as one ``TranscriptEntries`` (an
entry alone as itself): a burst of a CLI agent's output is one message, one
acknowledgement and one delivery to the gateway instead of one each, which on a busy
machine is CPU the attempts on a mission's path do not get. Given a ``linger`` (the
built-in loop's stream, ``TRANSCRIPT_LINGER``), an entry also waits that long for the
ones after it, so a short attempt's whole transcript is one message; the board shows an
entry that much later, ``close`` sends what waits at once, and an entry lost with a
killed runner is sent again when the attempt resumes from its journal. The other events
go out as they come.

With a ``linger``, the attempt's ``AgentStarted`` and each model call's ``UsageRecorded``
wait with the entries too (``HELD``), and go out when they do; what still waits when the
attempt ends goes out inside its result (``AgentCompleted.carried``), which every consumer
unfolds into the events it carries (``aether_events.carried_by``). An attempt that ends
that soon (a task with no work for the model) is then one message on the mission stream
instead of four, each stored, delivered to the scheduler and the gateway and acknowledged:
about a tenth of such a task's CPU, all services counted. An event held when its runner
is killed is emitted again by the resumed attempt, under the same id (the built-in loop
emits again the usage of its journal's last replies: ``runtimes.builtin``). A result that
is not the attempt's own report (none, or another runner's) carries nothing: what is held
goes out before it as before.

Progress and transcript entries are telemetry: one that cannot be published is logged
and skipped. Any other event (AgentStarted, UsageRecorded: the cost of a model call) that
cannot be published fails the attempt: the next ``emit`` raises it, and so does
``close``, so the delivery is handed back as it was when the attempt published it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.api import PubAck

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentProgress,
    AgentStarted,
    Event,
    Publisher,
    TranscriptEntries,
    TranscriptRecorded,
    UsageRecorded,
    encode,
    step_event_id,
    step_ids,
)
from aether_events.publisher import ended, send_in_order

log = logging.getLogger("aether.agent-runner.stream")

# What an attempt is given to send its events with.
Emit = Callable[[Event], Awaitable[object]]

BUFFER = 256
# How long a transcript entry waits for company before it is sent.
TRANSCRIPT_LINGER = 0.25
# The most entries one TranscriptEntries holds, and the most bytes its entries encode to
# (counted as the bus counts, not in characters: a character takes up to four bytes, six
# in JSON), so a group stays within ``ATTEMPT_EVENT_BYTES`` and the attempt credential's
# largest message (an entry alone is at most ``adapters.transcript.ENTRY_BYTES``).
ENTRIES_PER_MESSAGE = 64
BYTES_PER_MESSAGE = 128 * 1024
# Lost without failing the attempt (a resumed attempt publishes its transcript again).
TELEMETRY: dict[type[Event], str] = {
    AgentProgress: "progress not published",
    TranscriptRecorded: "transcript entry not published",
    TranscriptEntries: "transcript entries not published",
}
# What waits with the entries (given a ``linger``) and is carried by the result if it is
# still waiting when the attempt ends.
HELD = (AgentStarted, UsageRecorded)
# Put in the queue when the first waiting entry has waited ``linger``.
_FLUSH = object()


class AttemptStream:
    """Publishes one attempt's events in order, off the attempt's path."""

    def __init__(
        self,
        publisher: Callable[[], Publisher],
        buffer: int = BUFFER,
        linger: float = 0.0,
    ) -> None:
        self._publisher = publisher
        self._queue: asyncio.Queue[Event | object | None] = asyncio.Queue(maxsize=buffer)
        self._failure: BaseException | None = None
        self._closed = False
        self._abandoned = False
        self._linger = linger
        # Transcript entries waiting for company (and how many bytes they encode to),
        # and the timer that ends their wait.
        self._entries: list[TranscriptRecorded] = []
        self._entries_bytes = 0
        # The start and usage waiting with them (``HELD``), in the order emitted.
        self._held: list[AgentStarted | UsageRecorded] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flush_owed = False
        # What ``close`` publishes last, and its acknowledgement once stored.
        self._then: Event | None = None
        self._stored: PubAck | None = None
        self._sender = asyncio.create_task(self._send())

    async def emit(self, event: Event) -> None:
        """Queue ``event``; waits only when the buffer is full. Raises the failure of an
        earlier event that the attempt cannot go on without."""
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("the attempt's stream is closed")
        await self._queue.put(event)

    def abandon(self) -> None:
        """Stop at once, dropping what is still queued: for an attempt whose events the
        bus no longer takes (its credential refused). Each event's id is its step's, so
        a resumed attempt publishes them again, each stored once."""
        self._closed = self._abandoned = True
        self._stop_timer()
        self._sender.cancel()

    async def close(self, within: float | None = None, then: Event | None = None) -> PubAck | None:
        """Publish everything queued, then ``then`` (the attempt's result) last, and stop;
        returns ``then``'s acknowledgement. Raises a failure ``emit`` would have, or
        ``then``'s own; ``then`` is not published after a failure of an event the attempt
        cannot go on without.

        Should the caller be cancelled meanwhile, what was emitted is still sent. With
        ``within``, the caller waits at most that many seconds, and what is not stored by
        then is dropped (``abandon``): a service's stop is not held by an attempt whose
        events the bus does not take (its credential refused with no scheduler left to
        grant it, several seconds a request)."""
        if self._abandoned:
            return None
        if not self._closed:
            self._closed = True
            self._then = then
            if within is None:
                await self._queue.put(None)
            elif self._queue.full():
                self._drop(f"{self._queue.qsize()} queued")
                return None
            else:
                self._queue.put_nowait(None)
        # Waited on, not awaited: the caller's cancellation does not reach the sender.
        done, _ = await asyncio.wait({self._sender}, timeout=within)
        if not done:
            self._drop(f"not stored within {within:g} s")
            return None
        if self._failure is not None:
            raise self._failure
        return self._stored

    def _drop(self, why: str) -> None:
        log.warning("the attempt's last events were dropped at its stop", extra={"why": why})
        self.abandon()

    async def _send(self) -> None:
        closing = False
        while not closing:
            # Everything queued meanwhile goes out together, in order, with one wait for
            # the acknowledgements (an attempt emits in bursts: a model reply's usage,
            # progress and transcript entry), rather than a round trip each; transcript
            # entries wait for the ones after them (``_take``).
            queued = [await self._queue.get()]
            while not self._queue.empty():
                queued.append(self._queue.get_nowait())
            batch: list[Event] = []
            flush = False
            for item in queued:
                if item is None:
                    closing = flush = True
                    break
                if item is _FLUSH:
                    flush = True
                elif isinstance(item, TranscriptRecorded):
                    batch += self._take(item)
                elif isinstance(item, HELD) and self._linger > 0:
                    self._held.append(item)
                elif isinstance(item, Event):
                    # What was held was emitted before it, and goes out before it.
                    batch += self._released()
                    batch.append(item)
            if flush or self._flush_owed or self._linger <= 0:
                self._flush_owed = False
                self._stop_timer()
                if closing and self._held:
                    self._then = self._carrying(self._then)
                batch += self._released()
                batch += self._grouped()
            elif (self._entries or self._held) and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._linger, self._due)
            if closing and self._then is not None:
                await self._publish_then(batch, self._then)
            elif batch:
                await self._publish(batch)

    async def _publish_then(self, batch: list[Event], then: Event) -> None:
        """``batch``, then ``then`` last: together when all of ``batch`` is telemetry,
        after ``batch`` is stored otherwise; not at all after a failure that fails the
        attempt (``then``'s own failure fails it too)."""
        if any(type(event) not in TELEMETRY for event in batch):
            await self._publish(batch)
            batch = []
        if self._failure is not None:
            return
        # Its failure is the attempt's (``_lost``), raised by ``close``.
        self._stored = await self._publish([*batch, then])

    def _released(self) -> list[Event]:
        held, self._held = self._held, []
        return list(held)

    def _carrying(self, then: Event | None) -> Event | None:
        """``then`` carrying what is held, when it is the attempt's result (the stream is
        the attempt's: what it holds is of the same attempt)."""
        if not isinstance(then, AgentCompleted | AgentFailed):
            return then
        carried, self._held = self._held, []
        return msgspec.structs.replace(then, carried=[*then.carried, *carried])

    def _take(self, entry: TranscriptRecorded) -> list[Event]:
        """Hold ``entry`` with the others waiting; returns what is to go out now: the ones
        waiting, grouped, when one more would make their message too large."""
        out: list[Event] = []
        size = len(encode(entry)) + 1  # and the comma between it and the next
        if self._entries and (
            len(self._entries) >= ENTRIES_PER_MESSAGE
            or self._entries_bytes + size > BYTES_PER_MESSAGE
        ):
            out = self._grouped()
        self._entries.append(entry)
        self._entries_bytes += size
        return out

    def _grouped(self) -> list[Event]:
        """The waiting entries as what carries them: one alone as itself, more together."""
        entries, self._entries = self._entries, []
        self._entries_bytes = 0
        if len(entries) <= 1:
            return list(entries)
        first, last = entries[0], entries[-1]
        step = step_ids.transcript_entries(
            first.task_id, first.attempt, first.sequence, last.sequence
        )
        return [
            TranscriptEntries(
                event_id=step_event_id(first.mission_id, step),
                mission_id=first.mission_id,
                occurred_at=last.occurred_at,
                correlation_id=first.correlation_id,
                causation_id=first.causation_id,
                task_id=first.task_id,
                attempt=first.attempt,
                runner_id=last.runner_id,
                entries=entries,
            )
        ]

    def _due(self) -> None:
        self._timer = None
        self._flush_owed = True
        # Wakes the sender; with the queue full it is awake already and sees the flag.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_FLUSH)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _publish(self, batch: list[Event]) -> PubAck | None:
        """Publish ``batch`` in order; returns the acknowledgement of its last event (None
        when that one was not stored)."""
        last = batch[-1] if batch else None
        stored = None
        while batch:
            try:
                sending = await send_in_order(self._publisher(), batch)
            except Exception as unsent:  # no publisher to send with: each event is lost
                for event in batch:
                    self._lost(event, unsent)
                return None
            await ended(sending)
            for event, sent in zip(batch, sending, strict=False):
                error = None if sent.cancelled() else sent.exception()
                if error is not None:
                    self._lost(event, error)
                elif event is last and not sent.cancelled():
                    stored = sent.result()
            # Past one refused before it was sent, the rest go out on their own.
            batch = batch[len(sending) :]
        return stored

    def _lost(self, event: Event, error: BaseException) -> None:
        telemetry = TELEMETRY.get(type(event))
        if telemetry is not None:
            log.warning(telemetry, exc_info=error)
        elif self._failure is None:
            log.warning("attempt event not published", exc_info=error)
            self._failure = error
