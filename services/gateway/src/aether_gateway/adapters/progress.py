"""How far each of several missions has come, in one query: what a list of missions
shows next to each (merged of total tasks) without asking for every task."""

from __future__ import annotations

import msgspec
from psycopg import sql
from psycopg.rows import dict_row

from aether_gateway.adapters.db import Database


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """Task counts of one mission. ``total`` leaves skipped tasks out; ``failed``
    counts failed and escalated ones."""

    total: int = 0
    merged: int = 0
    running: int = 0
    failed: int = 0


_QUERY = sql.SQL(
    """
    SELECT mission_id,
           count(*) FILTER (WHERE status <> 'skipped') AS total,
           count(*) FILTER (WHERE status = 'merged') AS merged,
           count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status IN ('failed', 'escalated')) AS failed
      FROM tasks
     WHERE mission_id = ANY(%s)
     GROUP BY mission_id
    """
)


async def progress_of(db: Database, mission_ids: list[str]) -> dict[str, Progress]:
    """Counts for each mission that has tasks (missions without any are left out)."""
    async with db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_QUERY, [mission_ids])
        rows = await cur.fetchall()
    return {
        row["mission_id"]: Progress(
            total=row["total"], merged=row["merged"], running=row["running"], failed=row["failed"]
        )
        for row in rows
    }
