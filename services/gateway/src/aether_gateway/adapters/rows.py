"""Rows of the read model as SQL: the upserts and inserts a fold writes, and the
conversion between a row as psycopg reads it and the struct it stores."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from psycopg import sql

from aether_events import Event, encode, tag_of
from aether_events.codec import without_secrets
from aether_gateway.domain import (
    BudgetAlert,
    Mission,
    MissionMessage,
    Plan,
    SessionUpdate,
    Task,
    UsageEntry,
)

T = TypeVar("T", bound=msgspec.Struct)


def _rendered(query: sql.Composable) -> bytes:
    """A statement built from identifiers, as the bytes psycopg sends. Rendered once at
    import: handed over as ``sql.Composed``, psycopg renders it again on every execution,
    escaping each identifier (a task's upsert costs about 0.2 ms of CPU, a mission's 0.4,
    per statement of every fold). The names are ASCII, the same in any client encoding."""
    return query.as_bytes(None)


def _many(table: str, columns: tuple[str, ...], key: tuple[str, ...] = ()) -> bytes:
    """Insert rows, or update those that exist (with ``key``): the rows are one JSON
    array of objects named by column, typed by the table's own row type."""
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    query = sql.SQL(
        "INSERT INTO {table} ({names})"
        " SELECT {names} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)"
    ).format(table=sql.Identifier(table), names=names)
    if not key:
        return _rendered(query + sql.SQL(" ON CONFLICT DO NOTHING"))
    updates = [c for c in columns if c not in key]
    return _rendered(
        query
        + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key)),
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in updates
            ),
        )
    )


def _columns(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    return cls.__struct_fields__


# A mission's failure count is not stored: it is counted when the mission is read
# (``queries.MISSION_ROW``), so a failure recorded before its mission's row exists counts.
MISSION_COLUMNS = tuple(c for c in _columns(Mission) if c != "projection_failures")
# The read model's writes, for one row or many in one statement; each key at most once.
UPSERT_MISSIONS = _many("missions", MISSION_COLUMNS, ("id",))
UPSERT_TASKS = _many("tasks", _columns(Task), ("mission_id", "task_id"))
UPSERT_PLANS = _many("plans", _columns(Plan), ("mission_id", "version"))
INSERTS_MANY: dict[type[msgspec.Struct], bytes] = {
    UsageEntry: _many("usage_records", _columns(UsageEntry)),
    MissionMessage: _many("mission_messages", _columns(MissionMessage)),
    BudgetAlert: _many("budget_alerts", _columns(BudgetAlert)),
}

# Merging what one event says about an agent session into its row; see SessionUpdate
# for why each column merges the way it does. The update goes as one JSON object (its
# fields by name, encoded by msgspec) rather than twenty parameters psycopg adapts one
# at a time. ``status`` as sent (it may be null) is read from ``u``; every other column
# as inserted, from ``EXCLUDED``.
MERGE_SESSION_SQL = b"""
WITH u AS (
    SELECT * FROM jsonb_to_record(%s::jsonb) AS u(
        mission_id text, task_id text, attempt integer, seen_at timestamptz,
        runner_id text, model text, status text, started_at timestamptz,
        finished_at timestamptz, error text, progress_at timestamptz, turns integer,
        tool_calls integer, files_changed text[], last_action text, tokens_in bigint,
        tokens_out bigint, cost_usd double precision, unknown_cost boolean)
)
INSERT INTO agent_sessions AS s (
    mission_id, task_id, attempt, runner_id, model, status, started_at, finished_at,
    last_seen_at, error, progress_at, turns, tool_calls, files_changed, last_action,
    tokens_in, tokens_out, cost_usd, cost_complete)
SELECT
    mission_id, task_id, attempt, runner_id, model, coalesce(status, 'running'),
    started_at, finished_at, seen_at, error, progress_at, turns, tool_calls,
    files_changed, last_action, tokens_in, tokens_out, cost_usd, NOT unknown_cost
FROM u
ON CONFLICT (mission_id, task_id, attempt) DO UPDATE SET
    runner_id = coalesce(s.runner_id, EXCLUDED.runner_id),
    model = coalesce(EXCLUDED.model, s.model),
    status = coalesce((SELECT status FROM u), s.status),
    started_at = coalesce(EXCLUDED.started_at, s.started_at),
    finished_at = coalesce(EXCLUDED.finished_at, s.finished_at),
    last_seen_at = greatest(s.last_seen_at, EXCLUDED.last_seen_at),
    error = coalesce(EXCLUDED.error, s.error),
    progress_at = greatest(s.progress_at, EXCLUDED.progress_at),
    turns = greatest(s.turns, EXCLUDED.turns),
    tool_calls = greatest(s.tool_calls, EXCLUDED.tool_calls),
    files_changed = CASE WHEN %(newer)s THEN EXCLUDED.files_changed ELSE s.files_changed END,
    last_action = CASE WHEN %(newer)s THEN EXCLUDED.last_action ELSE s.last_action END,
    tokens_in = s.tokens_in + EXCLUDED.tokens_in,
    tokens_out = s.tokens_out + EXCLUDED.tokens_out,
    cost_usd = CASE WHEN EXCLUDED.cost_usd IS NULL THEN s.cost_usd
                    ELSE coalesce(s.cost_usd, 0) + EXCLUDED.cost_usd END,
    cost_complete = s.cost_complete AND EXCLUDED.cost_complete
""".replace(
    # ``newer``: this update carries progress at least as recent as the stored one.
    b"%(newer)s",
    b"(EXCLUDED.progress_at IS NOT NULL"
    b" AND (s.progress_at IS NULL OR EXCLUDED.progress_at >= s.progress_at))",
)


def session_json(update: SessionUpdate) -> str:
    """``MERGE_SESSION_SQL``'s parameter."""
    return msgspec.json.encode(update).decode()


def rows_json(structs: list[Any]) -> str:
    """Rows for a ``_many`` statement: the structs as one JSON array of objects (their
    JSON columns as JSON)."""
    return msgspec.json.encode(structs).decode()


def convert(row: dict[str, Any], cls: type[T]) -> T:
    """A row as read by psycopg, as the struct it stores."""
    return msgspec.convert(row, cls)


def task_of(event: Event) -> str | None:
    """The task an event is about, if any (for the ``events`` table's filter)."""
    value = getattr(event, "task_id", None)
    if value is None:
        task = getattr(event, "task", None)
        value = getattr(task, "id", None)
    return value if isinstance(value, str) else None


def event_row(event: Event, sequence: int, part: int = 0) -> tuple[Any, ...]:
    """An event as the ``events`` table stores it: its sequence, its part of its message
    (see ``domain.carried``), mission, type, task, id, time and JSON (without secrets),
    in that order."""
    return (
        sequence,
        part,
        event.mission_id,
        tag_of(type(event)),
        task_of(event),
        event.event_id,
        event.occurred_at,
        encode(without_secrets(event)).decode(),
    )
