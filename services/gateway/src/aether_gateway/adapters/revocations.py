"""Revocations learnt at once, on every replica: PostgreSQL's LISTEN/NOTIFY.

A revocation sends ``NOTIFY`` on ``REVOKED_CHANNEL`` in its own transaction
(``TokenStore.revoke``), so the notification goes out when it commits and never for one
rolled back. Each replica holds one connection of its own (not the pool's) that LISTENs
on the channel: a notification drops the token cache and ends the event streams opened
here with that token (``OpenStreams``).

A notification sent while the connection is down (the database restarting, the network
away) is lost. So the listener connects again, with a backoff, and once it LISTENs
again every open stream checks its token at once: whatever was revoked meanwhile ends
its streams then. The streams' own periodic check (``AETHER_SSE_REAUTH_SECONDS``) stays
the backstop behind both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg import AsyncConnection, sql

from aether_gateway.adapters.db import Database
from aether_gateway.adapters.tokens import REVOKED_CHANNEL, TokenStore

log = logging.getLogger("aether.gateway.revocations")


@dataclass(eq=False)
class Watched:
    """One open event stream, as the revocations see it. ``wake`` makes it look at
    ``revoked`` and ``recheck`` now rather than at its next event."""

    token_id: str | None
    wake: Callable[[], None]
    revoked: bool = False
    recheck: bool = False


@dataclass
class OpenStreams:
    """The event streams open on this replica, by the API token each was opened with."""

    _by_token: dict[str, set[Watched]] = field(default_factory=dict)
    _all: set[Watched] = field(default_factory=set)

    def watch(self, token_id: str | None, wake: Callable[[], None]) -> Watched:
        """Register a stream (``token_id``: its API token's id, None for any other)."""
        watched = Watched(token_id, wake)
        self._all.add(watched)
        if token_id is not None:
            self._by_token.setdefault(token_id, set()).add(watched)
        return watched

    def forget(self, watched: Watched) -> None:
        self._all.discard(watched)
        if watched.token_id is not None:
            same = self._by_token.get(watched.token_id)
            if same is not None:
                same.discard(watched)
                if not same:
                    del self._by_token[watched.token_id]

    def revoked(self, token_id: str) -> int:
        """End the streams opened with ``token_id``; returns how many there were."""
        found = self._by_token.get(token_id, set())
        for watched in found:
            watched.revoked = True
            watched.wake()
        return len(found)

    def recheck_all(self) -> None:
        """Have every open stream check its token now (revocations may have been missed)."""
        for watched in self._all:
            watched.recheck = True
            watched.wake()

    def __len__(self) -> int:
        return len(self._all)


class RevocationListener:
    """LISTENs for revocations on a connection of its own, connecting again after it
    breaks. ``connected`` is set while it listens (and ``reconnects`` counts the times
    it began to listen again after a break)."""

    def __init__(
        self,
        db: Database,
        tokens: TokenStore,
        streams: OpenStreams,
        *,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 5.0,
        probe_seconds: float = 10.0,
    ) -> None:
        self._db = db
        self._tokens = tokens
        self._streams = streams
        self._retry_seconds = retry_seconds
        self._max_retry_seconds = max_retry_seconds
        self._probe_seconds = probe_seconds
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="revocation-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self._retry_seconds
        listened = False
        while True:
            try:
                async with await AsyncConnection.connect(
                    self._db.url, autocommit=True, connect_timeout=10
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(REVOKED_CHANNEL)))
                    delay = self._retry_seconds
                    self.connected.set()
                    if listened:
                        self.reconnects += 1
                        log.info("listening for revocations again: open streams re-checked")
                    listened = True
                    # Listening from here on: whatever was revoked before is in the
                    # database for the checks to find (at a first start, nothing is open).
                    # The pool's connections broken by a restart are replaced first, so
                    # the checks do not fail on them.
                    self._tokens.forget()
                    await self._db.pool.check()
                    self._streams.recheck_all()
                    await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "revocation listener lost its connection",
                    extra={"error": repr(error), "retry_seconds": delay},
                )
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_seconds)

    async def _listen(self, conn: AsyncConnection) -> None:
        while True:
            async for notice in conn.notifies(timeout=self._probe_seconds):
                self._tokens.forget()
                ended = self._streams.revoked(notice.payload)
                log.info("token revoked", extra={"token_id": notice.payload[:64], "streams": ended})
            # Quiet for a while: a connection whose server went away without a word (a
            # network cut) is found out by a query, not by waiting for notifications.
            await asyncio.wait_for(conn.execute("SELECT 1"), self._probe_seconds)
