"""Authentication and scopes: tokens, the bootstrap token, OIDC, and the open routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from aether.infra import free_port
from aether_events import EventPublisher

from .conftest import ADMIN_TOKEN

MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}


async def new_token(http, *scopes: str, name: str = "test") -> dict:
    response = await http.post("/admin/tokens", json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return response.json()


async def test_only_health_readiness_and_metrics_are_open(gateway_server):
    async with gateway_server.client(token=None) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).status_code == 200
        assert (await anonymous.get("/metrics")).status_code == 200
        for method, path in [
            ("GET", "/missions"),
            ("POST", "/missions"),
            ("GET", "/missions/m-x"),
            ("GET", "/missions/m-x/events"),
            ("GET", "/events"),
            ("GET", "/events/stream"),
            ("GET", "/tasks"),
            ("GET", "/agents"),
            ("GET", "/usage"),
            ("GET", "/admin/tokens"),
            ("POST", "/admin/read-model/rebuild"),
            ("GET", "/schema/openapi.json"),
        ]:
            response = await anonymous.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"].startswith("authentication required")


# Who may call each route, as docs/api.md's table says: a route added without a guard,
# or with another scope than its siblings, fails here.
OPEN = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/board"),
    ("GET", "/board/{page:path}"),
    ("GET", "/board/static/{asset:path}"),
    ("GET", "/auth/oidc"),
    ("POST", "/auth/oidc/token"),
    ("POST", "/auth/oidc/refresh"),
    ("POST", "/auth/oidc/device"),
    ("POST", "/auth/oidc/device/token"),
}
QUERY_TOKEN = {("GET", "/missions/{mission_id:str}/events"), ("GET", "/events/stream")}


def _needed(method: str, path: str) -> str:
    if path.startswith("/admin/"):
        return "admin"
    if method != "GET" or path == "/repositories/default-branch":
        return "write"
    return "read"


def test_every_route_is_open_only_as_documented_and_guarded_by_its_scope():
    from aether_gateway.api.auth import ADMIN, QUERY_TOKEN_OPT, READ, WRITE
    from aether_gateway.api.limits import READ_RATE, SIGN_IN_RATE
    from aether_gateway.app import create_routes

    by_guard = {READ: "read", WRITE: "write", ADMIN: "admin"}
    seen = set()
    for route in create_routes().routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods - {"OPTIONS", "HEAD"}:
                where = (method, route.path)
                seen.add(where)
                guards = [getattr(g, "func", g) for g in handler.resolve_guards()]
                # Every route has the read limit, app-wide, first; it counts only the
                # reads of callers with a token (test_read_limits).
                assert guards[0] is READ_RATE, where
                guards = guards[1:]
                if route.path.startswith("/schema"):
                    # The OpenAPI document: any caller with a token (the middleware).
                    assert not handler.opt.get("exclude_from_auth") and not guards, where
                    continue
                if where in OPEN:
                    assert handler.opt.get("exclude_from_auth"), where
                    # A sign-in step has the gateway ask the provider: limited per address.
                    signs_in = method == "POST" and route.path.startswith("/auth/oidc/")
                    assert guards == ([SIGN_IN_RATE] if signs_in else []), where
                    continue
                assert not handler.opt.get("exclude_from_auth"), where
                # The scope guard first; a write route's rate limit after it (test_openapi).
                assert by_guard.get(guards[0]) == _needed(*where), where
                assert all(g not in by_guard for g in guards[1:]), where
                assert bool(handler.opt.get(QUERY_TOKEN_OPT)) == (where in QUERY_TOKEN), where
    assert seen >= OPEN | QUERY_TOKEN


async def test_a_malformed_or_unknown_token_is_refused(gateway_server):
    for header in ("Basic abc", "Bearer", "Bearer aet_nosuchtoken", "Bearer not-the-admin-token"):
        async with gateway_server.client(token=None, headers={"authorization": header}) as c:
            response = await c.get("/missions")
            assert response.status_code == 401, header
            assert set(response.json()) == {"error", "detail"}


async def test_scopes_allow_what_they_name_and_everything_below(http, gateway_server):
    reader = (await new_token(http, "read", name="reader"))["token"]
    writer = (await new_token(http, "write", name="writer"))["token"]
    admin = (await new_token(http, "admin", name="admin"))["token"]

    async with gateway_server.client(token=reader) as c:
        assert (await c.get("/missions")).status_code == 200
        refused = await c.post("/missions", json=MISSION)
        assert refused.status_code == 403
        assert refused.json()["error"] == "this needs the 'write' scope"
        assert refused.json()["detail"] == {"needed": "write", "granted": ["read"]}
        assert (await c.get("/admin/tokens")).status_code == 403

    async with gateway_server.client(token=writer) as c:
        assert (await c.get("/missions")).status_code == 200
        created = await c.post("/missions", json=MISSION)
        assert created.status_code == 202
        assert (await c.get("/admin/tokens")).status_code == 403
        assert (await c.post("/admin/read-model/rebuild")).status_code == 403
        assert (
            await c.post("/admin/tokens", json={"name": "x", "scopes": ["read"]})
        ).status_code == 403

    async with gateway_server.client(token=admin) as c:
        assert (await c.get("/admin/tokens")).status_code == 200
        assert (await c.post("/missions", json=MISSION)).status_code == 202
        me = (await c.get("/auth/whoami")).json()
        assert me["name"] == "admin" and me["kind"] == "token" and me["scopes"] == ["admin"]


async def test_missions_record_who_requested_them(http, gateway_server, nc):
    writer = (await new_token(http, "write", name="ci-bot"))["token"]
    async with gateway_server.client(token=writer) as c:
        mission_id = (await c.post("/missions", json=MISSION)).json()["mission_id"]
        shown = (await c.get(f"/missions/{mission_id}")).json()
    assert shown["requested_by"] == "ci-bot"


async def test_a_revoked_token_is_refused_at_once(http, gateway_server):
    created = await new_token(http, "read")
    async with gateway_server.client(token=created["token"]) as c:
        assert (await c.get("/missions")).status_code == 200
        revoked = await http.delete(f"/admin/tokens/{created['id']}")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        refused = await c.get("/missions")
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]
    assert (await http.delete("/admin/tokens/tok_nosuchtoken")).status_code == 404
    listed = (await http.get("/admin/tokens")).json()["tokens"]
    assert created["id"] not in [t["id"] for t in listed]
    everything = (await http.get("/admin/tokens", params={"include_revoked": "true"})).json()
    assert created["id"] in [t["id"] for t in everything["tokens"]]


async def test_a_token_is_refused_once_it_expires(http, gateway_server):
    """Its lookup is cached for a few seconds, but never past the token's end."""
    import asyncio

    created = await new_token(http, "read")
    async with await psycopg.AsyncConnection.connect(gateway_server.settings.database_url) as db:
        await db.execute(
            "UPDATE api_tokens SET expires_at = now() + interval '1.5 seconds' WHERE id = %s",
            (created["id"],),
        )
        await db.commit()
    async with gateway_server.client(token=created["token"]) as c:
        assert (await c.get("/missions")).status_code == 200
        await asyncio.sleep(2.0)  # the token's own end: a wall-clock time, not an event
        refused = await c.get("/missions")
        assert refused.status_code == 401
        assert "expired" in refused.json()["error"]


