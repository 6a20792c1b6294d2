"""The projection's entry points: fold each delivered event, catch up on start, and
rebuild from scratch on an administrator's request."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    Event,
    replay,
)
from aether_gateway.adapters.read_model import ReadModel
from aether_runtime import ConsumerSpec, Delivery

log = logging.getLogger("aether.gateway.projection")

Folded = list[tuple[Event, int]]


def _collect(pending: Folded, event: Event, sequence: int) -> Folded:
    pending.append((event, sequence))
    return pending


async def _read(js: JetStreamContext, stream: str, subject: str, after: int) -> tuple[Folded, int]:
    """The decodable events stored after ``after``, and the last sequence read."""
    # replay() folds synchronously, so the events are gathered here and written after.
    empty: Folded = []
    pending, result = await replay(js, stream, subject, empty, _collect, after_sequence=after)
    return pending, result.last_sequence


class Projector:
    """Keeps the PostgreSQL read model in step with the mission and telemetry streams."""

    def __init__(self, read_model: ReadModel, telemetry: ConsumerSpec | None = None) -> None:
        self.read_model = read_model
        self.telemetry = telemetry

    async def on_event(self, event: Event, delivery: Delivery) -> None:
        """The mission consumer's handler: fold the event (a second delivery is a no-op)."""
        await self.read_model.apply(event, delivery.sequence)

    async def on_telemetry(self, event: Event, delivery: Delivery) -> None:
        """The telemetry consumer's handler: fold a heartbeat or a progress report."""
        await self.read_model.apply_telemetry(event, delivery.sequence)

    async def rebuild(self, js: JetStreamContext) -> int:
        """Fold what was stored since the read model's positions; return the mission
        stream's last sequence (where the runtime starts the mission consumer).

        The read model persists its positions, so a restart resumes where it stopped
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
        pending, last = await _read(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, position)
        for event, sequence in pending:
            await self.read_model.apply(event, sequence)
        log.info(
            "read model caught up",
            extra={"from": position, "to": last, "folded": len(pending)},
        )
        await self._catch_up_telemetry(js)
        return last

    async def _catch_up_telemetry(self, js: JetStreamContext) -> None:
        position = await self.read_model.telemetry_position()
        info = await js.stream_info(TELEMETRY_STREAM)
        if position > info.state.last_seq:
            await self.read_model.reset_telemetry_position()
            position = 0
        pending, last = await _read(js, TELEMETRY_STREAM, ALL_TELEMETRY, position)
        for event, sequence in pending:
            await self.read_model.apply_telemetry(event, sequence)
        if self.telemetry is not None:
            # The runtime starts every consumer after the *mission* stream's position;
            # the telemetry consumer counts another stream, so it is created here first.
            await _ensure_durable(js, self.telemetry, last)

    async def rebuild_all(self, js: JetStreamContext) -> tuple[int, int, int]:
        """Replace the whole read model by folding both streams from their start.

        Returns the mission and telemetry sequences folded up to, and the event count.
        """
        async with self.read_model.rebuilding() as rebuild:
            missions, missions_last = await _read(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, 0)
            for event, sequence in missions:
                await rebuild.fold(event, sequence)
            telemetry, telemetry_last = await _read(js, TELEMETRY_STREAM, ALL_TELEMETRY, 0)
            for event, sequence in telemetry:
                await rebuild.fold_telemetry(event, sequence)
            # Undecodable events at the end still count as read.
            rebuild.missions_last = max(rebuild.missions_last, missions_last)
            rebuild.telemetry_last = max(rebuild.telemetry_last, telemetry_last)
        log.info(
            "read model rebuilt",
            extra={
                "missions_to": rebuild.missions_last,
                "telemetry_to": rebuild.telemetry_last,
                "folded": rebuild.folded,
            },
        )
        return rebuild.missions_last, rebuild.telemetry_last, rebuild.folded


async def _ensure_durable(js: JetStreamContext, spec: ConsumerSpec, last_seq: int) -> None:
    try:
        await js.consumer_info(spec.stream, spec.durable)
        return
    except NotFoundError:
        pass
    await js.add_consumer(
        spec.stream,
        config=ConsumerConfig(
            durable_name=spec.durable,
            name=spec.durable,
            filter_subject=spec.subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait_seconds,
            max_deliver=spec.max_deliver,
            max_ack_pending=max(spec.max_workers, 1),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if last_seq else DeliverPolicy.ALL,
            opt_start_seq=last_seq + 1 if last_seq else None,
        ),
    )
