"""Building the common metadata of an event caused by another one."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from aether_events.catalogue import Event
from aether_events.ids import step_event_id
from aether_events.step_ids import Step


class Meta(TypedDict):
    event_id: str
    mission_id: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None


def caused_by(cause: Event, now: datetime, step: Step) -> Meta:
    """Metadata for an event that ``cause`` led to.

    ``step`` names the logical step (``step_ids.task_ready(task_id, attempt)``); the event
    id is derived from it and the mission, so repeating the step repeats the id.
    """
    return Meta(
        event_id=step_event_id(cause.mission_id, step),
        mission_id=cause.mission_id,
        occurred_at=now,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
    )
