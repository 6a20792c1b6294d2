"""Opaque OIDC access tokens, checked at a real provider's introspection endpoint
(RFC 7662: authlib's endpoint added to the test provider), through the gateway's HTTP
API: roles and audiences as for JWTs, inactive and foreign tokens refused, a provider
that is down answered with 503, and the gateway's cache of the provider's answers
counted at the provider."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from oidc_provider_mock import User

from aether_gateway.adapters.introspection import AnswerCache
from aether_gateway.adapters.oidc import OidcSettings
from aether_gateway.config import GatewaySettings
from aether_runtime import tls
from aether_runtime.settings import EXIT_CONFIG

from .conftest import GatewayServer
from .oidc_provider import Provider
from .test_oidc import Browser, challenge_of

GATEWAY_CLIENT = "aether-gateway"
GATEWAY_SECRET = "the-gateways-secret"
CLI_CLIENT = "aether-cli"
MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}
USERS = [
    User(sub="ada", claims={"roles": ["aether-admin"], "preferred_username": "ada"}),
    User(sub="otto", claims={"roles": ["aether-operator"], "email": "otto@x.test"}),
    User(sub="rita", claims={"roles": ["aether-read-only"]}),
    User(sub="nobody", claims={"roles": ["staff"]}),
]
MakeGateway = Callable[..., Awaitable[GatewayServer]]


def introspecting(auth_method: str = "client_secret_basic", **options: Any) -> Provider:
    """A provider with an introspection endpoint, the gateway's confidential client, and
    the CLI's public client whose access tokens name the API's audience."""
    provider = Provider(USERS, introspection=auth_method, **options)
    provider.register_confidential_client(GATEWAY_CLIENT, GATEWAY_SECRET, auth_method=auth_method)
    provider.audiences[CLI_CLIENT] = ["aether-api"]
    return provider


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = introspecting()
    yield server
    server.stop()


def oidc_settings(provider: Provider, **overrides: Any) -> OidcSettings:
    fields: dict[str, Any] = {
        "issuer": provider.issuer,
        "client_id": GATEWAY_CLIENT,
        "client_secret": GATEWAY_SECRET,
        "audience": "aether-api",
        "introspection": True,
        "jwks_cooldown_seconds": 0,
        **overrides,
    }
    return OidcSettings(**fields)


async def access_token(
    provider: Provider, sub: str, *, client_id: str = CLI_CLIENT, secret: str = ""
) -> str:
    """An access token the provider issues to ``client_id`` (authenticated with
    ``secret`` when it is confidential) for ``sub``: the CLI's sign-in, without the CLI.
    Opaque, as authlib issues them."""
    verifier = secrets.token_urlsafe(48)
    redirect = "http://127.0.0.1:9/callback"
    code = await provider.authorize(
        sub=sub,
        client_id=client_id,
        redirect_uri=redirect,
        nonce=secrets.token_urlsafe(8),
        challenge=challenge_of(verifier),
    )
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "code_verifier": verifier,
        "client_id": client_id,
    }
    async with httpx.AsyncClient(verify=tls.shared()) as http:
        response = await http.post(
            f"{provider.issuer}/oauth2/token",
            data=form,
            auth=httpx.BasicAuth(client_id, secret) if secret else httpx.USE_CLIENT_DEFAULT,
        )
    token = str(response.json()["access_token"])
    assert "." not in token  # not a JWT: only introspection can tell what it is
    return token


@pytest.mark.parametrize(
    ("sub", "scopes", "name"),
    [("ada", ["admin"], "ada"), ("otto", ["write"], "otto@x.test"), ("rita", ["read"], "rita")],
)
async def test_an_opaque_access_token_is_taken_with_the_scope_of_its_roles(
    provider: Provider, make_gateway: MakeGateway, sub: str, scopes: list[str], name: str
):
    gateway = await make_gateway(oidc=oidc_settings(provider))
    token = await access_token(provider, sub)
    async with gateway.client(token=token) as cli:
        whoami = await cli.get("/auth/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["id"] == f"oidc:{sub}"
        assert whoami.json()["name"] == name
        assert whoami.json()["scopes"] == scopes
        submitted = await cli.post("/missions", json=MISSION)
        assert submitted.status_code == (403 if scopes == ["read"] else 202), submitted.text
        tokens = await cli.get("/admin/tokens")
        assert tokens.status_code == (200 if scopes == ["admin"] else 403)


async def test_an_account_without_a_role_is_forbidden_and_jwts_are_not_introspected(
    provider: Provider, make_gateway: MakeGateway
):
    gateway = await make_gateway(oidc=oidc_settings(provider))
    async with gateway.client(token=await access_token(provider, "nobody")) as cli:
        response = await cli.get("/missions")
    assert response.status_code == 403
    assert response.json()["error"] == "the OIDC token grants no Aether scope"
    # A token that looks like a JWT goes the JWT path: the provider is not asked.
    asked = provider.introspections
    signed_in = await Browser(provider, gateway).sign_in("otto")
    id_token = signed_in.json()["token"]
    assert id_token.count(".") == 2
    async with gateway.client(token=id_token) as board:
        assert (await board.get("/auth/whoami")).json()["scopes"] == ["write"]
    assert provider.introspections == asked


async def test_an_unknown_or_revoked_token_is_refused(
    provider: Provider, make_gateway: MakeGateway
):
    # No cache: the revocation is seen by the next request.
    gateway = await make_gateway(oidc=oidc_settings(provider, introspection_cache_seconds=0))
    token = await access_token(provider, "otto")
    async with gateway.client(token=token) as cli:
        assert (await cli.get("/missions")).status_code == 200
        provider.revoke("otto")
        response = await cli.get("/missions")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="aether"'
    assert response.json()["error"] == "the OIDC token is not valid: the token is not active"
    async with gateway.client(token=secrets.token_urlsafe(30)) as stranger:
        response = await stranger.get("/missions")
    assert response.status_code == 401
    assert response.json()["error"] == "the OIDC token is not valid: the token is not active"
    # A token longer than any provider's is refused without asking it.
    asked = provider.introspections
    async with gateway.client(token="x" * 5000) as stranger:
        response = await stranger.get("/missions")
    assert response.status_code == 401
    assert response.json()["error"] == "the OIDC token is not valid: the token is too long"
    assert provider.introspections == asked


async def test_a_token_issued_for_another_audience_is_refused(
    provider: Provider, make_gateway: MakeGateway
):
    gateway = await make_gateway(oidc=oidc_settings(provider))
    # Another of the provider's clients, whose tokens name neither the API's audience nor
    # the gateway's client.
    foreign = await access_token(provider, "ada", client_id="some-other-app")
    async with gateway.client(token=foreign) as other:
        response = await other.get("/missions")
    assert response.status_code == 401
    assert response.json()["error"] == "the OIDC token is not valid: Audience doesn't match"
    # A token issued to the gateway's own client is Aether's, as its ID tokens are.
    own = await access_token(provider, "ada", client_id=GATEWAY_CLIENT, secret=GATEWAY_SECRET)
    async with gateway.client(token=own) as mine:
        assert (await mine.get("/auth/whoami")).json()["scopes"] == ["admin"]


async def test_any_audience_does_not_widen_a_gateway_with_a_client_id(
    provider: Provider, make_gateway: MakeGateway
):
    """As for JWTs, ``AETHER_OIDC_ANY_AUDIENCE`` has no effect once a client id is set,
    and introspection always has one (the client it authenticates as): a token of
    another client is still refused."""
    settings = oidc_settings(provider, audience=None, any_audience=True)
    gateway = await make_gateway(oidc=settings)
    foreign = await access_token(provider, "ada", client_id="some-other-app")
    async with gateway.client(token=foreign) as other:
        response = await other.get("/missions")
    assert response.status_code == 401
    assert response.json()["error"] == "the OIDC token is not valid: Audience doesn't match"


async def test_the_answer_is_cached_and_never_past_the_tokens_expiry(make_gateway: MakeGateway):
    provider = introspecting(token_max_age=timedelta(seconds=6))
    try:
        # A long cache: only the token's own expiry can end its entry.
        gateway = await make_gateway(
            oidc=oidc_settings(provider, introspection_cache_seconds=300, leeway_seconds=0)
        )
        token = await access_token(provider, "otto")
        issued = time.time()
        async with gateway.client(token=token) as cli:
            for _ in range(5):
                assert (await cli.get("/missions")).status_code == 200
            assert provider.introspections == 1
            other = await access_token(provider, "rita")
            async with gateway.client(token=other) as rita:
                assert (await rita.get("/auth/whoami")).json()["scopes"] == ["read"]
            assert provider.introspections == 2
            # Revoked at the provider: the cached answer still holds, for at most the
            # cache's time (here until the token's expiry).
            provider.revoke("otto")
            assert (await cli.get("/missions")).status_code == 200
            assert provider.introspections == 2
            await asyncio.sleep(max(0.0, issued + 6.5 - time.time()))  # the token expires
            response = await cli.get("/missions")
        assert response.status_code == 401
        assert response.json()["error"] == "the OIDC token is not valid: the token is not active"
        assert provider.introspections == 3
    finally:
        provider.stop()


async def test_a_short_cache_asks_the_provider_again(provider: Provider, make_gateway: MakeGateway):
    gateway = await make_gateway(oidc=oidc_settings(provider, introspection_cache_seconds=3))
    token = await access_token(provider, "otto")
    async with gateway.client(token=token) as cli:
        assert (await cli.get("/missions")).status_code == 200
        assert (await cli.get("/missions")).status_code == 200
        assert provider.introspections == 1
        await asyncio.sleep(3.2)  # the cache's time passes
        provider.revoke("otto")
        response = await cli.get("/missions")
    assert response.status_code == 401
    assert provider.introspections == 2


async def test_a_provider_that_is_down_answers_503_not_401(
    provider: Provider, make_gateway: MakeGateway
):
    gateway = await make_gateway(oidc=oidc_settings(provider))
    known = await access_token(provider, "otto")
    new = await access_token(provider, "ada")
    async with gateway.client(token=known) as cli:
        assert (await cli.get("/missions")).status_code == 200
    provider.stop()
    async with gateway.client(token=new) as cli:
        response = await cli.get("/missions")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "the identity provider cannot check the token; try again"
    # What it said before still holds; API tokens do not need it.
    async with gateway.client(token=known) as cli:
        assert (await cli.get("/missions")).status_code == 200
    async with gateway.client() as admin:
        assert (await admin.get("/missions")).status_code == 200


async def test_client_secret_post_when_the_provider_takes_only_that(make_gateway: MakeGateway):
    provider = introspecting("client_secret_post")
    try:
        gateway = await make_gateway(oidc=oidc_settings(provider))
        token = await access_token(provider, "otto")
        async with gateway.client(token=token) as cli:
            whoami = await cli.get("/auth/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["scopes"] == ["write"]
    finally:
        provider.stop()


async def test_a_wrong_client_secret_is_the_gateways_fault_not_the_callers(
    provider: Provider, make_gateway: MakeGateway
):
    gateway = await make_gateway(oidc=oidc_settings(provider, client_secret="not-the-secret"))
    async with gateway.client(token=await access_token(provider, "otto")) as cli:
        response = await cli.get("/missions")
    assert response.status_code == 503
    assert provider.introspections == 1  # asked, and refused as a client


async def test_without_introspection_an_opaque_token_is_refused_unasked(
    provider: Provider, make_gateway: MakeGateway
):
    gateway = await make_gateway(oidc=oidc_settings(provider, introspection=False))
    async with gateway.client(token=await access_token(provider, "otto")) as cli:
        response = await cli.get("/missions")
    assert response.status_code == 401
    assert response.json()["error"] == "the token is not valid"
    assert provider.introspections == 0


# --- settings -------------------------------------------------------------------------


def test_introspection_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("AETHER_OIDC_ISSUER", "https://idp.test")
    monkeypatch.setenv("AETHER_OIDC_CLIENT_ID", "aether")
    monkeypatch.setenv("AETHER_OIDC_CLIENT_SECRET", "s")
    oidc = GatewaySettings.from_env().oidc
    assert oidc is not None and not oidc.introspects
    monkeypatch.setenv("AETHER_OIDC_INTROSPECTION_URL", "https://idp.test/introspect")
    monkeypatch.setenv("AETHER_OIDC_INTROSPECTION_CACHE_SECONDS", "10")
    monkeypatch.setenv("AETHER_OIDC_INTROSPECTION_CACHE_SIZE", "50")
    oidc = GatewaySettings.from_env().oidc
    assert oidc is not None and oidc.introspects
    assert oidc.introspection_url == "https://idp.test/introspect"
    assert (oidc.introspection_cache_seconds, oidc.introspection_cache_size) == (10, 50)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("AETHER_OIDC_INTROSPECTION", "1"), ("AETHER_OIDC_INTROSPECTION_URL", "http://idp.test/i")],
)
def test_introspection_without_a_client_secret_stops_the_gateway(setting: str, value: str):
    env = {key: val for key, val in os.environ.items() if not key.startswith("AETHER_")}
    env |= {
        "NATS_URL": "nats://127.0.0.1:9",
        "PORT": "0",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "AETHER_OIDC_ISSUER": "http://127.0.0.1:9",
        "AETHER_OIDC_CLIENT_ID": "aether",
        setting: value,
    }
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "aether_gateway"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started with introspection and no client secret")
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == EXIT_CONFIG, ran.stderr[-2000:]
    assert len(lines) == 1, ran.stderr[-2000:]
    assert lines[0].startswith(
        "gateway: cannot start: OIDC token introspection needs AETHER_OIDC_CLIENT_SECRET"
    )


# --- the cache, pure ------------------------------------------------------------------


def test_the_cache_keeps_an_answer_for_its_time_or_until_the_token_expires():
    cache: AnswerCache[str] = AnswerCache(seconds=30, size=10)
    cache.put("a", "ada", 100.0, expires_in=None)
    cache.put("b", "bob", 100.0, expires_in=5)
    cache.put("c", "cid", 100.0, expires_in=-1)  # already expired: not kept
    assert cache.get("a", 129.9) == "ada"
    assert cache.get("a", 130.0) is None
    assert cache.get("b", 104.9) == "bob"
    assert cache.get("b", 105.0) is None
    assert cache.get("c", 100.0) is None
    off = AnswerCache[str](seconds=0, size=10)
    off.put("a", "ada", 0.0, expires_in=None)
    assert off.get("a", 0.0) is None


def test_the_cache_is_bounded_and_drops_the_least_recently_used():
    cache: AnswerCache[int] = AnswerCache(seconds=30, size=3)
    for number, key in enumerate("abc"):
        cache.put(key, number, 0.0, expires_in=None)
    assert cache.get("a", 1.0) == 0  # used: "b" is now the oldest
    cache.put("d", 3, 1.0, expires_in=None)
    assert len(cache) == 3
    assert cache.get("b", 1.0) is None
    assert [cache.get(key, 1.0) for key in "acd"] == [0, 2, 3]
