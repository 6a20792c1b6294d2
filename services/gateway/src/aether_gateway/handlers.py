"""The projection's entry points: fold each delivered event, and catch up on start."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS, MISSIONS_STREAM, Event, replay
from aether_gateway.adapters.read_model import ReadModel
from aether_runtime import Delivery

log = logging.getLogger("aether.gateway.projection")


class Projector:
    """Keeps the PostgreSQL read model in step with the mission stream."""

    def __init__(self, read_model: ReadModel) -> None:
        self.read_model = read_model

    async def on_event(self, event: Event, delivery: Delivery) -> None:
        """The durable consumer's handler: fold the event (a second delivery is a no-op)."""
        await self.read_model.apply(event, delivery.sequence)

    async def rebuild(self, js: JetStreamContext) -> int:
        """Fold the events stored after the read model's position; return the last sequence.

        The read model persists its position, so a restart resumes where it stopped
        instead of replaying the whole stream. A position beyond the stream's end means
        the stream was recreated (its sequences started again): the read model is then
        derived from a history that no longer exists, so it is dropped and rebuilt.
        """
        position = await self.read_model.position()
        info = await js.stream_info(MISSIONS_STREAM)
        if position > info.state.last_seq:
            log.warning(
                "stored position is past the stream's end; rebuilding the read model",
                extra={"position": position, "stream_last_seq": info.state.last_seq},
            )
            await self.read_model.reset()
            position = 0

        def collect(
            pending: list[tuple[Event, int]], event: Event, sequence: int
        ) -> list[tuple[Event, int]]:
            pending.append((event, sequence))
            return pending

        # replay() folds synchronously, so the events are gathered first and written
        # after: those since the last run (the whole history for an empty database).
        pending: list[tuple[Event, int]] = []
        _, result = await replay(
            js, MISSIONS_STREAM, ALL_MISSION_EVENTS, pending, collect, after_sequence=position
        )
        for event, sequence in pending:
            await self.read_model.apply(event, sequence)
        log.info(
            "read model caught up",
            extra={"from": position, "to": result.last_sequence, "folded": len(pending)},
        )
        return result.last_sequence
