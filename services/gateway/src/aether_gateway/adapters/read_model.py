"""The read model in PostgreSQL: folding events into rows, and reading them back.

Each event is folded in one transaction with the projection's stream position, under a
row lock on that position: an event at or below the stored position was folded before
and is skipped, so redeliveries, the start-up catch-up and several replicas folding at
once each change the rows exactly once.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from aether_events import Event, encode, tag_of
from aether_gateway.adapters.db import Database
from aether_gateway.domain import Changes, Mission, MissionView, Plan, Task, fold

log = logging.getLogger("aether.gateway.read_model")

T = TypeVar("T", bound=msgspec.Struct)

_MISSION_COLUMNS: tuple[str, ...] = Mission.__struct_fields__
_TASK_COLUMNS: tuple[str, ...] = Task.__struct_fields__
_PLAN_COLUMNS: tuple[str, ...] = Plan.__struct_fields__


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> sql.Composed:
    updates = [c for c in columns if c not in key]
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        sql.SQL(", ").join(map(sql.Identifier, key)),
        sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in updates
        ),
    )


_UPSERT_MISSION = _upsert("missions", _MISSION_COLUMNS, ("id",))
_UPSERT_TASK = _upsert("tasks", _TASK_COLUMNS, ("mission_id", "task_id"))
_UPSERT_PLAN = _upsert("plans", _PLAN_COLUMNS, ("mission_id", "version"))


def _row(struct: msgspec.Struct, columns: tuple[str, ...]) -> list[Any]:
    values: list[Any] = []
    for column in columns:
        value = getattr(struct, column)
        if column in ("tasks", "repairs") and isinstance(struct, Plan):
            value = Jsonb(msgspec.to_builtins(value))
        values.append(value)
    return values


def _convert(row: dict[str, Any], cls: type[T]) -> T:
    return msgspec.convert(row, cls)


class ReadModel:
    """The gateway's projection, stored in PostgreSQL and named by its consumer."""

    def __init__(self, db: Database, consumer: str = "gateway") -> None:
        self._db = db
        self.consumer = consumer

    # --- folding ---------------------------------------------------------------------

    async def position(self) -> int:
        """The last stream sequence folded (0 before the first)."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT last_seq FROM projection_position WHERE consumer = %s", (self.consumer,)
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def apply(self, event: Event, sequence: int) -> bool:
        """Fold ``event``, stored at ``sequence``, unless it was folded already.

        Returns whether the rows changed hands (the event was new to the read model).
        """
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO projection_position (consumer) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.consumer,),
            )
            cur = await conn.execute(
                "SELECT last_seq FROM projection_position WHERE consumer = %s FOR UPDATE",
                (self.consumer,),
            )
            row = await cur.fetchone()
            assert row is not None
            if sequence <= row[0]:
                return False
            # The same event id at a new sequence (republished after the stream's
            # duplicate window) is history already: record nothing, fold nothing.
            cur = await conn.execute(
                """
                INSERT INTO events (seq, mission_id, type, event_id, occurred_at, payload)
                VALUES (%s, %s, %s, %s, %s, %s::jsonb)
                ON CONFLICT DO NOTHING
                RETURNING seq
                """,
                (
                    sequence,
                    event.mission_id,
                    tag_of(type(event)),
                    event.event_id,
                    event.occurred_at,
                    encode(event).decode(),
                ),
            )
            fresh = await cur.fetchone() is not None
            if fresh:
                view = await self._load_view(conn, event.mission_id)
                await self._write(conn, fold(view, event))
            await conn.execute(
                """
                UPDATE projection_position SET last_seq = %s, updated_at = now()
                WHERE consumer = %s
                """,
                (sequence, self.consumer),
            )
        return fresh

    async def reset(self) -> None:
        """Forget everything folded (to rebuild from the start of a new stream)."""
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute("TRUNCATE tasks, plans, events, missions")
            await conn.execute(
                "UPDATE projection_position SET last_seq = 0, updated_at = now()"
                " WHERE consumer = %s",
                (self.consumer,),
            )

    async def _load_view(self, conn: AsyncConnection, mission_id: str) -> MissionView:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM missions WHERE id = %s FOR UPDATE", (mission_id,))
            mission_row = await cur.fetchone()
            if mission_row is None:
                return MissionView()
            await cur.execute("SELECT * FROM tasks WHERE mission_id = %s", (mission_id,))
            tasks = [_convert(r, Task) for r in await cur.fetchall()]
        return MissionView(
            mission=_convert(mission_row, Mission), tasks={t.task_id: t for t in tasks}
        )

    async def _write(self, conn: AsyncConnection, changes: Changes) -> None:
        if changes.mission is not None:
            await conn.execute(_UPSERT_MISSION, _row(changes.mission, _MISSION_COLUMNS))
        if changes.plan is not None:
            await conn.execute(_UPSERT_PLAN, _row(changes.plan, _PLAN_COLUMNS))
        if changes.removed_tasks:
            assert changes.mission is not None
            await conn.execute(
                "DELETE FROM tasks WHERE mission_id = %s AND task_id = ANY(%s)",
                (changes.mission.id, changes.removed_tasks),
            )
        for task in changes.tasks:
            await conn.execute(_UPSERT_TASK, _row(task, _TASK_COLUMNS))

    # --- reading ---------------------------------------------------------------------

    async def missions(self, *, status: str | None = None, limit: int = 50) -> list[Mission]:
        """Missions, newest first, optionally only those in ``status``."""
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            if status is None:
                await cur.execute(
                    "SELECT * FROM missions ORDER BY created_at DESC, id DESC LIMIT %s", (limit,)
                )
            else:
                await cur.execute(
                    "SELECT * FROM missions WHERE status = %s"
                    " ORDER BY created_at DESC, id DESC LIMIT %s",
                    (status, limit),
                )
            return [_convert(r, Mission) for r in await cur.fetchall()]

    async def mission(self, mission_id: str) -> Mission | None:
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM missions WHERE id = %s", (mission_id,))
            row = await cur.fetchone()
        return _convert(row, Mission) if row is not None else None

    async def plans(self, mission_id: str) -> list[Plan]:
        """Every version of the mission's plan, oldest first."""
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM plans WHERE mission_id = %s ORDER BY version", (mission_id,)
            )
            return [_convert(r, Plan) for r in await cur.fetchall()]

    async def tasks(self, mission_id: str) -> list[Task]:
        """The mission's tasks in plan order."""
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM tasks WHERE mission_id = %s ORDER BY position, task_id",
                (mission_id,),
            )
            return [_convert(r, Task) for r in await cur.fetchall()]

    async def event_count(self, mission_id: str | None = None) -> int:
        """How many events the read model holds (for one mission, or all)."""
        async with self._db.pool.connection() as conn:
            if mission_id is None:
                cur = await conn.execute("SELECT count(*) FROM events")
            else:
                cur = await conn.execute(
                    "SELECT count(*) FROM events WHERE mission_id = %s", (mission_id,)
                )
            row = await cur.fetchone()
        return int(row[0]) if row else 0
