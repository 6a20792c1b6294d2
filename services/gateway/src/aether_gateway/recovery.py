"""Keeping the read model honest about how far it has folded.

The live consumer can fall behind without saying so: after a nats-server restart its
one message in flight may wait out the ack wait, a consumer that lost its state may think
it has delivered everything, and a stream that lost its last writes renumbers what comes
next. So, every few seconds and right after the connection to NATS comes back, the watch
compares the stored position with the stream and with the consumer's state, and repairs
from the stream what the consumer did not deliver:

- the stream's history differs from the one folded: the read model is rebuilt;
- the position jumped over sequences: those are checked, and missions with an event the
  read model lacks are refolded;
- the position is behind the stream and the consumer has nothing in flight, or the
  position did not move since the last look: the rest is folded straight from the
  stream (the consumer skips it afterwards: the position says it is folded).

What it finds is exported as ``aether_read_model_lag_events`` and in ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.js.errors import NotFoundError

from aether_events import MISSIONS_STREAM
from aether_gateway.handlers import Projector
from aether_gateway.metrics import READ_MODEL_LAG, READ_MODEL_REPAIRS
from aether_runtime import Service

log = logging.getLogger("aether.gateway.recovery")


@dataclass(frozen=True)
class ReadModelState:
    """What the last look found."""

    position: int
    stream_last_seq: int
    checked_at: float  # time.monotonic()

    @property
    def lag(self) -> int:
        return max(self.stream_last_seq - self.position, 0)

    @property
    def caught_up(self) -> bool:
        return self.lag == 0


class ReadModelWatch:
    """Checks the read model against the stream and repairs what the consumer missed."""

    def __init__(
        self, projector: Projector, service: Service, consumer: str, every: float = 2.0
    ) -> None:
        self.projector = projector
        self.service = service
        self.consumer = consumer
        self.every = every
        self.state: ReadModelState | None = None
        self._previous: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        READ_MODEL_LAG.set(0)

    async def start(self) -> None:
        if self.every <= 0 or self._task is not None:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="gateway-read-model-watch")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _reconnects(self) -> int:
        nc = self.service.nc
        return int(nc.stats.get("reconnects", 0)) if nc is not None else 0

    async def _run(self) -> None:
        gap_found = self.projector.read_model.gap_found
        reconnects = self._reconnects()
        due = 0.0
        failing = False
        while not self._stop.is_set():
            now = time.monotonic()
            seen = self._reconnects()
            nc = self.service.nc
            connected = nc is not None and nc.is_connected
            if connected and (now >= due or seen != reconnects or gap_found.is_set()):
                if seen != reconnects:
                    log.info("reconnected to NATS; checking the read model against the stream")
                reconnects = seen
                gap_found.clear()
                due = now + self.every
                try:
                    await self.check()
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    if not failing:
                        log.warning("could not check the read model", extra={"error": str(error)})
                    failing = True
            # Short ticks: a reconnect or a gap is noticed within a fraction of a second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gap_found.wait(), timeout=min(0.25, self.every))

    async def check(self) -> ReadModelState:
        """Look once, repair what needs it, and return what was found."""
        js = self.service.js
        read_model = self.projector.read_model
        last = (await js.stream_info(MISSIONS_STREAM)).state.last_seq
        position = await read_model.position()
        reason = await self.projector.diverged(js, position, last)
        if reason is not None:
            log.warning(
                "the stream's history is not the read model's; rebuilding the read model",
                extra={"reason": reason, "position": position, "stream_last_seq": last},
            )
            READ_MODEL_REPAIRS.labels("diverged").inc()
            await self.projector.rebuild_all(js)
            position = await read_model.position()
        if await read_model.gaps() and await self.projector.fill_gaps(js):
            READ_MODEL_REPAIRS.labels("gap").inc()
        if position < last and (position == self._previous or await self._consumer_idle()):
            folded = await self.projector.catch_up(js)
            # Nothing folded: a rebuild (a refold) held the folds back and folded it all.
            if folded:
                READ_MODEL_REPAIRS.labels("stalled").inc()
                log.warning(
                    "the read model was behind with its consumer stalled; folded from the stream",
                    extra={"position": position, "stream_last_seq": last, "folded": folded},
                )
            position = await read_model.position()
        self._previous = position
        self.state = ReadModelState(position, max(last, position), time.monotonic())
        READ_MODEL_LAG.set(self.state.lag)
        return self.state

    async def _consumer_idle(self) -> bool:
        """Whether the consumer has nothing left to deliver and nothing in flight."""
        try:
            info = await self.service.js.consumer_info(MISSIONS_STREAM, self.consumer)
        except NotFoundError:
            return True
        return not info.num_pending and not info.num_ack_pending
