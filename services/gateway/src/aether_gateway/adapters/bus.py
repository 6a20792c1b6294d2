"""NATS JetStream: publishing the gateway's commands and reading the stream's state."""

from __future__ import annotations

import msgspec

from aether_events import (
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    AgentProgress,
    Event,
    UnknownEventType,
    decode,
    mission_subject,
    type_subjects,
)
from aether_gateway.adapters.stream import read_stored
from aether_runtime import Service


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

    async def progress_reports(self, mission_id: str) -> list[AgentProgress]:
        """The mission's agent progress reports still kept by the telemetry stream (it
        keeps them for a limited time), oldest first; what does not decode is skipped."""
        subject = type_subjects(AgentProgress, mission_id)
        reports: list[AgentProgress] = []
        for stored in await read_stored(self._service.js, TELEMETRY_STREAM, subject):
            try:
                event = decode(stored.data)
            except (UnknownEventType, msgspec.MsgspecError):
                continue
            if isinstance(event, AgentProgress) and event.mission_id == mission_id:
                reports.append(event)
        return reports
