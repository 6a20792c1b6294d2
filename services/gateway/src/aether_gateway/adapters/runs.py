"""Folding a run of mission events with a handful of statements (the catch-up's path).

Folded one at a time, each event records itself, reads the rows it touches and writes
them back: several statements and a wait for the server per event, which made a rebuild
of 33,000 events take minutes. Here a run of events is recorded by one statement (which
answers which of them are new), the rows of every mission the run touches are read by
two more, the events are folded in memory (``fold_run``) and the rows as they stand at
the end of the run are written by one batch per table. The caller holds the position
locked and moves it in the same transaction, as for a single event.

A message that stands for several events (an attempt's result or a TaskReady and the
events it carries, see ``domain.carried``) is folded here too, each event recorded at
its own part of the message and folded only if new, as if it had come alone.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row

from aether_events import Event
from aether_gateway.adapters.rows import (
    INSERTS_MANY,
    MERGE_SESSION_SQL,
    UPSERT_MISSIONS,
    UPSERT_PLANS,
    UPSERT_TASKS,
    convert,
    event_row,
    rows_json,
    session_json,
)
from aether_gateway.domain import (
    BudgetAlert,
    Mission,
    MissionMessage,
    MissionView,
    Task,
    UsageEntry,
    unfolded,
)
from aether_gateway.domain.run import fold_run, tasks_needed

# Every event of the run in one statement. ``ON CONFLICT DO NOTHING`` skips an event
# recorded before (its sequence and part, or its id at another place: republished after
# the stream's duplicate window, or carried by a result after it came alone, or the
# other way round) and, rows being inserted in the run's order, the second of two events
# with one id inside the run; ``RETURNING`` names the ones recorded now.
# The arrays go in binary (``%b``): as text, every payload would be quoted and escaped.
_RECORD_EVENTS = """
INSERT INTO events (seq, part, mission_id, type, task_id, event_id, occurred_at, payload)
SELECT e.seq, e.part, e.mission_id, e.type, e.task_id, e.event_id, e.occurred_at,
       e.payload::jsonb
FROM unnest(%b::bigint[], %b::smallint[], %b::text[], %b::text[], %b::text[], %b::text[],
            %b::timestamptz[], %b::text[])
     WITH ORDINALITY
     AS e(seq, part, mission_id, type, task_id, event_id, occurred_at, payload, n)
ORDER BY e.n
ON CONFLICT DO NOTHING
RETURNING seq, part
"""


class Sent:
    """A run's record and reads, sent and not yet answered (see ``send_run``);
    ``events`` are the run's events unfolded, each with its sequence and part."""

    def __init__(
        self,
        events: list[tuple[Event, int, int]],
        needed: dict[str, list[str] | None],
        recorded: AsyncCursor[Any],
        missions: AsyncCursor[DictRow],
        tasks: AsyncCursor[DictRow],
    ) -> None:
        self.events = events
        self.needed = needed
        self.recorded = recorded
        self.missions = missions
        self.tasks = tasks


async def fold_events(conn: AsyncConnection, run: list[tuple[Event, int]]) -> int:
    """Fold ``run`` (events with their stream sequences, in stream order, each above the
    position) in the caller's transaction; returns how many events were new to the read
    model (counting those a result carries)."""
    if not run:
        return 0
    return await finish_run(conn, await send_run(conn, run))


async def send_run(conn: AsyncConnection, run: list[tuple[Event, int]]) -> Sent:
    """The first half of ``fold_events``: record the run's events and ask for the rows
    they read, without waiting for an answer (in a pipeline, these go to the server
    with whatever is sent before the next answer is read)."""
    events = [(each, seq, part) for event, seq in run for each, part in unfolded(event)]
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
    for event, sequence, part in events:
        for column, value in zip(columns, event_row(event, sequence, part), strict=True):
            column.append(value)
    recorded = await conn.execute(_RECORD_EVENTS, columns)
    needed = tasks_needed([event for event, _, _ in events])
    mission_ids = sorted(needed)
    whole = [m for m in mission_ids if needed[m] is None]
    some = [(m, t) for m in mission_ids for t in needed[m] or ()]
    missions = conn.cursor(row_factory=dict_row)
    await missions.execute(
        "SELECT * FROM missions WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (mission_ids,)
    )
    # Only the task rows the events read: a few events of a long mission (the live
    # consumer's runs) need not load and convert every task of it.
    tasks = conn.cursor(row_factory=dict_row)
    await tasks.execute(
        "SELECT * FROM tasks WHERE mission_id = ANY(%s) OR (mission_id, task_id) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))",
        (whole, [m for m, _ in some], [t for _, t in some]),
    )
    return Sent(events, needed, recorded, missions, tasks)


async def finish_run(conn: AsyncConnection, sent: Sent) -> int:
    """The second half of ``fold_events``: read the answers, fold, write the rows."""
    events, needed = sent.events, sent.needed
    fresh = {(int(row[0]), int(row[1])) for row in await sent.recorded.fetchall()}
    views: dict[str, MissionView] = {}
    async with sent.missions as missions:
        for row in await missions.fetchall():
            views[row["id"]] = MissionView(mission=convert(row, Mission))
    async with sent.tasks as tasks:
        for row in await tasks.fetchall():
            task = convert(row, Task)
            view = views.get(task.mission_id)
            if view is not None:
                view.tasks[task.task_id] = task
    await _count_tasks(conn, views, needed)
    writes = fold_run(views, [e for e in events if (e[1], e[2]) in fresh])
    await _write_many(conn, UPSERT_MISSIONS, writes.missions)
    await _write_many(conn, UPSERT_PLANS, writes.plans)
    if writes.removed_tasks:
        await conn.execute(
            "DELETE FROM tasks WHERE (mission_id, task_id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([m for m, _ in writes.removed_tasks], [t for _, t in writes.removed_tasks]),
        )
    await _write_many(conn, UPSERT_TASKS, writes.tasks)
    await _write_many(conn, INSERTS_MANY[UsageEntry], writes.usage)
    await _write_many(conn, INSERTS_MANY[MissionMessage], writes.messages)
    await _write_many(conn, INSERTS_MANY[BudgetAlert], writes.alerts)
    if writes.sessions:
        async with conn.cursor() as cur:
            await cur.executemany(MERGE_SESSION_SQL, [(session_json(s),) for s in writes.sessions])
    return len(fresh)


async def _count_tasks(
    conn: AsyncConnection, views: dict[str, MissionView], needed: dict[str, list[str] | None]
) -> None:
    """Give a view read in part its mission's task count when a task its events read
    does not exist (the fold then numbers the new task by it; see ``tasks_read``)."""
    short = [
        mission_id
        for mission_id, view in views.items()
        if (ids := needed.get(mission_id)) is not None and not set(ids) <= view.tasks.keys()
    ]
    if not short:
        return
    cur = await conn.execute(
        "SELECT mission_id, count(*) FROM tasks WHERE mission_id = ANY(%s) GROUP BY mission_id",
        (short,),
    )
    counts = {str(row[0]): int(row[1]) for row in await cur.fetchall()}
    for mission_id in short:
        views[mission_id].task_count = counts.get(mission_id, 0)


async def _write_many(conn: AsyncConnection, query: Any, rows: list[Any]) -> None:
    if rows:
        await conn.execute(query, (rows_json(rows),))
