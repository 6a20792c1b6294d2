"""OIDC against a real provider (authlib's authorization server, run by
``oidc-provider-mock`` on this machine): discovery, the code exchange with PKCE and a
nonce, role mapping, and the checks on every bearer JWT (signature, key rotation, issuer,
audience, expiry)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from oidc_provider_mock import User

from aether.infra import free_port
from aether_gateway.adapters.oidc import OidcSettings
from aether_gateway.config import GatewaySettings
from aether_gateway.domain.auth import claim_at, role_names, scopes_for_roles
from aether_runtime.settings import EXIT_CONFIG, SettingsError

from .conftest import GatewayServer
from .oidc_provider import Provider

CLIENT_ID = "aether-board"
MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}
USERS = [
    User(sub="ada", claims={"roles": ["aether-admin"], "preferred_username": "ada"}),
    User(sub="otto", claims={"roles": ["aether-operator", "staff"], "email": "otto@x.test"}),
    User(sub="rita", claims={"roles": ["aether-read-only"]}),
    User(sub="nobody", claims={"roles": ["staff"]}),
]


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = Provider(USERS)
    yield server
    server.stop()


def settings_for(provider: Provider, **overrides: Any) -> OidcSettings:
    fields: dict[str, Any] = {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "audience": "aether-api",
        "jwks_cooldown_seconds": 0,
        **overrides,
    }
    return OidcSettings(**fields)


class Browser:
    """What the board does in a browser, without one: PKCE verifier, nonce, the
    provider's page, then the gateway's code exchange."""

    def __init__(self, provider: Provider, gateway: GatewayServer) -> None:
        self.provider = provider
        self.gateway = gateway

    async def sign_in(
        self, sub: str, *, nonce: str | None = None, verifier: str | None = None
    ) -> Any:
        async with self.gateway.client(token=None) as anonymous:
            config = (await anonymous.get("/auth/oidc")).json()
            assert config["enabled"] is True
            kept_verifier = secrets.token_urlsafe(48)
            kept_nonce = secrets.token_urlsafe(16)
            code = await self.provider.authorize(
                sub=sub,
                client_id=config["client_id"],
                redirect_uri=config["redirect_uri"],
                nonce=kept_nonce,
                challenge=challenge_of(kept_verifier),
            )
            return await anonymous.post(
                "/auth/oidc/token",
                json={
                    "code": code,
                    "code_verifier": verifier or kept_verifier,
                    "nonce": nonce or kept_nonce,
                },
            )


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
async def signed(
    provider: Provider, make_gateway: Callable[..., Awaitable[GatewayServer]]
) -> Browser:
    return Browser(provider, await make_gateway(oidc=settings_for(provider)))


async def test_without_oidc_the_board_is_told_tokens_only(gateway_server: GatewayServer):
    async with gateway_server.client(token=None) as anonymous:
        assert (await anonymous.get("/auth/oidc")).json() == {
            "enabled": False,
            "issuer": "",
            "authorization_endpoint": "",
            "end_session_endpoint": "",
            "client_id": "",
            "scopes": [],
            "redirect_uri": "",
            "confidential": False,
            "device": False,
        }
        response = await anonymous.post(
            "/auth/oidc/token", json={"code": "c", "code_verifier": "v" * 43, "nonce": "n"}
        )
        assert response.status_code == 404
        assert response.json()["error"] == "OIDC sign-in is not configured"


async def test_the_board_is_given_the_discovered_endpoints(signed: Browser):
    async with signed.gateway.client(token=None) as anonymous:
        config = (await anonymous.get("/auth/oidc")).json()
    issuer = signed.provider.issuer
    assert config == {
        "enabled": True,
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "end_session_endpoint": f"{issuer}/oauth2/end_session",
        "client_id": CLIENT_ID,
        "scopes": ["openid", "profile", "email"],
        "redirect_uri": f"{signed.gateway.settings.base_url}/board/oidc/callback",
        "confidential": False,
        "device": False,
    }


@pytest.mark.parametrize(
    ("sub", "scopes", "name"),
    [("ada", ["admin"], "ada"), ("otto", ["write"], "otto@x.test"), ("rita", ["read"], "rita")],
)
async def test_a_sign_in_maps_the_providers_roles_to_scopes(
    signed: Browser, sub: str, scopes: list[str], name: str
):
    response = await signed.sign_in(sub)
    assert response.status_code == 200, response.text
    session = response.json()
    assert session["id"] == f"oidc:{sub}"
    assert session["name"] == name
    assert session["scopes"] == scopes
    claims = jwt.decode(session["token"], options={"verify_signature": False})
    assert session["expires_at"] == claims["exp"] > time.time()

    # The ID token is then the board's bearer token, for every route its scopes allow.
    async with signed.gateway.client(token=session["token"]) as board:
        assert (await board.get("/auth/whoami")).json()["scopes"] == scopes
        assert (await board.get("/missions")).status_code == 200
        submitted = await board.post("/missions", json=MISSION)
        assert submitted.status_code == (403 if scopes == ["read"] else 202), submitted.text
        tokens = await board.get("/admin/tokens")
        assert tokens.status_code == (200 if scopes == ["admin"] else 403)


async def test_a_public_client_has_no_device_sign_in_through_the_gateway(signed: Browser):
    """The gateway's device routes are for a confidential client's secret; a public
    client's CLI signs in at the provider itself."""
    async with signed.gateway.client(token=None) as anonymous:
        started = await anonymous.post("/auth/oidc/device")
        polled = await anonymous.post("/auth/oidc/device/token", json={"device_code": "d"})
    for response in (started, polled):
        assert response.status_code == 404
        assert response.json()["error"] == (
            "the gateway's OIDC client is public: sign in at the provider directly"
        )


