"""PostgreSQL: the connection pool and the schema's versioned migrations.

Migrations are the SQL files in ``aether_gateway/migrations`` named ``NNNN_<what>.sql``.
Each is applied once, in order, and recorded in ``schema_migrations``; an advisory lock
makes concurrent replicas starting together apply them one at a time.

A migration that adds what the read model fills from events says so with a line
``-- refold: <why>``: rows folded before it lack what it added, so the read model is
folded again from the streams (``fold_version``, and ``refold`` at the gateway's start).
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
_REFOLD_MARKER = re.compile(r"^-- refold:", re.M)


async def _commits_unsynced(conn: AsyncConnection) -> None:
    await conn.execute("SET synchronous_commit TO off")
    await conn.commit()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def refold(self) -> bool:
        """Whether rows the read model folded before this migration must be folded again."""
        return _REFOLD_MARKER.search(self.sql) is not None


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


def fold_version() -> int:
    """The read model's fold version this build folds by: the latest migration marked
    ``-- refold:`` (0 when none is). Rows stamped with an older one are folded again."""
    return max((m.version for m in migrations() if m.refold), default=0)


class Database:
    """Two psycopg 3 async pools over the gateway's database: ``pool`` for everything,
    and ``folds`` for the read model's live folds, whose commits do not wait for the
    disk (``synchronous_commit`` off).

    A fold commits its rows with the stream position they reach, in one transaction, so
    a commit the server loses in a crash of its own (at most a few hundred milliseconds
    of them; a crash of the gateway loses nothing) takes the position back with the rows,
    and the events are folded again from the stream. Waiting for the disk at every commit
    (a write-ahead log flush for each run of events) bought nothing the stream does not
    keep, and each flush held up the other processes' file creations on the same disk.
    Everything else (tokens, idempotency keys, the rebuild) commits as before."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="aether-gateway"
        )
        # Two: the mission stream's folds and the telemetry's, each one at a time.
        self.folds: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=2,
            open=False,
            name="aether-gateway-folds",
            configure=_commits_unsynced,
        )

    async def open(self, wait_seconds: float = 30.0) -> None:
        """Open the pools and wait until a first connection of each succeeds."""
        await self.pool.open(wait=True, timeout=wait_seconds)
        await self.folds.open(wait=True, timeout=wait_seconds)

    async def close(self) -> None:
        await self.folds.close()
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
