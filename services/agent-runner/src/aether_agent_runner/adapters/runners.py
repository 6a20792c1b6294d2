"""The registry of live runners as this runner reads it: which runtimes the others have
(``aether_runtime.runners``), for an attempt whose runtime this runner lacks
(``domain.routing``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext

from aether_agent_runner.domain.routing import Absences, Route, route
from aether_runtime.runners import read_runners

log = logging.getLogger("aether.agent-runner")

# How long one reading of the registry serves: every runner writes its entry every third
# of the entry age (10 s by default), and a delivery handed back comes again within
# ``HAND_BACK_MAX_SECONDS``.
CACHE_SECONDS = 1.0


class LiveRunners:
    """Reads the registry (at most every ``cache_seconds``) and routes attempts by it."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        me: str,
        patience: float,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._js = js
        self._me = me
        self._patience = patience
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._copy: tuple[float, dict[str, list[str]] | None] | None = None
        self._lock = asyncio.Lock()
        self._absences = Absences.empty()

    async def runtimes(self) -> dict[str, list[str]] | None:
        """Each live runner's runtimes by its id; None when the registry cannot be read."""
        async with self._lock:
            now = self._clock()
            if self._copy is not None and now - self._copy[0] < self._cache_seconds:
                return self._copy[1]
            read: dict[str, list[str]] | None
            try:
                entries = await read_runners(self._js())
                read = {entry.runner_id: list(entry.runtimes) for entry in entries}
            except Exception as error:
                log.warning(
                    "the registry of runners could not be read", extra={"error": repr(error)}
                )
                read = None
            self._copy = (self._clock(), read)
            return read

    async def route(self, runtime: str, deliveries: int) -> Route:
        """Where an attempt on ``runtime`` (which this runner lacks) goes, delivered
        ``deliveries`` times so far."""
        runners = await self.runtimes()
        return route(
            runtime, runners, self._me, self._absences, self._clock(), self._patience, deliveries
        )
