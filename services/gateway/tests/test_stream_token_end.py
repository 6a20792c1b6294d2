"""An event stream ends the moment its token does: revoked on any replica (PostgreSQL
LISTEN/NOTIFY, and a re-check of every open stream after the listener reconnects), or
expired (at the token's own expiry). Every gateway here checks tokens again only every
600 s, so only these paths can end the streams in time."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aether.infra import EmbeddedPostgres
from aether_gateway.adapters.oidc import OidcSettings

from .conftest import GatewayServer, eventually, gateway_settings
from .test_auth import issuer, new_token  # noqa: F401 (``issuer`` is a fixture)
from .test_oidc_introspection import access_token, introspecting, oidc_settings
from .test_sse import messages

# Longer than any test: a stream that ends did not end at a periodic check.
NEVER = 600.0


class OpenStream:
    """One event stream, read in the background: its messages, and when it ended."""

    def __init__(self, server: GatewayServer, token: str) -> None:
        self._client = server.client(token=token)
        self.seen: list[dict[str, str]] = []
        self.ended_at: float | None = None
        self.opened_at = 0.0
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OpenStream:
        self.opened_at = time.time()
        self._task = asyncio.create_task(self._read())
        # Open and answering: the first keep-alive (every 0.5 s in the tests' settings).
        await asyncio.wait_for(self._first.wait(), 30)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    async def _read(self) -> None:
        async with self._client.stream("GET", "/events/stream") as response:
            assert response.status_code == 200, await response.aread()
            async for message in messages(response):
                self.seen.append(message)
                self._first.set()
        self.ended_at = time.time()
        self._first.set()

    async def end(self, within: float) -> str:
        """The reason the stream's last ``stream_ended`` event gives, once it has ended."""
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), within)
        ended = [m for m in self.seen if m.get("event") == "stream_ended"]
        assert len(ended) == 1, self.seen
        assert self.seen[-1] is ended[0]
        reason: str = json.loads(ended[0]["data"])["reason"]
        return reason


async def listening(server: GatewayServer) -> None:
    assert server.gateway is not None
    await asyncio.wait_for(server.gateway.revocations.connected.wait(), 30)


async def test_a_token_revoked_on_one_replica_ends_its_streams_on_another_at_once(make_gateway):
    a = await make_gateway(sse_reauth_seconds=NEVER)
    b = await make_gateway(sse_reauth_seconds=NEVER)
    await listening(b)
    async with a.client() as admin:
        created = await new_token(admin, "read")
    async with b.client(token=created["token"]) as reader:
        # Known to replica B (and in its token cache) before the revocation.
        assert (await reader.get("/missions")).status_code == 200
        async with OpenStream(b, created["token"]) as stream, a.client() as admin:
            revoked_at = time.monotonic()
            assert (await admin.delete(f"/admin/tokens/{created['id']}")).status_code == 200
            assert await stream.end(within=5.0) == "token revoked"
            took = time.monotonic() - revoked_at
        # Nor does B's cache let the token in any more.
        refused = await reader.get("/missions")
        assert refused.status_code == 401, refused.text
    assert took < 2.0, f"the stream on the other replica ended {took:.2f}s after revocation"


async def test_an_oidc_token_ends_its_stream_when_a_request_with_it_is_first_refused(
    make_gateway,
    issuer,  # noqa: F811
):
    """Past its ``exp``, within the clock-skew leeway, the token still lets requests in,
    and its stream stays open; at ``exp`` plus the leeway both end, by one rule."""
    leeway = 2.0
    server = await make_gateway(
        sse_reauth_seconds=NEVER,
        oidc=OidcSettings(
            jwks_url=issuer.url, issuer="https://idp.test", audience="aether", leeway_seconds=leeway
        ),
    )
    expires = int(time.time()) + 2
    token = issuer.token(exp=expires)
    async with OpenStream(server, token) as stream, server.client(token=token) as holder:
        await asyncio.sleep(max(0.0, expires + 0.3 - time.time()))  # the exp has passed
        within = await holder.get("/auth/whoami")
        still_open = stream.ended_at is None
        assert await stream.end(within=10.0) == "token expired"
        after = await holder.get("/auth/whoami")
    assert within.status_code == 200, within.text
    assert still_open
    assert after.status_code == 401, after.text
    assert stream.ended_at is not None
    # At the exp plus the leeway: not before it, and not at a later check.
    ended = stream.ended_at - expires
    assert leeway - 0.05 <= ended < leeway + 1.5, ended