async def test_an_account_without_an_aether_role_is_refused(signed: Browser):
    response = await signed.sign_in("nobody")
    assert response.status_code == 403
    assert response.json()["error"] == "your account has no Aether role"


async def test_a_nonce_that_is_not_the_sign_ins_is_refused(signed: Browser):
    response = await signed.sign_in("otto", nonce="replayed-from-another-sign-in")
    assert response.status_code == 401
    assert response.json()["error"] == (
        "the OIDC sign-in is not valid: the ID token's nonce is not this sign-in's"
    )


async def test_a_wrong_pkce_verifier_is_refused_by_the_provider(signed: Browser):
    response = await signed.sign_in("otto", verifier=secrets.token_urlsafe(48))
    assert response.status_code == 401
    assert "Code challenge failed" in response.json()["error"]


@pytest.mark.parametrize(
    # RFC 6749 §2.3.1: the id and secret are form-encoded before HTTP basic joins them, so
    # a secret holding "+", "%", ":" or "/" (a base64 one) reaches the provider as it is.
    "secret",
    ["the-right-secret", "r1ght+s3cret/with=base64:and%20more"],
)
async def test_a_confidential_client_sends_its_secret(
    provider: Provider, make_gateway: Callable[..., Awaitable[GatewayServer]], secret: str
):
    provider.register_confidential_client("aether-private", secret)
    right = Browser(
        provider,
        await make_gateway(
            oidc=settings_for(provider, client_id="aether-private", client_secret=secret)
        ),
    )
    assert (await right.sign_in("otto")).status_code == 200
    wrong = Browser(
        provider,
        await make_gateway(
            oidc=settings_for(provider, client_id="aether-private", client_secret="a-wrong-secret")
        ),
    )
    response = await wrong.sign_in("otto")
    assert response.status_code == 401
    assert "The client cannot authenticate" in response.json()["error"]


