"""Load → decide → publish. Nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aether_events import Event, EventPublisher, tag_of
from aether_runtime import Delivery, Projection
from aether_scheduler.domain import Config, State, decide

log = logging.getLogger("aether.scheduler")


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], EventPublisher],
        config: Config,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self.config = config
        self._clock = clock

    async def handle(self, event: Event, delivery: Delivery) -> None:
        self.projection.apply(event)
        decided = decide(self.projection.state, event, self._clock(), self.config)
        for out in decided:
            await self._publisher().publish(out)
            # Apply at once: the next event must see this decision even before it comes
            # back through the consumer (it is then skipped as already applied).
            self.projection.apply(out)
            log.info("decided %s", tag_of(type(out)), extra={"decided_event_id": out.event_id})
