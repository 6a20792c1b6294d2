"""The one way an attempt's events reach the stream while it works.

The handler opens an ``AttemptStream`` per attempt and hands its ``emit`` to the attempt:
AgentStarted, UsageRecorded, AgentProgress and TranscriptRecorded are queued there and
published in the background, in the order emitted (what is queued together goes out
together, with one wait for its acknowledgements), so the agent never waits on a publish
acknowledgement. The queue is bounded: an attempt that emits faster than the bus takes
waits for room rather than holding an unbounded backlog. The handler closes the stream
before it publishes the attempt's result, so every entry of an attempt is stored before
its completion. Each event's id is derived from its step, so an entry published again
(a retried publish, a resumed attempt) is stored once.

Progress and transcript entries are telemetry: one that cannot be published is logged
and skipped. Any other event (AgentStarted, UsageRecorded: the cost of a model call) that
cannot be published fails the attempt: the next ``emit`` raises it, and so does
``close``, so the delivery is handed back as it was when the attempt published it itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aether_events import AgentProgress, Event, Publisher, TranscriptRecorded
from aether_events.publisher import ended, send_in_order

log = logging.getLogger("aether.agent-runner.stream")

# What an attempt is given to send its events with.
Emit = Callable[[Event], Awaitable[object]]

BUFFER = 256
# Lost without failing the attempt (a resumed attempt publishes its transcript again).
TELEMETRY: dict[type[Event], str] = {
    AgentProgress: "progress not published",
    TranscriptRecorded: "transcript entry not published",
}


class AttemptStream:
    """Publishes one attempt's events in order, off the attempt's path."""

    def __init__(self, publisher: Callable[[], Publisher], buffer: int = BUFFER) -> None:
        self._publisher = publisher
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=buffer)
        self._failure: BaseException | None = None
        self._closed = False
        self._abandoned = False
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
        self._sender.cancel()

    async def close(self, within: float | None = None) -> None:
        """Publish everything queued, then stop; raises a failure ``emit`` would have.

        Should the caller be cancelled meanwhile, what was emitted is still sent. With
        ``within``, the caller waits at most that many seconds, and what is not stored by
        then is dropped (``abandon``): a service's stop is not held by an attempt whose
        events the bus does not take (its credential refused with no scheduler left to
        grant it, several seconds a request)."""
        if self._abandoned:
            return
        if not self._closed:
            self._closed = True
            if within is None:
                await self._queue.put(None)
            elif self._queue.full():
                self._drop(f"{self._queue.qsize()} queued")
                return
            else:
                self._queue.put_nowait(None)
        # Waited on, not awaited: the caller's cancellation does not reach the sender.
        done, _ = await asyncio.wait({self._sender}, timeout=within)
        if not done:
            self._drop(f"not stored within {within:g} s")
            return
        if self._failure is not None:
            raise self._failure

    def _drop(self, why: str) -> None:
        log.warning("the attempt's last events were dropped at its stop", extra={"why": why})
        self.abandon()

    async def _send(self) -> None:
        closing = False
        while not closing:
            event = await self._queue.get()
            if event is None:
                break
            # Everything queued meanwhile goes out together, in order, with one wait for
            # the acknowledgements (an attempt emits in bursts: a model reply's usage,
            # progress and transcript entry), rather than a round trip each.
            batch = [event]
            while not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is None:
                    closing = True
                    break
                batch.append(queued)
            await self._publish(batch)

    async def _publish(self, batch: list[Event]) -> None:
        while batch:
            try:
                sending = await send_in_order(self._publisher(), batch)
            except Exception as unsent:  # no publisher to send with: each event is lost
                for event in batch:
                    self._lost(event, unsent)
                return
            await ended(sending)
            for event, sent in zip(batch, sending, strict=False):
                error = None if sent.cancelled() else sent.exception()
                if error is not None:
                    self._lost(event, error)
            # Past one refused before it was sent, the rest go out on their own.
            batch = batch[len(sending) :]

    def _lost(self, event: Event, error: BaseException) -> None:
        telemetry = TELEMETRY.get(type(event))
        if telemetry is not None:
            log.warning(telemetry, exc_info=error)
        elif self._failure is None:
            log.warning("attempt event not published", exc_info=error)
            self._failure = error
