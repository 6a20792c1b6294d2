"""Reading the read model back: missions, tasks, events, usage and agent sessions.

Lists are ordered on a unique key so that a cursor (the key of the last row a client
saw) continues exactly after it, however many rows arrive meanwhile.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from psycopg import sql
from psycopg.rows import dict_row

from aether_gateway.adapters.db import Database
from aether_gateway.adapters.rows import convert
from aether_gateway.domain import (
    AgentSession,
    BudgetAlert,
    Mission,
    MissionMessage,
    Plan,
    Task,
)

UsageGrouping = Literal["day", "month", "mission", "model", "task"]

# Missions as read: each with the count of the events the read model could not store for it
# (counted here, not stored: a failure may be recorded before its mission's row exists).
MISSION_ROWS = sql.SQL(
    "SELECT m.*, (SELECT count(*) FROM projection_failures f WHERE f.mission_id = m.id)::int"
    " AS projection_failures FROM missions m"
)


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as the read model keeps it: its stream sequence and its JSON."""

    seq: int
    mission_id: str
    type: str
    task_id: str | None
    event_id: str
    occurred_at: datetime
    data: dict[str, Any]


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """Model usage summed over one group (a day, a month, a mission, a model, a task).

    ``cost_usd`` is ``None`` when no call in the group had a known price;
    ``cost_complete`` is false when some had none (the cost is then a lower bound).
    """

    key: str | None
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float | None
    cost_complete: bool


