"""The read model's record of what it could not fold: projection failures and gaps.

An error *about the event* (PostgreSQL refuses a value, a constraint is broken, the
payload does not decode) happens again on every redelivery, so retrying it only holds
up every later event: it is recorded here and the event is skipped. An error *about the
database* (the connection is lost, the pool times out) passes: the event is retried.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from aether_gateway.domain import ProjectionFailure, scrub_text

# Raised for this event whatever the database's health: never worth a retry.
EVENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.DataError,  # NUL in text, an invalid escape in JSON, a value out of range
    psycopg.IntegrityError,  # a check or not-null constraint the row breaks
    ValueError,  # lone surrogates (UnicodeEncodeError), msgspec validation
    TypeError,
    LookupError,
)

# Raised by the database whatever the event (the connection is lost, the pool times out):
# the runtime retries the handler in place rather than failing the step.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # psycopg_pool's PoolTimeout too
    psycopg.InterfaceError,
)

Stream = Literal["missions", "telemetry"]


def describe(error: BaseException, limit: int = 1000) -> str:
    """An error as one storable line."""
    text = scrub_text(f"{type(error).__name__}: {error}".strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def record_failure(
    conn: AsyncConnection,
    *,
    stream: Stream,
    seq: int,
    mission_id: str,
    event_type: str,
    error: str,
    outcome: str,
) -> bool:
    """Record a failure (once per stream sequence); its mission counts it when read.

    Returns whether it was new.
    """
    cur = await conn.execute(
        """
        INSERT INTO projection_failures (stream, seq, mission_id, type, error, outcome)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT DO NOTHING
        RETURNING seq
        """,
        (stream, seq, scrub_text(mission_id), scrub_text(event_type), error, outcome),
    )
    return await cur.fetchone() is not None


async def failures(conn: AsyncConnection, mission_id: str | None = None) -> list[ProjectionFailure]:
    """The recorded failures, oldest first (of one mission when given)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if mission_id is None:
            await cur.execute("SELECT * FROM projection_failures ORDER BY failed_at, seq")
        else:
            await cur.execute(
                "SELECT * FROM projection_failures WHERE mission_id = %s ORDER BY stream, seq",
                (mission_id,),
            )
        rows = await cur.fetchall()
    return [msgspec.convert(row, ProjectionFailure) for row in rows]


async def failure_count(conn: AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM projection_failures")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# --- gaps ------------------------------------------------------------------------------


async def note_gap(conn: AsyncConnection, consumer: str, from_seq: int, to_seq: int) -> None:
    await conn.execute(
        "INSERT INTO projection_gaps (consumer, from_seq, to_seq) VALUES (%s, %s, %s)"
        " ON CONFLICT (consumer, from_seq) DO UPDATE"
        " SET to_seq = greatest(projection_gaps.to_seq, EXCLUDED.to_seq)",
        (consumer, from_seq, to_seq),
    )


async def gaps(conn: AsyncConnection, consumer: str) -> list[tuple[int, int]]:
    cur = await conn.execute(
        "SELECT from_seq, to_seq FROM projection_gaps WHERE consumer = %s ORDER BY from_seq",
        (consumer,),
    )
    return [(int(a), int(b)) for a, b in await cur.fetchall()]


async def close_gap(conn: AsyncConnection, consumer: str, from_seq: int) -> None:
    await conn.execute(
        "DELETE FROM projection_gaps WHERE consumer = %s AND from_seq = %s", (consumer, from_seq)
    )
