"""Idempotency keys and rate-limit windows in PostgreSQL, so every replica shares them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from aether_gateway.adapters.db import Database

IDEMPOTENCY_HOURS = 24


@dataclass(frozen=True)
class StoredResponse:
    """The first answer given to a request sent with an idempotency key."""

    method: str
    path: str
    request_hash: str
    status_code: int
    # The headers worth repeating (content type, location), as (name, value) pairs.
    headers: list[list[str]]
    body: bytes


class IdempotencyStore:
    """Answers kept for a day under (caller, key)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, principal: str, key: str) -> StoredResponse | None:
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                SELECT method, path, request_hash, status_code, headers, body
                FROM idempotency_keys
                WHERE principal = %s AND key = %s
                  AND created_at > now() - make_interval(hours => %s)
                """,
                (principal, key, IDEMPOTENCY_HOURS),
            )
            row = await cur.fetchone()
        return StoredResponse(**row) if row is not None else None

    async def put(self, principal: str, key: str, response: StoredResponse) -> StoredResponse:
        """Keep ``response`` unless an answer for the key is kept already; return the one
        kept (two identical requests racing each other both answer with the first)."""
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM idempotency_keys"
                " WHERE created_at < now() - make_interval(hours => %s)",
                (IDEMPOTENCY_HOURS,),
            )
            await conn.execute(
                """
                INSERT INTO idempotency_keys (principal, key, method, path, request_hash,
                                              status_code, headers, body)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (principal, key) DO NOTHING
                """,
                (
                    principal,
                    key,
                    response.method,
                    response.path,
                    response.request_hash,
                    response.status_code,
                    Jsonb(response.headers),
                    response.body,
                ),
            )
        kept = await self.get(principal, key)
        return kept or response


class RateLimiter:
    """At most ``limit`` hits per ``window_seconds`` per bucket, in fixed windows."""

    def __init__(self, db: Database, *, limit: int, window_seconds: int) -> None:
        self._db = db
        self.limit = limit
        self.window_seconds = window_seconds

    async def hit(self, bucket: str, now: datetime | None = None) -> float | None:
        """Count one hit; ``None`` if allowed, else the seconds until the window ends."""
        if self.limit <= 0:
            return None
        now = now or datetime.now(UTC)
        epoch = now.timestamp()
        start = epoch - epoch % self.window_seconds
        window_start = datetime.fromtimestamp(start, UTC)
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM rate_limit_windows WHERE window_start < %s", (window_start,)
            )
            cur = await conn.execute(
                """
                INSERT INTO rate_limit_windows (bucket, window_start, hits) VALUES (%s, %s, 1)
                ON CONFLICT (bucket, window_start)
                DO UPDATE SET hits = rate_limit_windows.hits + 1
                RETURNING hits
                """,
                (bucket, window_start),
            )
            row = await cur.fetchone()
        assert row is not None
        if int(row[0]) <= self.limit:
            return None
        return max(1.0, math.ceil(start + self.window_seconds - epoch))