async def test_an_open_event_stream_ends_once_its_token_is_revoked(make_gateway):
    """A stream opened with a token that is revoked while it is open ends within the
    gateway's re-check interval, with an event saying why, rather than running on until
    the next reconnect; its reconnect is then refused."""
    import asyncio

    from .test_sse import messages

    server = await make_gateway(sse_reauth_seconds=0.3)
    async with server.client() as admin:
        created = await new_token(admin, "read")
        async with server.client(token=created["token"]) as reader:
            async with reader.stream("GET", "/events/stream") as response:
                assert response.status_code == 200
                stream = messages(response)
                # Open and good: it is still there after a few re-checks.
                await asyncio.sleep(1.0)
                assert (await admin.delete(f"/admin/tokens/{created['id']}")).status_code == 200
                seen = []

                async def until_the_end():
                    async for message in stream:
                        seen.append(message)

                await asyncio.wait_for(until_the_end(), 10)
            ended = [m for m in seen if m.get("event") == "stream_ended"]
            assert len(ended) == 1 and "token" in ended[0]["data"]
            assert (await reader.get("/events/stream")).status_code == 401


async def test_tokens_are_stored_as_hashes_and_never_listed(http, gateway_server):
    created = await new_token(http, "write", "read")
    secret = created["token"]
    assert secret.startswith("aet_") and len(secret) > 40
    assert created["scopes"] == ["read", "write"]
    assert secret.startswith(created["prefix"])
    listed = (await http.get("/admin/tokens")).text
    assert secret not in listed
    async with await psycopg.AsyncConnection.connect(gateway_server.settings.database_url) as db:
        cur = await db.execute(
            "SELECT token_hash, prefix FROM api_tokens WHERE id = %s", (created["id"],)
        )
        token_hash, prefix = await cur.fetchone()
        cur = await db.execute("SELECT count(*) FROM api_tokens WHERE token_hash = %s", (secret,))
        assert (await cur.fetchone())[0] == 0
    assert token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert prefix == created["prefix"]


async def test_token_requests_are_validated(http):
    # One gateway for every case: a refusal changes nothing, and a gateway of its own
    # for each was nearly all of their time.
    for body, mentions in [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": ["read"], "expires_in_days": 0}, "expires_in_days"),
    ]:
        response = await http.post("/admin/tokens", json=body)
        assert response.status_code == 400, (body, response.text)
        assert mentions in response.json()["error"], (body, response.text)
    assert (await http.get("/admin/tokens")).json()["tokens"] == []  # none was made


async def test_token_creation_refuses_an_idempotency_key(http):
    # Replaying the answer would mean keeping the secret.
    response = await http.post(
        "/admin/tokens", json={"name": "x", "scopes": ["read"]}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]


