"""API tokens in PostgreSQL: created, listed, revoked and looked up by their hash.

The secret itself is returned once, when the token is created, and never stored.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import msgspec
from psycopg.rows import dict_row

from aether_gateway.adapters.db import Database
from aether_gateway.adapters.rows import convert
from aether_gateway.domain.auth import TOKEN_PREFIX, Principal, refused_from, token_hash

# The channel a revocation is announced on (NOTIFY), its payload the token's id.
REVOKED_CHANNEL = "aether_token_revoked"


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A token as listed: everything but the secret (``prefix`` helps recognise it)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class TokenStore:
    """Tokens, with lookups cached for a few seconds.

    The cache keeps a busy client from costing a query per request. A revocation clears
    it at once: here directly, and on every replica through the notification the
    revocation sends on ``REVOKED_CHANNEL`` (``adapters.revocations``), which calls
    ``forget``. Where a notification is missed, the cache lasts ``cache_seconds``.
    """

    def __init__(self, db: Database, *, cache_seconds: float = 5.0) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._last_used: dict[str, float] = {}

    async def create(
        self, name: str, scopes: list[str], *, created_by: str | None, expires_in_days: int | None
    ) -> tuple[TokenInfo, str]:
        """A new token and its secret (shown to the caller once)."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "tok_" + secrets.token_hex(8)
        expires_at = (
            datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        )
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                INSERT INTO api_tokens (id, name, token_hash, prefix, scopes, created_by,
                                        expires_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s)
                RETURNING *
                """,
                (
                    token_id,
                    name,
                    token_hash(secret),
                    secret[: len(TOKEN_PREFIX) + 6],
                    sorted(set(scopes)),
                    created_by,
                    expires_at,
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return convert(row, TokenInfo), secret

    async def list(self, *, include_revoked: bool = False) -> list[TokenInfo]:
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM api_tokens WHERE %s OR revoked_at IS NULL ORDER BY created_at, id",
                (include_revoked,),
            )
            return [convert(r, TokenInfo) for r in await cur.fetchall()]

    async def revoke(self, token_id: str) -> TokenInfo | None:
        """Revoke a token (again is harmless); ``None`` when there is no such token."""
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
                WHERE id = %s RETURNING *
                """,
                (token_id,),
            )
            row = await cur.fetchone()
            if row is not None:
                # In the revocation's transaction: every replica listening learns of it
                # when (and only if) it commits.
                await cur.execute("SELECT pg_notify(%s, %s)", (REVOKED_CHANNEL, token_id))
        self.forget()
        return convert(row, TokenInfo) if row is not None else None

    def forget(self) -> None:
        """Drop every cached lookup: the next one asks the database."""
        self._cache.clear()

    async def principal(self, secret: str) -> Principal | None:
        """Who holds ``secret``, if it is a valid (known, unrevoked, unexpired) token."""
        digest = token_hash(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                SELECT id, name, scopes,
                       extract(epoch FROM expires_at)::float8 AS expires_at,
                       extract(epoch FROM expires_at - now())::float8 AS seconds_left
                FROM api_tokens
                WHERE token_hash = %s AND revoked_at IS NULL
                  AND (expires_at IS NULL OR expires_at > now())
                """,
                (digest,),
            )
            row = await cur.fetchone()
        found = (
            Principal(
                id=row["id"],
                name=row["name"],
                scopes=frozenset(row["scopes"]),
                kind="token",
                # The query's ``expires_at > now()`` is the same rule, by the database's
                # clock: refused from the expiry on, no leeway (the gateway issued it).
                refused_from=None if row["expires_at"] is None else refused_from(row["expires_at"]),
            )
            if row is not None
            else None
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        # Kept no longer than the token lasts: an expired token is refused when it ends.
        lasts = row["seconds_left"] if row is not None else None
        keep = self._cache_seconds if lasts is None else min(self._cache_seconds, lasts)
        self._cache[digest] = (now + keep, found)
        if found is not None:
            await self._touch(found.id, now)
        return found

    async def _touch(self, token_id: str, now: float) -> None:
        """Record when a token was last used, at most once a minute per token."""
        if now - self._last_used.get(token_id, -120.0) < 60.0:
            return
        self._last_used[token_id] = now
        async with self._db.pool.connection() as conn:
            await conn.execute(
                "UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (token_id,)
            )