async def test_a_token_for_another_audience_is_refused(signed: Browser):
    # A real ID token from the same provider, issued to another client.
    provider = signed.provider
    verifier = secrets.token_urlsafe(48)
    code = await provider.authorize(
        sub="ada",
        client_id="some-other-app",
        redirect_uri="http://other.test/cb",
        nonce="n",
        challenge=challenge_of(verifier),
    )
    answer = await provider.token(
        code, client_id="some-other-app", redirect_uri="http://other.test/cb", verifier=verifier
    )
    async with signed.gateway.client(token=answer["id_token"]) as other:
        response = await other.get("/missions")
    assert response.status_code == 401
    assert response.json()["error"] == "the OIDC token is not valid: Audience doesn't match"


async def test_an_expired_token_is_refused_at_sign_in_and_on_the_api(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
):
    # The provider itself issues tokens that expired two minutes ago (past the leeway).
    provider = Provider(USERS, token_max_age=timedelta(minutes=-2))
    try:
        browser = Browser(provider, await make_gateway(oidc=settings_for(provider)))
        response = await browser.sign_in("ada")
        assert response.status_code == 401
        assert response.json()["error"] == ("the OIDC sign-in is not valid: Signature has expired")
        verifier = secrets.token_urlsafe(48)
        code = await provider.authorize(
            sub="ada",
            client_id=CLIENT_ID,
            redirect_uri="http://x.test/cb",
            nonce="n",
            challenge=challenge_of(verifier),
        )
        answer = await provider.token(
            code, client_id=CLIENT_ID, redirect_uri="http://x.test/cb", verifier=verifier
        )
        async with browser.gateway.client(token=answer["id_token"]) as late:
            response = await late.get("/missions")
        assert response.status_code == 401
        assert response.json()["error"] == "the OIDC token is not valid: Signature has expired"
    finally:
        provider.stop()


async def test_a_board_session_is_renewed_with_the_providers_refresh_token(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
):
    """A provider that gives refresh tokens: the sign-in hands the board one, and
    ``/auth/oidc/refresh`` swaps it for a new checked ID token (and the refresh token to
    use next), which works as the bearer; one the provider does not know is 401. A
    provider that gives none: the session has nothing to renew it."""
    provider = Provider(USERS, refresh_tokens=True)
    try:
        browser = Browser(provider, await make_gateway(oidc=settings_for(provider)))
        first = (await browser.sign_in("otto")).json()
        assert first["refresh_token"]
        await asyncio.sleep(1.1)  # a new token's iat and exp differ from the first's
        async with browser.gateway.client(token=None) as anonymous:
            renewed = await anonymous.post(
                "/auth/oidc/refresh", json={"refresh_token": first["refresh_token"]}
            )
            assert renewed.status_code == 200, renewed.text
            session = renewed.json()
            assert session["token"] != first["token"]
            assert session["expires_at"] > first["expires_at"]
            assert (session["id"], session["scopes"]) == ("oidc:otto", ["write"])
            assert session["refresh_token"]
            refused = await anonymous.post(
                "/auth/oidc/refresh", json={"refresh_token": "not-one-it-gave"}
            )
            assert refused.status_code == 401
            assert refused.json()["error"].startswith("the session cannot be renewed")
            empty = await anonymous.post("/auth/oidc/refresh", json={"refresh_token": ""})
            assert empty.status_code == 400
        async with browser.gateway.client(token=session["token"]) as board:
            assert (await board.get("/missions")).status_code == 200
    finally:
        provider.stop()
    without = Provider(USERS)
    try:
        browser = Browser(without, await make_gateway(oidc=settings_for(without)))
        assert (await browser.sign_in("otto")).json()["refresh_token"] == ""
    finally:
        without.stop()


async def test_a_forged_signature_is_refused(signed: Browser):
    session = (await signed.sign_in("otto")).json()
    header = jwt.get_unverified_header(session["token"])
    claims = jwt.decode(session["token"], options={"verify_signature": False})
    # The same claims and key id, signed with a key the provider never published.
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims["roles"] = ["aether-admin"]
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": header["kid"]})
    tampered = _with_payload(session["token"], claims)
    for token in (forged, tampered):
        async with signed.gateway.client(token=token) as c:
            response = await c.get("/missions")
        assert response.status_code == 401
        assert response.json()["error"] == (
            "the OIDC token is not valid: Signature verification failed"
        )


