"""Idempotency keys and write rate-limit windows in PostgreSQL, so every replica shares
them; the read limits in each replica's memory."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from aether_gateway.adapters.db import Database

IDEMPOTENCY_HOURS = 24


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a request sent with an idempotency key."""

    method: str
    path: str
    request_hash: str


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


@dataclass(frozen=True)
class Reserved:
    """The key is this request's now: run it, then ``complete`` or ``release`` it."""

    owner: str


@dataclass(frozen=True)
class InProgress:
    """Another request holds the key and has not answered yet."""

    request: Fingerprint


KeyState = Reserved | InProgress | StoredResponse


class IdempotencyStore:
    """Keys reserved by their first request, then answers kept for a day, under
    (caller, key). PostgreSQL makes the reservation atomic across replicas."""

    def __init__(self, db: Database, *, lease_seconds: float = 60.0) -> None:
        self._db = db
        self.lease_seconds = lease_seconds

    async def reserve(self, principal: str, key: str, request: Fingerprint) -> KeyState:
        """Reserve the key for ``request``, or tell who has it: the kept answer, or the
        request still running. A reservation whose lease ran out, or an answer older
        than a day, is taken over."""
        owner = uuid.uuid4().hex
        while True:
            async with self._db.pool.connection() as conn:
                cur = await conn.execute(
                    """
                    INSERT INTO idempotency_keys AS k
                        (principal, key, method, path, request_hash, owner, lease_until)
                    VALUES (%(principal)s, %(key)s, %(method)s, %(path)s, %(hash)s, %(owner)s,
                            now() + make_interval(secs => %(lease)s))
                    ON CONFLICT (principal, key) DO UPDATE
                    SET method = excluded.method, path = excluded.path,
                        request_hash = excluded.request_hash, owner = excluded.owner,
                        lease_until = excluded.lease_until, created_at = now(),
                        completed_at = NULL, status_code = NULL, headers = NULL, body = NULL
                    WHERE (k.completed_at IS NULL AND k.lease_until < now())
                       OR k.created_at < now() - make_interval(hours => %(hours)s)
                    RETURNING k.owner
                    """,
                    {
                        "principal": principal,
                        "key": key,
                        "method": request.method,
                        "path": request.path,
                        "hash": request.request_hash,
                        "owner": owner,
                        "lease": self.lease_seconds,
                        "hours": IDEMPOTENCY_HOURS,
                    },
                )
                if await cur.fetchone() is not None:
                    return Reserved(owner)
                found = await self._held(conn, principal, key)
            if found is not None:
                return found
            # Released between the two statements: try again.

    async def _held(
        self, conn: AsyncConnection, principal: str, key: str
    ) -> InProgress | StoredResponse | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                SELECT method, path, request_hash, status_code, headers, body, completed_at
                FROM idempotency_keys WHERE principal = %s AND key = %s
                """,
                (principal, key),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        if row.pop("completed_at") is None:
            return InProgress(Fingerprint(row["method"], row["path"], row["request_hash"]))
        return StoredResponse(**row)

    async def complete(
        self, principal: str, key: str, reserved: Reserved, response: StoredResponse
    ) -> None:
        """Keep the answer of the request that reserved the key (and forget answers
        older than a day)."""
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM idempotency_keys"
                " WHERE created_at < now() - make_interval(hours => %s)",
                (IDEMPOTENCY_HOURS,),
            )
            await conn.execute(
                """
                UPDATE idempotency_keys
                SET status_code = %s, headers = %s, body = %s, completed_at = now(),
                    owner = NULL, lease_until = NULL
                WHERE principal = %s AND key = %s AND owner = %s
                """,
                (
                    response.status_code,
                    Jsonb(response.headers),
                    response.body,
                    principal,
                    key,
                    reserved.owner,
                ),
            )

    async def release(self, principal: str, key: str, reserved: Reserved) -> None:
        """Give the key up without an answer (the request failed): it may be tried again."""
        async with self._db.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys"
                " WHERE principal = %s AND key = %s AND owner = %s AND completed_at IS NULL",
                (principal, key, reserved.owner),
            )


class RateLimiter:
    """At most ``limit`` hits per ``window_seconds`` per caller, in fixed windows; its
    buckets are named ``<name>:<caller>``, so limiters of other names (and windows)
    share the table without touching each other's windows."""

    def __init__(self, db: Database, *, name: str, limit: int, window_seconds: int) -> None:
        self._db = db
        self.name = name
        self.limit = limit
        self.window_seconds = window_seconds

    async def hit(self, caller: str, now: datetime | None = None) -> float | None:
        """Count one hit; ``None`` if allowed, else the seconds until the window ends."""
        if self.limit <= 0:
            return None
        now = now or datetime.now(UTC)
        epoch = now.timestamp()
        start = epoch - epoch % self.window_seconds
        window_start = datetime.fromtimestamp(start, UTC)
        prefix = f"{self.name}:"
        bucket = prefix + caller
        async with self._db.pool.connection() as conn, conn.transaction():
            # Only this limiter's ended windows: another's window may be longer (an
            # hour's window starts before this minute's, and must outlive it).
            await conn.execute(
                "DELETE FROM rate_limit_windows"
                " WHERE starts_with(bucket, %s) AND window_start < %s",
                (prefix, window_start),
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


class BucketLimiter:
    """At most ``limit`` hits per ``window_seconds`` per caller, in this replica's memory
    (reads per caller; sign-in steps per client address): a bucket of ``limit`` hits per
    caller, refilled evenly over the window, so a caller may spend a whole window's hits
    at once and then ``limit / window_seconds`` a second. Not shared between replicas: a
    read stores nothing, and counting it in PostgreSQL would cost a write per read. Only
    callers whose bucket is not full are kept (at most ``max_callers``, the least recently
    seen dropped first: a full bucket and no bucket are the same)."""

    def __init__(
        self,
        *,
        limit: int,
        window_seconds: float,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._rate = limit / window_seconds
        self._max_callers = max_callers
        self._clock = clock
        # caller -> (reads left, when that was counted), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def hit(self, caller: str) -> float | None:
        """Count one hit; ``None`` if allowed, else the seconds until one is."""
        if self.limit <= 0:
            return None
        now = self._clock()
        left, at = self._buckets.pop(caller, (float(self.limit), now))
        left = min(float(self.limit), left + (now - at) * self._rate)
        if left < 1.0:
            self._buckets[caller] = (left, now)
            return (1.0 - left) / self._rate
        self._buckets[caller] = (left - 1.0, now)
        while len(self._buckets) > self._max_callers:
            self._buckets.popitem(last=False)
        return None


class StreamSlots:
    """At most ``limit`` event streams open at once per caller on this replica."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def take(self, caller: str) -> Callable[[], None] | None:
        """A slot for one more stream of ``caller``'s: the function that gives it back
        (once, however often it is called), or ``None`` when every slot is taken."""
        if self.limit > 0 and self._open[caller] >= self.limit:
            return None
        self._open[caller] += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self._open[caller] -= 1
            if self._open[caller] <= 0:
                del self._open[caller]

        return give_back

    def open(self, caller: str) -> int:
        """How many streams ``caller`` has open here."""
        return self._open[caller]