async def test_an_opaque_oidc_token_ends_its_stream_at_the_exp_introspection_gave(
    make_gateway,
):
    provider = introspecting(token_max_age=timedelta(seconds=3))
    try:
        server = await make_gateway(
            sse_reauth_seconds=NEVER, oidc=oidc_settings(provider, leeway_seconds=2)
        )
        asked = time.time()
        token = await access_token(provider, "rita")
        async with OpenStream(server, token) as stream:
            assert await stream.end(within=10.0) == "token expired"
        said = provider.introspections
    finally:
        provider.stop()
    assert said == 1  # the end came from the exp the provider gave, not from asking again
    assert stream.ended_at is not None and stream.seen
    # The provider's exp is whole seconds (rounded down): two seconds of leeway past it,
    # at least 2 + 2 s after the token was asked for.
    assert 3.95 <= stream.ended_at - asked < 6.5, stream.ended_at - asked


async def test_an_api_token_ends_its_stream_when_it_expires(make_gateway):
    server = await make_gateway(sse_reauth_seconds=NEVER)
    async with server.client() as admin:
        created = await new_token(admin, "read")
    async with await psycopg.AsyncConnection.connect(server.settings.database_url) as db:
        cur = await db.execute(
            "UPDATE api_tokens SET expires_at = now() + interval '2 seconds' WHERE id = %s"
            " RETURNING extract(epoch FROM expires_at)::float8",
            (created["id"],),
        )
        row = await cur.fetchone()
        assert row is not None
        expires = row[0]
        await db.commit()
    async with OpenStream(server, created["token"]) as stream:
        assert await stream.end(within=10.0) == "token expired"
    assert stream.ended_at is not None
    assert expires - 0.05 <= stream.ended_at < expires + 1.5, stream.ended_at - expires


# --- a database restart --------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, to stop and start again (the session's serves
    every other test). Its data directory is not under pytest's temporary root (see
    ``tests/test_embedded_postgres.py``)."""
    base = Path(tempfile.mkdtemp(prefix="aether-test-pg-revoke-"))
    server = EmbeddedPostgres(base / "postgres").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def servers() -> AsyncIterator[list[GatewayServer]]:
    """Gateways to stop before the database they use is (``make_gateway`` stops its own
    only after every fixture of the test)."""
    started: list[GatewayServer] = []
    try:
        yield started
    finally:
        for server in started:
            await server.stop()


async def test_a_revocation_missed_while_the_database_restarts_still_ends_the_stream(
    nc, nats_url, broker_read_api, own_postgres, servers
):
    """Replica B's listener is down across the restart (its role may not log in) while
    replica A revokes the token: B misses the notification, and the re-check of its
    open streams once it listens again ends the stream."""
    su_password = "superuser-password-0123"
    url_b = own_postgres.provision("aether", "role-password-0123", su_password)
    url_a = make_conninfo(
        **{**conninfo_to_dict(url_b), "user": "postgres", "password": su_password}
    )
    url_admin = make_conninfo(**{**conninfo_to_dict(url_a), "dbname": "postgres"})

    async def role_may_log_in(allowed: bool) -> None:
        async with await psycopg.AsyncConnection.connect(url_admin, autocommit=True) as conn:
            await conn.execute("ALTER ROLE aether " + ("LOGIN" if allowed else "NOLOGIN"))

    async def gateway(url: str) -> GatewayServer:
        settings = gateway_settings(
            nats_url,
            url,
            broker_url=broker_read_api.url,
            broker_token=broker_read_api.token,
            sse_reauth_seconds=NEVER,
        )
        server = GatewayServer(settings)
        servers.append(server)
        await server.start()
        return server

    # B first: it migrates, as the role that owns the database.
    b = await gateway(url_b)
    a = await gateway(url_a)
    await listening(b)
    assert b.gateway is not None
    async with a.client() as admin:
        created = await new_token(admin, "read")

    async with OpenStream(b, created["token"]) as stream:
        await role_may_log_in(False)
        assert own_postgres.pid is not None
        os.kill(own_postgres.pid, signal.SIGINT)  # a fast shutdown: every session ends
        await eventually(lambda: _gone(own_postgres), timeout=30, what="postgres stopped")
        await asyncio.to_thread(own_postgres.restart)
        await eventually(
            lambda: _true(not b.gateway.revocations.connected.is_set()),
            timeout=30,
            what="B's listener to lose its connection",
        )

        async def revoked_on_a() -> bool:
            async with a.client() as admin:
                response = await admin.delete(f"/admin/tokens/{created['id']}")
            return response.status_code == 200  # a first try may meet a broken connection

        await eventually(revoked_on_a, timeout=30, what="the revocation on A")
        reconnects = b.gateway.revocations.reconnects
        assert not b.gateway.revocations.connected.is_set()  # B could not have heard
        assert stream.ended_at is None
        await role_may_log_in(True)
        assert await stream.end(within=20.0) == "token no longer valid"
        assert b.gateway.revocations.reconnects == reconnects + 1


async def _gone(server: EmbeddedPostgres) -> bool:
    return not server.running()


async def _true(value: bool) -> bool:
    return value