def _with_payload(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return f"{header}.{body.decode()}.{signature}"


async def test_the_providers_key_rotation_is_followed(signed: Browser):
    before = (await signed.sign_in("otto")).json()
    async with signed.gateway.client(token=before["token"]) as c:
        assert (await c.get("/missions")).status_code == 200  # the old key is now cached

    signed.provider.rotate_key()
    after = (await signed.sign_in("otto")).json()  # a new key id: the set is fetched again
    assert after["scopes"] == ["write"]
    new_kid = jwt.get_unverified_header(after["token"])["kid"]
    assert new_kid != jwt.get_unverified_header(before["token"])["kid"]
    async with signed.gateway.client(token=after["token"]) as c:
        assert (await c.get("/missions")).status_code == 200

    # The old key is gone from the provider's set: its key id is unknown even after a
    # fresh fetch, so tokens it signed are refused.
    async with signed.gateway.client(token=before["token"]) as c:
        response = await c.get("/missions")
    assert response.status_code == 401
    assert "Unable to find a signing key" in response.json()["error"]


async def test_access_tokens_for_the_api_audience_are_accepted(signed: Browser):
    """The CLI's way: an access token (a JWT for ``AETHER_OIDC_AUDIENCE``) signed by the
    provider, here with the provider's own key as its token service would."""
    key = signed.provider.key
    kid = jwt.get_unverified_header((await signed.sign_in("rita")).json()["token"])["kid"]
    now = int(time.time())
    claims = {"iss": signed.provider.issuer, "sub": "svc", "iat": now, "exp": now + 60}
    private = key.get_private_key()
    access = jwt.encode(
        {**claims, "aud": "aether-api", "scope": "aether:write"},
        private,
        algorithm="RS256",
        headers={"kid": kid},
    )
    async with signed.gateway.client(token=access) as cli:
        assert (await cli.get("/auth/whoami")).json()["scopes"] == ["write"]
    wrong_issuer = jwt.encode(
        {**claims, "iss": "http://evil.test", "aud": "aether-api"},
        private,
        algorithm="RS256",
        headers={"kid": kid},
    )
    async with signed.gateway.client(token=wrong_issuer) as cli:
        response = await cli.get("/auth/whoami")
    assert response.status_code == 401
    assert response.json()["error"] == "the OIDC token is not valid: Invalid issuer"


# --- settings and the pure mapping ---------------------------------------------------


def test_settings_are_read_from_the_environment(monkeypatch):
    env = {
        "AETHER_OIDC_ISSUER": "https://idp.test/realms/x",
        "AETHER_OIDC_CLIENT_ID": "aether",
        "AETHER_OIDC_CLIENT_SECRET": "s",
        "AETHER_OIDC_SCOPES": "openid profile groups",
        "AETHER_OIDC_ROLE_CLAIM": "realm_access.roles",
        "AETHER_OIDC_ADMIN_ROLES": "ops-admin, platform",
        "AETHER_OIDC_OPERATOR_ROLES": "dev",
        "AETHER_OIDC_READ_ONLY_ROLES": "",
        "AETHER_OIDC_REDIRECT_URL": "https://aether.test/board/oidc/callback",
        "AETHER_OIDC_JWKS_COOLDOWN_SECONDS": "5",
        "AETHER_OIDC_LEEWAY_SECONDS": "10",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    oidc = GatewaySettings.from_env().oidc
    assert oidc == OidcSettings(
        issuer="https://idp.test/realms/x",
        client_id="aether",
        client_secret="s",
        scopes=("openid", "profile", "groups"),
        role_claim="realm_access.roles",
        admin_roles=("ops-admin", "platform"),
        operator_roles=("dev",),
        read_only_roles=(),
        redirect_url="https://aether.test/board/oidc/callback",
        jwks_cooldown_seconds=5,
        leeway_seconds=10,
    )
    monkeypatch.delenv("AETHER_OIDC_ISSUER")
    monkeypatch.setenv("AETHER_OIDC_JWKS_URL", "https://idp.test/jwks")
    with pytest.raises(ValueError, match="needs AETHER_OIDC_ISSUER"):
        GatewaySettings.from_env()
    monkeypatch.delenv("AETHER_OIDC_JWKS_URL")
    assert GatewaySettings.from_env().oidc is None


def test_the_client_secret_may_come_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "client-secret"
    secret.write_text("from-the-file\n")
    monkeypatch.setenv("AETHER_OIDC_ISSUER", "https://idp.test")
    monkeypatch.setenv("AETHER_OIDC_AUDIENCE", "aether-api")
    monkeypatch.setenv("AETHER_OIDC_CLIENT_SECRET_FILE", str(secret))
    oidc = GatewaySettings.from_env().oidc
    assert oidc is not None
    assert oidc.client_secret == "from-the-file"
    # The variable itself wins over the file; empty counts as unset (compose's default).
    monkeypatch.setenv("AETHER_OIDC_CLIENT_SECRET", "from-the-env")
    assert GatewaySettings.from_env().oidc.client_secret == "from-the-env"  # type: ignore[union-attr]
    monkeypatch.setenv("AETHER_OIDC_CLIENT_SECRET", "")
    monkeypatch.setenv("AETHER_OIDC_CLIENT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="AETHER_OIDC_CLIENT_SECRET_FILE"):
        GatewaySettings.from_env()


@pytest.mark.parametrize("keys", ["AETHER_OIDC_ISSUER", "AETHER_OIDC_JWKS_URL"])
def test_oidc_without_an_audience_stops_the_gateway_naming_the_variable(
    provider: Provider, keys: str
):
    """Neither an audience nor a client id: every token the provider issued to any of
    its clients would be taken. The gateway refuses to start, in one line naming the
    variable, with the exit status of every bad setting."""
    discovery = httpx.get(f"{provider.issuer}/.well-known/openid-configuration").json()
    env = {key: val for key, val in os.environ.items() if not key.startswith("AETHER_")}
    env |= {
        # A bus nobody listens on: a gateway that took the settings would do nothing.
        "NATS_URL": "nats://127.0.0.1:9",
        "PORT": "0",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        keys: provider.issuer if keys == "AETHER_OIDC_ISSUER" else discovery["jwks_uri"],
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
        pytest.fail("the gateway started with OIDC and no audience")
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == EXIT_CONFIG, ran.stderr[-2000:]
    assert len(lines) == 1, ran.stderr[-2000:]
    assert lines[0].startswith("gateway: cannot start: AETHER_OIDC_AUDIENCE is not set")
    assert "AETHER_OIDC_ANY_AUDIENCE=1" in lines[0]


async def test_any_audience_stated_outright_takes_a_token_issued_to_another_client(
    provider: Provider, make_gateway: Callable[..., Awaitable[GatewayServer]], monkeypatch
):
    """The operator's explicit word (``AETHER_OIDC_ANY_AUDIENCE=1``) lets a gateway
    without an audience start, and then a token of any of the provider's clients is
    taken, as it says."""
    monkeypatch.setenv("AETHER_OIDC_ISSUER", provider.issuer)
    monkeypatch.setenv("AETHER_OIDC_ANY_AUDIENCE", "1")
    oidc = GatewaySettings.from_env().oidc
    assert oidc is not None and oidc.any_audience and oidc.audience is None
    gateway = await make_gateway(oidc=dataclasses.replace(oidc, jwks_cooldown_seconds=0))
    verifier = secrets.token_urlsafe(48)
    code = await provider.authorize(
        sub="ada",
        client_id="some-other-app",
        redirect_uri="http://other.test/cb",
        nonce="n",
        challenge=challenge_of(verifier),
    )
    answer = await provider.token(
        code, client_id="some-other-app", redirect_uri="http://other.test/cb", verifier=verifier
    )
    async with gateway.client(token=answer["id_token"]) as other:
        response = await other.get("/auth/whoami")
    assert response.status_code == 200, response.text
    assert response.json()["scopes"] == ["admin"]


def test_roles_are_found_in_nested_and_namespaced_claims():
    claims = {
        "realm_access": {"roles": ["a", "b"]},
        "https://aether.test/roles": "x,y z",
        "groups": 3,
    }
    assert role_names(claim_at(claims, "realm_access.roles")) == {"a", "b"}
    assert role_names(claim_at(claims, "https://aether.test/roles")) == {"x", "y", "z"}
    assert role_names(claim_at(claims, "groups")) == frozenset()
    assert claim_at(claims, "realm_access.missing.deeper") is None
    mapping: dict[Any, tuple[str, ...]] = {"admin": ("x",), "write": ("b",), "read": ("q",)}
    assert scopes_for_roles(frozenset({"b", "x"}), mapping) == {"admin", "write"}
    assert scopes_for_roles(frozenset({"zzz"}), mapping) == frozenset()


async def test_an_unreachable_provider_is_reported_not_trusted(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
):
    nowhere = f"http://127.0.0.1:{free_port()}"
    gateway = await make_gateway(oidc=OidcSettings(issuer=nowhere, client_id=CLIENT_ID))
    async with gateway.client(token=None) as anonymous:
        response = await anonymous.get("/auth/oidc")
        assert response.status_code == 503
        assert response.json()["error"] == "the identity provider cannot be reached; try again"
    token = jwt.encode(
        {"iss": nowhere, "sub": "x", "aud": CLIENT_ID, "exp": int(time.time()) + 60},
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": "k"},
    )
    async with gateway.client(token=token) as c:
        response = await c.get("/missions")
    # The token may be good: a client told 401 would drop its sign-in, so 503 and when.
    assert response.status_code == 503
    assert response.json()["error"] == "the identity provider's keys cannot be had; try again"
    assert int(response.headers["retry-after"]) >= 1
    # The API tokens still work while the provider is away.
    async with gateway.client() as admin:
        assert (await admin.get("/missions")).status_code == 200


async def test_sign_in_steps_are_limited_per_client_address(
    provider: Provider, make_gateway: Callable[..., Awaitable[GatewayServer]]
):
    """Each open sign-in step has the gateway ask the provider with its client's
    credentials: a flood from one address is refused before the provider is asked, and
    other addresses (named by a trusted proxy's X-Forwarded-For) sign in meanwhile."""
    gateway = await make_gateway(
        oidc=settings_for(provider), sign_in_rate_limit=2, sign_in_rate_window_seconds=3600
    )
    bogus = {"code": "not-a-code", "code_verifier": "v" * 43, "nonce": "n"}
    async with gateway.client(token=None) as anonymous:
        assert (await anonymous.post("/auth/oidc/token", json=bogus)).status_code == 401
        renewal = await anonymous.post("/auth/oidc/refresh", json={"refresh_token": "r"})
        assert renewal.status_code == 401  # the same address's second step
        limited = await anonymous.post("/auth/oidc/token", json=bogus)
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 1801
        assert "at most 2 sign-in steps per 3600 seconds" in limited.json()["error"]
        # Reads of the sign-in's configuration are not steps; another address goes on.
        assert (await anonymous.get("/auth/oidc")).status_code == 200
        elsewhere = {"x-forwarded-for": "203.0.113.7"}
        other = await anonymous.post("/auth/oidc/token", json=bogus, headers=elsewhere)
        assert other.status_code == 401
    signed = Browser(provider, gateway)
    assert (await signed.sign_in("otto")).status_code == 429  # this address's third
