"""Attempts' transcripts in PostgreSQL: each ``TranscriptRecorded`` stored once (the
first copy of an entry wins: a resumed attempt publishes its entries again), at most
``cap`` of them an attempt (the rest counted as dropped, in ``transcript_counts``), a
message's entries by one statement, and read back in order, a page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any, LiteralString

import msgspec
from psycopg.rows import dict_row

from aether_events import TRANSCRIPT_RUN_STRIDE, TranscriptRecorded, Usage
from aether_gateway.adapters.db import Database


class TranscriptEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stored entry (see ``TranscriptRecorded`` for what each field holds)."""

    attempt: int
    sequence: int
    kind: str
    runtime: str
    runner_id: str
    text: str
    tool: str
    arguments: str
    result: str
    is_error: bool
    exit_code: int | None
    status: str
    stop_reason: str | None
    usage: Usage | None
    truncated: bool
    event_id: str
    occurred_at: datetime
    # Entries of this one's run missing just before it (``missing_before``).
    missing_before: int = 0


# A message's entries go as one JSON array of objects (encoded by msgspec) rather than a
# statement an entry, or one parameter a column adapted by psycopg on its own: a
# transcript entry is most of the telemetry the gateway folds, and an attempt's
# credential may put thousands in one message. A column an object leaves out is NULL.
# The function (migration 0015) stores each entry unless its attempt already has ``cap``
# entries, and counts it as dropped then (once: an entry counted or stored before is
# not); it answers how many it counted as dropped now. An attempt past its cap thus
# costs the gateway a statement a message, not one an entry.
STORE_ENTRIES: LiteralString = "SELECT store_transcript_entries(%s::jsonb, %s) AS dropped"

# What the gateway keeps of one attempt's entries by default: a little above the
# runner's own cap (AETHER_AGENT_TRANSCRIPT_MAX_ENTRIES, 20,000), which the gateway does
# not trust.
DEFAULT_MAX_ENTRIES = 25_000

_DROPPED = """
SELECT attempt, dropped FROM transcript_counts
 WHERE mission_id = %(mission_id)s AND task_id = %(task_id)s AND dropped > 0
   AND (%(attempt)s::integer IS NULL OR attempt = %(attempt)s::integer)
 ORDER BY attempt
"""

_PAGE = """
SELECT attempt, sequence, kind, runtime, runner_id, text, tool, arguments, result, is_error,
       exit_code, status, stop_reason, usage, truncated, event_id, occurred_at
  FROM transcript_entries
 WHERE mission_id = %(mission_id)s AND task_id = %(task_id)s
   AND (%(attempt)s::integer IS NULL OR attempt = %(attempt)s::integer)
   AND (attempt, sequence) > (%(after_attempt)s::integer, %(after)s::bigint)
 ORDER BY attempt, sequence
 LIMIT %(limit)s
"""


def _clean(text: str) -> str:
    # PostgreSQL text holds no NUL character; whatever a model wrote must still be stored.
    return text.replace("\x00", "\ufffd")


def storing(
    entries: list[TranscriptRecorded], cap: int = DEFAULT_MAX_ENTRIES
) -> tuple[LiteralString, tuple[str, int]]:
    """The statement that stores ``entries`` (in their order) under their attempts'
    ``cap``, and its parameters; its one row's ``dropped`` is how many entries the cap
    dropped (and counted) now."""
    return STORE_ENTRIES, (msgspec.json.encode([_row(entry) for entry in entries]).decode(), cap)


def _row(event: TranscriptRecorded) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mission_id": event.mission_id,
        "task_id": event.task_id,
        "attempt": event.attempt,
        "sequence": event.sequence,
        "event_id": event.event_id,
        "runner_id": _clean(event.runner_id),
        "runtime": _clean(event.runtime),
        "kind": event.kind,
        "text": _clean(event.text),
        "tool": _clean(event.tool),
        "arguments": _clean(event.arguments),
        "result": _clean(event.result),
        "is_error": event.is_error,
        "status": _clean(event.status),
        "truncated": event.truncated,
        "occurred_at": event.occurred_at,
    }
    if event.exit_code is not None:
        entry["exit_code"] = event.exit_code
    if event.stop_reason is not None:
        entry["stop_reason"] = _clean(event.stop_reason)
    if event.usage is not None:
        entry["usage"] = event.usage
    return entry


async def transcript_page(
    db: Database,
    mission_id: str,
    task_id: str,
    *,
    attempt: int | None = None,
    after_attempt: int = 0,
    after: int = -1,
    limit: int = 500,
) -> list[TranscriptEntry]:
    """The entries after ``(after_attempt, after)`` in (attempt, sequence) order."""
    params: dict[str, Any] = {
        "mission_id": mission_id,
        "task_id": task_id,
        "attempt": attempt,
        "after_attempt": after_attempt,
        "after": after,
        "limit": limit,
    }
    async with db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_PAGE, params)
        rows = await cur.fetchall()
    return [msgspec.convert(row, TranscriptEntry) for row in rows]


# The runtimes whose entries of one run are numbered without a hole (every one but the
# built-in loop, whose numbers are its journal's records, some of which show nothing; an
# entry from a runner before runtimes were named says none).
_UNNUMBERED = frozenset({"", "builtin"})


def missing_before(entries: list[TranscriptEntry], held: tuple[int, int] | None) -> list[int]:
    """For each of ``entries`` (in attempt and sequence order, following the entry
    ``held``, an (attempt, sequence), if any), how many entries of its run are missing
    just before it: stored nowhere, the telemetry stream having dropped them before a
    gateway read them. Told only where the numbering is without holes (not the built-in
    loop's); entries missing at a run's end cannot be told."""
    counts: list[int] = []
    previous = held
    for entry in entries:
        run_start = entry.sequence - entry.sequence % TRANSCRIPT_RUN_STRIDE
        if entry.runtime in _UNNUMBERED:
            counts.append(0)
        elif previous is not None and previous[0] == entry.attempt and previous[1] >= run_start:
            counts.append(max(entry.sequence - previous[1] - 1, 0))
        else:
            counts.append(entry.sequence - run_start)
        previous = (entry.attempt, entry.sequence)
    return counts


async def dropped_entries(
    db: Database, mission_id: str, task_id: str, *, attempt: int | None = None
) -> dict[int, int]:
    """How many entries the gateway's cap dropped, by attempt (attempts with none left
    out)."""
    params = {"mission_id": mission_id, "task_id": task_id, "attempt": attempt}
    async with db.pool.connection() as conn:
        cur = await conn.execute(_DROPPED, params)
        return {int(row[0]): int(row[1]) for row in await cur.fetchall()}
