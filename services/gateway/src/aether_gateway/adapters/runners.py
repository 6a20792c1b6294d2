"""The registry of live agent runners, as the gateway reads it: briefly cached.

Every runner keeps an entry in the bus's ``AETHER_RUNNERS`` bucket while it lives
(``aether_runtime.runners``); a mission request names runtimes, and reading the bucket
on each would be a stream-info request and a get per runner. A copy is kept for
``cache_seconds``; a runner that started within that time may be missed, and one that
died is still listed until its entry expires on the bus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.js import JetStreamContext

from aether_runtime.runners import RunnerEntry, read_runners

CACHE_SECONDS = 2.0


class Runners:
    """The live runners' entries, read again once the copy is ``cache_seconds`` old."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._js = js
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._copy: tuple[float, list[RunnerEntry]] | None = None
        self._lock = asyncio.Lock()

    async def live(self) -> list[RunnerEntry]:
        """The entries of the runners alive now (raises what the bus says)."""
        async with self._lock:
            if self._copy is not None and self._clock() - self._copy[0] < self._cache_seconds:
                return self._copy[1]
            entries = await read_runners(self._js())
            self._copy = (self._clock(), entries)
            return entries
