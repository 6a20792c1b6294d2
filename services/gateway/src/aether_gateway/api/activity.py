"""What the agents did on a mission's tasks: each attempt's start, every progress report
(one per tool call: the tool and the file or command it worked on), its end, and the git
broker's refusal to merge it (a completed attempt then did not count: why is there).

Starts and ends are mission events, read from the read model; progress reports are
telemetry, which the read model folds into each attempt's latest state only, so they are
read from the telemetry stream, which keeps them for a week by default. ``position`` is how far the
mission events go: an event stream opened with ``?after=position&telemetry=1`` continues
from there (a progress report listed may come again on it; its ``event_id`` says so).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    Event,
    MergeConflicted,
    MergeWithheld,
    decode,
    tag_of,
)
from aether_gateway.api.auth import READ
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import error_responses
from aether_gateway.api.queries import _mission_or_wait

_LIFECYCLE = [
    tag_of(cls)
    for cls in (AgentStarted, AgentCompleted, AgentFailed, MergeConflicted, MergeWithheld)
]
_PAGE = 1000


class ActivityEntry(msgspec.Struct, kw_only=True):
    """One agent event: ``type`` is its tag, ``data`` the whole event as JSON."""

    type: str
    task_id: str
    attempt: int
    event_id: str
    occurred_at: datetime
    data: dict[str, Any]


class Activity(msgspec.Struct, kw_only=True):
    mission_id: str
    entries: list[ActivityEntry]
    # The last mission-stream sequence the entries include.
    position: int


def _entry(event: Event) -> ActivityEntry | None:
    task_id = getattr(event, "task_id", None)
    attempt = getattr(event, "attempt", None)
    if not isinstance(task_id, str) or not isinstance(attempt, int):
        return None
    return ActivityEntry(
        type=tag_of(type(event)),
        task_id=task_id,
        attempt=attempt,
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        data=msgspec.to_builtins(event),
    )


@get(
    "/missions/{mission_id:str}/activity",
    summary="The agents' activity on a mission's tasks: starts, progress reports, ends, "
    "merges refused",
    guards=[READ],
    responses=error_responses(400, 401, 403, 404),
    tags=["tasks"],
)
async def mission_activity(
    ctx: NamedDependency[GatewayContext],
    mission_id: FromPath[str],
    task_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    attempt: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> Activity:
    """Oldest first; only ``task_id`` (and ``attempt``) when given."""
    await _mission_or_wait(ctx, mission_id)
    position = await ctx.read_model.position()
    events: list[Event] = []
    after = 0
    while True:
        page = await ctx.queries.events(
            mission_id=mission_id,
            types=_LIFECYCLE,
            task_id=task_id,
            after=after,
            upto=position,
            limit=_PAGE,
        )
        events += [decode(msgspec.json.encode(stored.data)) for stored in page]
        if len(page) < _PAGE:
            break
        after = page[-1].seq
    events += await ctx.bus.progress_reports(mission_id)
    entries = [
        entry
        for entry in map(_entry, events)
        if entry is not None
        and (task_id is None or entry.task_id == task_id)
        and (attempt is None or entry.attempt == attempt)
    ]
    # Stable: a start and its first report stamped alike keep the stream's order.
    entries.sort(key=lambda e: e.occurred_at)
    return Activity(mission_id=mission_id, entries=entries, position=position)


ACTIVITY_ROUTES = [mission_activity]
