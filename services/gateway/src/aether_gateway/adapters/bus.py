"""NATS JetStream: publishing the gateway's commands and following a mission's events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from aether_events import MISSIONS_STREAM, Event, mission_subject
from aether_runtime import Service

log = logging.getLogger("aether.gateway.bus")


@dataclass(frozen=True)
class StreamedEvent:
    """One stored event as it travels to a client: its stream sequence, tag and JSON."""

    sequence: int
    type: str
    data: bytes


class MissionFeed:
    """One client's feed of a mission: the stored events after a sequence, then live ones.

    Backed by an ordered push consumer (ephemeral, in memory, no acks), which the server
    forgets soon after the client goes away. Iterating yields ``None`` whenever nothing
    arrived for ``idle_seconds`` (the caller's cue for a keep-alive) and stops when
    ``closing`` is set.
    """

    def __init__(
        self,
        subscription: JetStreamContext.PushSubscription,
        *,
        idle_seconds: float,
        closing: asyncio.Event,
    ) -> None:
        self._sub = subscription
        self._idle_seconds = idle_seconds
        self._closing = closing
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[StreamedEvent | None]:
        tick = min(1.0, self._idle_seconds)
        idle = 0.0
        while not self._closing.is_set() and not self._closed:
            try:
                msg = await self._sub.next_msg(timeout=tick)
            except nats.errors.TimeoutError:
                idle += tick
                if idle >= self._idle_seconds:
                    idle = 0.0
                    yield None
                continue
            except nats.errors.ConnectionClosedError:
                return
            idle = 0.0
            yield StreamedEvent(
                sequence=msg.metadata.sequence.stream,
                type=msg.subject.rsplit(".", 1)[-1],
                data=msg.data,
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._sub.unsubscribe()
        except Exception:  # the connection may be gone already; the server forgets us anyway
            log.debug("unsubscribing a mission feed failed", exc_info=True)


class Bus:
    """The gateway's side of the bus, over the runtime service's connection."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def publish(self, event: Event) -> int:
        """Publish ``event`` and return its stream sequence once stored."""
        ack = await self._service.publisher.publish(event)
        return ack.seq

    async def last_sequence(self) -> int:
        """The sequence of the newest event on the mission stream."""
        info = await self._service.js.stream_info(MISSIONS_STREAM)
        return info.state.last_seq

    async def has_history(self, mission_id: str) -> bool:
        """Whether the stream holds any event of the mission."""
        info = await self._service.js.stream_info(
            MISSIONS_STREAM, subjects_filter=mission_subject(mission_id)
        )
        return bool(info.state.subjects)

    async def follow(
        self, mission_id: str, *, after: int, idle_seconds: float, closing: asyncio.Event
    ) -> MissionFeed:
        """A feed of the mission's events stored after sequence ``after``, then live ones."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after else None,
        )
        sub = await self._service.js.subscribe(
            mission_subject(mission_id),
            stream=MISSIONS_STREAM,
            ordered_consumer=True,
            config=config,
        )
        return MissionFeed(sub, idle_seconds=idle_seconds, closing=closing)
