"""An attempt's transcript: every model turn, tool call, command and note of a task's
attempts, from the durable record the gateway keeps (``adapters.transcripts``).

Pages follow (attempt, sequence) order: ``next`` names where the following page starts,
and is absent once the last entry was returned. Entries arriving while the agent works
are sent live on the mission's event stream with ``?telemetry=1`` (type
``transcript_recorded``, no id); a client that reconnects asks this route for what it
missed after the last entry it holds.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from aether_events import is_valid_token
from aether_gateway.adapters.transcripts import (
    TranscriptEntry,
    dropped_entries,
    missing_before,
    transcript_page,
)
from aether_gateway.api.auth import READ
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import bad_request, error_responses
from aether_gateway.api.queries import _mission_or_wait

# The largest attempt and sequence the table's columns hold (PostgreSQL integer and
# bigint): a larger one is a 400 naming it, not an overflow inside the query.
_MAX_ATTEMPT = 2**31 - 1
_MAX_SEQUENCE = 2**63 - 1


class TranscriptCursor(msgspec.Struct, kw_only=True):
    """Where the next page starts: pass both as ``after_attempt`` and ``after``."""

    after_attempt: int
    after: int


class DroppedEntries(msgspec.Struct, kw_only=True):
    """Entries of an attempt the gateway did not keep: it had the most the gateway keeps
    of one attempt (``AETHER_TRANSCRIPT_MAX_ENTRIES``) already."""

    attempt: int
    entries: int


class Transcript(msgspec.Struct, kw_only=True):
    mission_id: str
    task_id: str
    entries: list[TranscriptEntry]
    next: TranscriptCursor | None = None
    # Attempts (of those asked for) with entries dropped by the gateway's cap.
    dropped: list[DroppedEntries] = msgspec.field(default_factory=list)


@get(
    "/missions/{mission_id:str}/tasks/{task_id:str}/transcript",
    summary="A task's transcript: its agents' turns, tool calls, commands and notes",
    guards=[READ],
    responses=error_responses(400, 401, 403, 404),
    tags=["tasks"],
)
async def task_transcript(
    ctx: NamedDependency[GatewayContext],
    mission_id: FromPath[str],
    task_id: FromPath[str],
    attempt: Annotated[
        int | None, QueryParameter(ge=0, le=_MAX_ATTEMPT, description="Only this attempt's entries")
    ] = None,
    after_attempt: Annotated[
        int | None,
        QueryParameter(
            ge=0, le=_MAX_ATTEMPT, description="With `after`: the attempt of the last entry held"
        ),
    ] = None,
    after: Annotated[
        int | None,
        QueryParameter(ge=0, le=_MAX_SEQUENCE, description="The sequence of the last entry held"),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Page size")] = 500,
) -> Transcript:
    """Oldest first, by attempt then sequence; each text is an excerpt (``truncated``
    says one was cut). ``missing_before``: how many entries of the entry's run are
    missing just before it (dropped by the telemetry stream before the gateway stored
    them), told for every runtime but the built-in loop, whose numbering has holes.
    ``dropped`` counts, by attempt, the entries not kept past the
    gateway's cap on one attempt's entries."""
    if not is_valid_token(task_id):
        raise bad_request("task_id is not a valid id")
    if after is not None and after_attempt is None and attempt is None:
        # Entries are ordered by attempt, then sequence: a sequence alone names no place
        # (every attempt's entries would be "after" it).
        raise bad_request(
            "after needs after_attempt (or attempt): the attempt of the last entry held"
        )
    await _mission_or_wait(ctx, mission_id)
    start_attempt = after_attempt if after_attempt is not None else (attempt or 0)
    entries = await transcript_page(
        ctx.read_model.db,
        mission_id,
        task_id,
        attempt=attempt,
        after_attempt=start_attempt,
        after=-1 if after is None else after,
        limit=limit,
    )
    # Where the numbering allows it, each entry says how many of its run are missing
    # before it (dropped by the telemetry stream before a gateway stored them).
    held = None if after is None else (start_attempt, after)
    counts = missing_before(entries, held)
    entries = [
        msgspec.structs.replace(entry, missing_before=count) if count else entry
        for entry, count in zip(entries, counts, strict=True)
    ]
    dropped = await dropped_entries(ctx.read_model.db, mission_id, task_id, attempt=attempt)
    following = None
    if len(entries) == limit:
        last = entries[-1]
        following = TranscriptCursor(after_attempt=last.attempt, after=last.sequence)
    return Transcript(
        mission_id=mission_id,
        task_id=task_id,
        entries=entries,
        next=following,
        dropped=[DroppedEntries(attempt=a, entries=n) for a, n in dropped.items()],
    )


TRANSCRIPT_ROUTES = [task_transcript]