_USAGE_KEYS: dict[str, sql.Composable] = {
    "day": sql.SQL("to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
    "month": sql.SQL("to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM')"),
    "mission": sql.Identifier("mission_id"),
    "model": sql.Identifier("model"),
    "task": sql.Identifier("task_id"),
}


class Where:
    """A conjunction of SQL conditions with their parameters."""

    def __init__(self) -> None:
        self.parts: list[sql.Composable] = []
        self.params: list[Any] = []

    def add(self, condition: sql.Composable, *params: Any) -> None:
        self.parts.append(condition)
        self.params.extend(params)

    def sql(self) -> sql.Composable:
        if not self.parts:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(self.parts)


class Queries:
    """Read-only access to the read model."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _rows(self, query: sql.Composed | sql.SQL, params: list[Any]) -> list[dict[str, Any]]:
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    # --- missions ----------------------------------------------------------------------

    async def missions(
        self,
        *,
        statuses: list[str] | None = None,
        repository: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[Mission]:
        """Missions newest first; ``before`` is the (created_at, id) of the last one seen."""
        where = Where()
        if statuses:
            where.add(sql.SQL("status = ANY(%s)"), statuses)
        if repository is not None:
            where.add(sql.SQL("repository = %s"), repository)
        if since is not None:
            where.add(sql.SQL("created_at >= %s"), since)
        if until is not None:
            where.add(sql.SQL("created_at < %s"), until)
        if before is not None:
            where.add(sql.SQL("(created_at, id) < (%s, %s)"), *before)
        query = MISSION_ROWS + where.sql() + sql.SQL(" ORDER BY created_at DESC, id DESC LIMIT %s")
        rows = await self._rows(query, [*where.params, limit])
        return [convert(r, Mission) for r in rows]

    async def mission(self, mission_id: str) -> Mission | None:
        rows = await self._rows(MISSION_ROWS + sql.SQL(" WHERE id = %s"), [mission_id])
        return convert(rows[0], Mission) if rows else None

    async def plans(self, mission_id: str) -> list[Plan]:
        """Every version of the mission's plan, oldest first."""
        query = sql.SQL("SELECT * FROM plans WHERE mission_id = %s ORDER BY version")
        return [convert(r, Plan) for r in await self._rows(query, [mission_id])]

    async def messages(self, mission_id: str) -> list[MissionMessage]:
        query = sql.SQL("SELECT * FROM mission_messages WHERE mission_id = %s ORDER BY seq")
        return [convert(r, MissionMessage) for r in await self._rows(query, [mission_id])]

    # --- tasks -------------------------------------------------------------------------

    async def mission_tasks(self, mission_id: str) -> list[Task]:
        """The mission's tasks in plan order."""
        query = sql.SQL("SELECT * FROM tasks WHERE mission_id = %s ORDER BY position, task_id")
        return [convert(r, Task) for r in await self._rows(query, [mission_id])]

    async def task(self, mission_id: str, task_id: str) -> Task | None:
        query = sql.SQL("SELECT * FROM tasks WHERE mission_id = %s AND task_id = %s")
        rows = await self._rows(query, [mission_id, task_id])
        return convert(rows[0], Task) if rows else None

    async def tasks(
        self,
        *,
        mission_id: str | None = None,
        statuses: list[str] | None = None,
        before: tuple[datetime, str, str] | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """Tasks most recently changed first; ``before`` is the (updated_at, mission_id,
        task_id) of the last one seen."""
        where = Where()
        if mission_id is not None:
            where.add(sql.SQL("mission_id = %s"), mission_id)
        if statuses:
            where.add(sql.SQL("status = ANY(%s)"), statuses)
        if before is not None:
            where.add(sql.SQL("(updated_at, mission_id, task_id) < (%s, %s, %s)"), *before)
        query = sql.SQL(
            "SELECT * FROM tasks{} ORDER BY updated_at DESC, mission_id DESC, task_id DESC LIMIT %s"
        )
        rows = await self._rows(query.format(where.sql()), [*where.params, limit])
        return [convert(r, Task) for r in rows]

    # --- events ------------------------------------------------------------------------

    async def events(
        self,
        *,
        mission_id: str | None = None,
        types: list[str] | None = None,
        task_id: str | None = None,
        after: int = 0,
        upto: int | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Stored events after sequence ``after`` (and up to ``upto``), oldest first.

        The events an attempt's result carried share its sequence (``domain.carried``):
        a page does not end among them, so it may hold a few more than ``limit`` events,
        and the next page, after its last sequence, misses none."""
        where = Where()
        where.add(sql.SQL("seq > %s"), after)
        if upto is not None:
            where.add(sql.SQL("seq <= %s"), upto)
        if mission_id is not None:
            where.add(sql.SQL("mission_id = %s"), mission_id)
        if types:
            where.add(sql.SQL("type = ANY(%s)"), types)
        if task_id is not None:
            where.add(sql.SQL("task_id = %s"), task_id)
        query = sql.SQL(
            "SELECT seq, part, mission_id, type, task_id, event_id, occurred_at,"
            " payload AS data FROM events{} ORDER BY seq, part"
        )
        rows = await self._rows(
            query.format(where.sql()) + sql.SQL(" LIMIT %s"), [*where.params, limit]
        )
        if len(rows) == limit and rows[-1]["part"] < 0:
            # The page ends among a result's carried events: the rest of its message.
            where.add(sql.SQL("seq = %s AND part > %s"), rows[-1]["seq"], rows[-1]["part"])
            rows += await self._rows(query.format(where.sql()), where.params)
        return [convert(r, StoredEvent) for r in rows]

    async def has_events(self, mission_id: str) -> bool:
        query = sql.SQL("SELECT 1 FROM events WHERE mission_id = %s LIMIT 1")
        return bool(await self._rows(query, [mission_id]))

    async def event_count(self, mission_id: str | None = None) -> int:
        """How many events the read model holds (for one mission, or all)."""
        where = Where()
        if mission_id is not None:
            where.add(sql.SQL("mission_id = %s"), mission_id)
        query = sql.SQL("SELECT count(*) AS n FROM events{}").format(where.sql())
        rows = await self._rows(query, where.params)
        return int(rows[0]["n"])

    # --- usage and budgets -------------------------------------------------------------

    async def usage(
        self,
        group_by: UsageGrouping,
        *,
        mission_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRow]:
        """Usage summed per group, ordered by the group's key."""
        where = Where()
        if mission_id is not None:
            where.add(sql.SQL("mission_id = %s"), mission_id)
        if since is not None:
            where.add(sql.SQL("occurred_at >= %s"), since)
        if until is not None:
            where.add(sql.SQL("occurred_at < %s"), until)
        query = sql.SQL(
            """
            SELECT {key} AS key, count(*) AS calls,
                   sum(input_tokens)::bigint AS input_tokens,
                   sum(output_tokens)::bigint AS output_tokens,
                   sum(cache_read_tokens)::bigint AS cache_read_tokens,
                   sum(cache_write_tokens)::bigint AS cache_write_tokens,
                   sum(cost_usd) AS cost_usd,
                   bool_and(cost_usd IS NOT NULL) AS cost_complete
            FROM usage_records{where}
            GROUP BY 1 ORDER BY 1 NULLS FIRST
            """
        ).format(key=_USAGE_KEYS[group_by], where=where.sql())
        return [convert(r, UsageRow) for r in await self._rows(query, where.params)]

    async def budget_alerts(self, scopes: list[str]) -> list[BudgetAlert]:
        query = sql.SQL("SELECT * FROM budget_alerts WHERE scope = ANY(%s) ORDER BY seq")
        return [convert(r, BudgetAlert) for r in await self._rows(query, [scopes])]

    # --- agents ------------------------------------------------------------------------

    async def sessions(
        self,
        *,
        mission_id: str | None = None,
        runner_id: str | None = None,
        limit: int = 1000,
    ) -> list[AgentSession]:
        """Agent sessions, most recently seen first."""
        where = Where()
        if mission_id is not None:
            where.add(sql.SQL("mission_id = %s"), mission_id)
        if runner_id is not None:
            where.add(sql.SQL("runner_id = %s"), runner_id)
        query = sql.SQL(
            "SELECT * FROM agent_sessions{} ORDER BY last_seen_at DESC, mission_id, task_id,"
            " attempt LIMIT %s"
        ).format(where.sql())
        rows = await self._rows(query, [*where.params, limit])
        return [convert(r, AgentSession) for r in rows]
