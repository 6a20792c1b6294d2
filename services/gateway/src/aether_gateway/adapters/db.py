"""PostgreSQL: the connection pool and the schema's versioned migrations.

Migrations are the SQL files in ``aether_gateway/migrations`` named ``NNNN_<what>.sql``.
Each is applied once, in order, and recorded in ``schema_migrations``; an advisory lock
makes concurrent replicas starting together apply them one at a time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("aether.gateway.db")

# An arbitrary constant shared by every gateway replica: the key of the advisory lock
# held while migrating.
_MIGRATION_LOCK_KEY = 0x4145_5448_4552  # "AETHER"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with this package, oldest first."""
    found: list[Migration] = []
    folder = resources.files("aether_gateway") / "migrations"
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


class Database:
    """A psycopg 3 async pool over the gateway's database."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="aether-gateway"
        )

    async def open(self, wait_seconds: float = 30.0) -> None:
        """Open the pool and wait until a first connection succeeds."""
        await self.pool.open(wait=True, timeout=wait_seconds)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self, wait_seconds: float = 2.0) -> bool:
        """Whether the database answers a trivial query within ``wait_seconds``."""
        try:
            async with self.pool.connection(timeout=wait_seconds) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            log.warning("database did not answer", exc_info=True)
            return False
        return True

    async def migrate(self) -> list[int]:
        """Apply the migrations not applied yet; returns the versions applied now."""
        applied_now: list[int] = []
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version     integer PRIMARY KEY,
                    name        text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for migration in migrations():
                if migration.version in done:
                    continue
                # bytes, not str: a file's text is not a literal string to the type checker,
                # and without parameters psycopg runs its several statements as one batch.
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(migration.version)
                log.info("migration applied", extra={"version": migration.version})
        return applied_now
