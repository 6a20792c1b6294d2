"""Folding live deliveries in runs: what waits while one transaction is in flight goes
into the next one together (a group commit).

The consumers hand each delivered event here and release their message, so the consumer
delivers the next one while this one is folded (``ConsumerSpec.hand_offs``); each
handler then waits for its own event to be committed before its message is settled.
An idle batcher told to linger waits that long for company before it folds what it was
handed (the gateway's: a few milliseconds, as events come in bursts); one given a spacing
also starts a run no sooner than that after the one before began, so a busy stream is
folded in a few large runs instead of one small transaction per burst (the gateway's:
``LIVE_SPACING``); else it folds at once. Told to ``hurry`` (someone waits for the read
model to reach an event), it folds what waits without waiting further. The events
delivered while a fold is in flight, or while the run waits, are folded together next,
in the order they were handed over.

Order is what keeps the read model exact: an event above the position folded before one
below it would leave the earlier one behind the position (a gap the watch must repair by
refolding the mission). So one run is in flight at a time, runs are taken in the order
the events were handed over, and a run that fails for a reason about the database is
retried here, in place and in order, rather than handed back to its handlers to retry
each on its own clock. A run that fails for another reason is folded again one event at
a time, so the error reaches only its own event's handler (the runtime then retries or
records that step, as for a consumer without runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from aether_gateway.adapters.faults import DATABASE_ERRORS
from aether_runtime.failures import transient

log = logging.getLogger("aether.gateway.batches")

T = TypeVar("T")

# Events folded per transaction at most (the consumers let this many be in flight): a
# spacing's worth of a busy stack's events (four agents at once store about fifty a
# tenth of a second) in one run.
LIVE_RUN = 256
# How long a live run waits for company. A chained task's events come in bursts (the
# merge, the scheduler's wave and readiness events a millisecond or two after it; the
# agent's usage and its result together): one transaction for a burst rather than one
# per event, for the read model a few milliseconds later (nothing on a mission's path
# waits for it; a query after an event seen live does, see ``GatewayContext.settled``).
LIVE_LINGER = 0.005
# The least time from the start of one live run to the start of the next. A run's
# transactions cost the gateway and PostgreSQL about 4 ms of CPU however few events they
# hold, and on a small machine that CPU is taken from the services on the missions' path:
# with runs spaced so, a busy stack's events are folded in five transactions a second at
# most, each holding what came meanwhile (at 50 ms, twenty, the read model's CPU a
# chained task a third higher). The read model is then up to this much later than it
# would be, unless someone waits for it: a query behind it hurries the runs
# (``GatewayContext.settled``), an event after a quiet spell is folded at once, and the
# live streams never wait for it (they follow the bus).
LIVE_SPACING = 0.2
# How long a run failing on the database is retried in place before its handlers get
# the error (the runtime then retries each, or hands its message back).
PATIENCE_SECONDS = 120.0
_FIRST_PAUSE = 0.25
_LONGEST_PAUSE = 5.0


class Batcher(Generic[T]):
    """Hands ``fold`` the items given to ``submit`` in runs, in order, one run at a
    time; ``fold`` takes a run (one item or more) and folds it in one transaction."""

    def __init__(
        self,
        fold: Callable[[list[T]], Awaitable[object]],
        *,
        name: str,
        stopping: Callable[[], bool] = lambda: False,
        limit: int = LIVE_RUN,
        patience_seconds: float = PATIENCE_SECONDS,
        linger: float = 0.0,
        spacing: float = 0.0,
    ) -> None:
        self._fold = fold
        self._name = name
        self._stopping = stopping
        self._limit = max(limit, 1)
        self._patience = patience_seconds
        # How long a run waits for company before it is folded (0: not at all; see
        # ``LIVE_LINGER``), and the least time between the starts of two runs (see
        # ``LIVE_SPACING``).
        self._linger = max(linger, 0.0)
        self._spacing = max(spacing, 0.0)
        self._last_start = -self._spacing
        self._hurried = asyncio.Event()  # set by ``hurry``: fold what waits now
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None
        # How many runs were folded, and how many items they held (for tests and logs).
        self.runs = 0
        self.items = 0

    def submit(self, item: T) -> asyncio.Future[None]:
        """Queue ``item`` now (behind every item queued before it); the future is done
        once it is folded, or holds what kept it from being folded."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=f"gateway-{self._name}-runs")
        return done

    def hurry(self) -> None:
        """Someone waits for what is queued: fold it now, without waiting out the linger
        or the spacing (a run in flight is not cut short)."""
        if self._queue:
            self._hurried.set()

    async def close(self) -> None:
        """Stop folding; whoever still waits gets ``CancelledError``."""
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer
        queued, self._queue = self._queue, []
        for _, done in queued:
            done.cancel()

    async def _drain(self) -> None:
        try:
            while self._queue:
                if len(self._queue) < self._limit:
                    since = time.monotonic() - self._last_start
                    due = time.monotonic() + max(self._linger, self._spacing - since)
                    # Until the clock says so: a loop's timer may fire a little early
                    # (uvloop's count in whole milliseconds).
                    while not self._hurried.is_set() and (left := due - time.monotonic()) > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(left):
                                await self._hurried.wait()
                self._hurried.clear()
                self._last_start = time.monotonic()
                run = self._queue[: self._limit]
                del self._queue[: self._limit]
                await self._settle(run)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # never left unanswered: each waiter gets it
            for _, done in self._queue:
                _answer(done, error)
            self._queue = []
            raise

    async def _settle(self, run: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._patiently([item for item, _ in run])
        except asyncio.CancelledError:
            for _, done in run:
                done.cancel()
            raise
        except Exception as error:
            if len(run) == 1:
                _answer(run[0][1], error)
                return
            # Only the event at fault should see the error: each alone, in order.
            for n, entry in enumerate(run):
                try:
                    await self._settle([entry])
                except asyncio.CancelledError:
                    for _, done in run[n + 1 :]:
                        done.cancel()
                    raise
            return
        self.runs += 1
        self.items += len(run)
        for _, done in run:
            _answer(done, None)

    async def _patiently(self, items: list[T]) -> None:
        """``fold`` the run, retried in place while the database is away."""
        give_up_at = time.monotonic() + self._patience
        pause = _FIRST_PAUSE
        while True:
            try:
                await self._fold(items)
                return
            except Exception as error:
                if (
                    self._stopping()
                    or not transient(error, DATABASE_ERRORS)
                    or time.monotonic() + pause > give_up_at
                ):
                    raise
                log.warning(
                    "folding a run failed on the database; retrying in place",
                    extra={"run": self._name, "events": len(items), "retry_in": pause},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)


def _answer(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return  # its handler is gone (cancelled at a stop)
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


S = TypeVar("S", bound=Sequenced)

# How long a run whose first sequence is not the next one waits for the position to
# reach it (another replica folding the events between) before it is folded anyway.
GAP_GRACE_SECONDS = 0.5


class InOrder(Generic[S]):
    """A batcher's fold that keeps stream order across replicas sharing the consumer.

    With several messages in flight, the server hands them to whichever replica asks:
    one may hold sequence 10 while another folds 11, which would move the position past
    10 (a gap, repaired by refolding the mission; for telemetry, a lost entry). So a run
    is folded in stretches of consecutive sequences, and a stretch that does not follow
    the last one this process folded first waits, briefly, for the position to reach
    the sequence before it. One replica alone never waits but where the stream holds
    something it was not given (an unknown type, a payload the runtime refused), and
    then for ``grace`` at most; the position then jumps as before (a gap for the watch).
    """

    def __init__(
        self,
        fold: Callable[[list[S]], Awaitable[object]],
        position: Callable[[], Awaitable[int]],
        *,
        grace: float = GAP_GRACE_SECONDS,
    ) -> None:
        self._fold = fold
        self._position = position
        self._grace = grace
        self._last: int | None = None
        self.waits = 0  # stretches that looked at the position first (for tests)

    async def __call__(self, items: list[S]) -> None:
        start = 0
        while start < len(items):
            end = start + 1
            while end < len(items) and items[end].seq == items[end - 1].seq + 1:
                end += 1
            stretch = items[start:end]
            if self._last is None or stretch[0].seq != self._last + 1:
                await self._reached(stretch[0].seq - 1)
            await self._fold(stretch)
            self._last = stretch[-1].seq
            start = end

    async def _reached(self, target: int) -> None:
        self.waits += 1
        give_up_at = time.monotonic() + self._grace
        pause = 0.005
        while await self._position() < target and time.monotonic() < give_up_at:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