async def test_event_streams_take_the_token_in_the_query_and_nothing_else_does(
    http, gateway_server, nc, script
):
    await EventPublisher(nc.jetstream()).publish(script.requested())
    reader = (await new_token(http, "read"))["token"]
    async with gateway_server.client(token=None) as anonymous:
        url = f"/missions/{script.mission_id}/events"
        params = {"access_token": reader, "until_terminal": "1"}
        async with anonymous.stream("GET", url, params=params) as response:
            assert response.status_code == 200
        refused = await anonymous.get("/missions", params={"access_token": reader})
        assert refused.status_code == 401


async def test_the_bootstrap_token_is_an_admin(gateway_server):
    async with gateway_server.client(token=ADMIN_TOKEN) as c:
        me = (await c.get("/auth/whoami")).json()
    assert me == {
        "id": "bootstrap",
        "name": "bootstrap-admin",
        "kind": "bootstrap",
        "scopes": ["admin"],
    }


async def test_a_short_bootstrap_token_is_refused_at_start(nats_url, gateway_db):
    from .conftest import gateway_settings

    with pytest.raises(ValueError, match="at least 16"):
        gateway_settings(nats_url, gateway_db, admin_token="short")


# --- OIDC --------------------------------------------------------------------------------


class Issuer:
    """An identity provider's signing key and JWKS, served over HTTP."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="test-key", use="sig", alg="RS256")
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"

    def token(self, key=None, **claims: object) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://idp.test",
            "aud": "aether",
            "sub": "alice",
            "preferred_username": "alice@example.test",
            "iat": now,
            "exp": now + 300,
            "scope": "openid aether:write",
            **claims,
        }
        present = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(present, key or self.key, algorithm="RS256", headers={"kid": "test-key"})

    def unsigned(self, header: dict[str, object], key: bytes | None = None) -> str:
        """A token of this issuer's claims with ``header`` as it is: no signature, or an
        HMAC-SHA256 one made with ``key`` (``alg`` is not checked here)."""
        now = int(time.time())
        claims = {"iss": "https://idp.test", "aud": "aether", "sub": "mallory"}
        claims |= {"iat": now, "exp": now + 300, "scope": "aether:admin"}
        signed = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = hmac.new(key, signed.encode(), hashlib.sha256).digest() if key else b""
        return f"{signed}.{_b64(signature)}"

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def stop(self) -> None:
        self.server.shutdown()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


async def test_oidc_tokens_are_verified_against_the_jwks(make_gateway, issuer):
    from aether_gateway.adapters.oidc import OidcSettings

    server = await make_gateway(
        oidc=OidcSettings(jwks_url=issuer.url, issuer="https://idp.test", audience="aether")
    )
    async with server.client(token=issuer.token()) as alice:
        me = (await alice.get("/auth/whoami")).json()
        assert me == {
            "id": "oidc:alice",
            "name": "alice@example.test",
            "kind": "oidc",
            "scopes": ["write"],
        }
        assert (await alice.post("/missions", json=MISSION)).status_code == 202
        assert (await alice.get("/admin/tokens")).status_code == 403

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "expired": issuer.token(exp=int(time.time()) - 120),
        "wrong issuer": issuer.token(iss="https://evil.test"),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong signature": issuer.token(key=other_key),
        "not yet valid": issuer.token(nbf=int(time.time()) + 600),
        "issued in the future": issuer.token(iat=int(time.time()) + 600),
        "no expiry": issuer.token(exp=None),
        "alg none": issuer.unsigned({"alg": "none", "kid": "test-key"}),
        # The classic confusion: HMAC keyed with the provider's public key, which anyone
        # can fetch from the JWKS.
        "HMAC with the public key": issuer.unsigned(
            {"alg": "HS256", "kid": "test-key", "typ": "JWT"}, issuer.public_pem()
        ),
        "unknown key id": jwt.encode(
            {"iss": "https://idp.test", "aud": "aether", "sub": "x", "exp": time.time() + 60},
            issuer.key,
            algorithm="RS256",
            headers={"kid": "another-key"},
        ),
        "no key id": jwt.encode(
            {"iss": "https://idp.test", "aud": "aether", "sub": "x", "exp": time.time() + 60},
            issuer.key,
            algorithm="RS256",
        ),
    }
    reasons = {
        "not yet valid": "not yet valid (nbf)",
        "issued in the future": "not yet valid (iat)",
        "no expiry": 'missing the "exp" claim',
        "alg none": "alg value is not allowed",
        "HMAC with the public key": "alg value is not allowed",
        "unknown key id": "Unable to find a signing key",
        "no key id": "Unable to find a signing key",
    }
    for why, token in refused.items():
        async with server.client(token=token) as c:
            response = await c.get("/missions")
            assert response.status_code == 401, why
            assert "OIDC" in response.json()["error"], why
            assert reasons.get(why, "") in response.json()["error"], why

    async with server.client(token=issuer.token(scope="openid profile")) as c:
        response = await c.get("/missions")
        assert response.status_code == 403
        assert response.json()["error"] == "the OIDC token grants no Aether scope"


async def test_token_listing_validates_its_query(http):
    response = await http.get("/admin/tokens", params={"include_revoked": "perhaps"})
    assert response.status_code == 400
    assert "include_revoked" in response.json()["error"]
