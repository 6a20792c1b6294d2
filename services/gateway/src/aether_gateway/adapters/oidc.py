"""OIDC: JWTs verified against the identity provider's JWKS, and the board's sign-in.

Three ways in, all ending in a :class:`Principal`:

- a bearer JWT on any request (the CLI, ``curl``, the board after it signed in): an
  access token whose audience is ``AETHER_OIDC_AUDIENCE``, or an ID token issued to
  Aether's own client id;
- with introspection on, an opaque (non-JWT) access token, which the provider's
  introspection endpoint (RFC 7662) vouches for; the gateway asks as its confidential
  client and keeps each answer a short while, keyed by the token's SHA-256;
- the board's sign-in: the authorization-code flow with PKCE. The browser holds the
  verifier, the state and the nonce; the gateway swaps the code for tokens at the
  provider's token endpoint (with the client secret when the client is confidential, so
  the secret never reaches a browser) and checks the ID token, its nonce included,
  before handing it to the board as its bearer token.

Keys come from the JWKS the discovery document names (or ``AETHER_OIDC_JWKS_URL``) and
are cached; a token signed with a key id not in the cache fetches the set again (at most
once per cooldown), which is how a provider's key rotation is followed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import httpx
import jwt
import msgspec

from aether_gateway.adapters.introspection import AnswerCache
from aether_gateway.domain.auth import (
    Principal,
    Scope,
    claim_at,
    has_expired,
    parse_scopes,
    refused_from,
    role_names,
    scopes_for_roles,
    token_hash,
)
from aether_runtime import tls

log = logging.getLogger("aether.gateway.oidc")

# Asymmetric algorithms only: a JWKS publishes public keys, and accepting HS256 would let
# anyone who knows a public key sign tokens with it.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
CALLBACK_PATH = "/board/oidc/callback"
# Bounds on what the provider sends back: it is another party's input.
_MAX_ERROR_TEXT = 300
# How long a failed discovery (or introspection) is remembered before the provider is
# asked again; what ``Retry-After`` says.
RETRY_SECONDS = 5.0
# An opaque token longer than this is no provider's: refused without asking.
_MAX_OPAQUE_TOKEN = 4096
# The introspection answer's token types that mean an access token (RFC 7662's
# ``token_type``, Keycloak's ``typ``); a refresh or ID token is refused as a bearer.
_ACCESS_TOKEN_TYPES = frozenset(
    {"bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"}
)


@dataclass(frozen=True)
class OidcSettings:
    """Where tokens come from and what they grant (``AETHER_OIDC_*``)."""

    # The key set; empty: the one the issuer's discovery document names.
    jwks_url: str = ""
    # The provider's issuer URL: tokens must name it, and its discovery document
    # (``<issuer>/.well-known/openid-configuration``) gives the endpoints.
    issuer: str | None = None
    # The audience of access tokens sent to the API (ID tokens carry the client id).
    audience: str | None = None
    # The operator's word that, with neither an audience nor a client id, a token the
    # provider issued to any of its clients may be taken (refused otherwise: see below).
    any_audience: bool = False
    # The claim holding the caller's scopes (a space-separated string or a list) and the
    # prefix that marks Aether's among them (``aether:write``).
    scope_claim: str = "scope"
    scope_prefix: str = "aether:"
    # The board's sign-in (off without a client id).
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    # Where the provider sends the browser back; empty: the public URL's callback page.
    redirect_url: str = ""
    # The claim listing the caller's roles (a dotted path reaches into objects), and
    # which of the provider's roles make an Aether admin, operator or read-only user.
    role_claim: str = "roles"
    admin_roles: tuple[str, ...] = ("aether-admin",)
    operator_roles: tuple[str, ...] = ("aether-operator",)
    read_only_roles: tuple[str, ...] = ("aether-read-only",)
    # Least time between two fetches of the key set forced by an unknown key id.
    jwks_cooldown_seconds: float = 30.0
    # Clock skew allowed on exp, iat and nbf.
    leeway_seconds: float = 30.0
    # Opaque (non-JWT) access tokens, checked at the provider's token introspection
    # endpoint (RFC 7662) as the confidential client ``client_id``: on when asked for, or
    # when the endpoint is named outright (else the one the discovery document names).
    introspection: bool = False
    introspection_url: str = ""
    # How long one token's answer is kept (never past the token's exp and the leeway),
    # and how many tokens' answers at most.
    introspection_cache_seconds: float = 30.0
    introspection_cache_size: int = 10_000

    def __post_init__(self) -> None:
        if not self.jwks_url and not self.issuer:
            raise ValueError("OIDC needs AETHER_OIDC_ISSUER or AETHER_OIDC_JWKS_URL")
        if self.client_id and not self.issuer:
            raise ValueError("AETHER_OIDC_CLIENT_ID needs AETHER_OIDC_ISSUER (its discovery)")
        if not self.audience and not self.client_id and not self.any_audience:
            # No audience to check: a token the provider issued to any of its clients
            # (another team's app, a test client) would be taken as Aether's.
            raise ValueError(
                "AETHER_OIDC_AUDIENCE is not set (nor AETHER_OIDC_CLIENT_ID): tokens the"
                " provider issued to any client would be accepted; set it, or set"
                " AETHER_OIDC_ANY_AUDIENCE=1 to accept them knowingly"
            )
        if self.client_id and "openid" not in self.scopes:
            raise ValueError("AETHER_OIDC_SCOPES must include openid")
        if self.jwks_cooldown_seconds < 0 or self.leeway_seconds < 0:
            raise ValueError("OIDC cooldown and leeway cannot be negative")
        if self.introspection_cache_seconds < 0 or self.introspection_cache_size < 0:
            raise ValueError("the introspection cache's time and size cannot be negative")
        if self.introspects:
            # The gateway authenticates to the introspection endpoint as its own
            # confidential client: without a secret every call would be refused (or, at a
            # lax provider, anyone could ask about anyone's tokens as that client).
            if not self.client_id:
                raise ValueError(
                    "OIDC token introspection needs AETHER_OIDC_CLIENT_ID: the gateway"
                    " authenticates to the introspection endpoint as that client"
                )
            if not self.client_secret:
                raise ValueError(
                    "OIDC token introspection needs AETHER_OIDC_CLIENT_SECRET (or"
                    " AETHER_OIDC_CLIENT_SECRET_FILE): the gateway authenticates to the"
                    " introspection endpoint as a confidential client"
                )

    @property
    def introspects(self) -> bool:
        """Opaque access tokens are checked at the provider's introspection endpoint."""
        return self.introspection or bool(self.introspection_url)

    @property
    def browser_sign_in(self) -> bool:
        return bool(self.client_id)

    def role_mapping(self) -> dict[Scope, tuple[str, ...]]:
        return {
            "admin": self.admin_roles,
            "write": self.operator_roles,
            "read": self.read_only_roles,
        }


class InvalidToken(Exception):
    """The bearer token (or the sign-in's answer) is not valid for this gateway."""


class ProviderUnavailable(Exception):
    """The identity provider could not be reached or answered nonsense."""


class SignInPending(InvalidToken):
    """A device sign-in the user has not approved yet (``slow_down``: poll less often)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.slow_down = error == "slow_down"


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def basic_auth(client_id: str, secret: str) -> httpx.BasicAuth:
    """A client's HTTP basic credentials for the provider's endpoints: RFC 6749 §2.3.1
    form-encodes the id and the secret before they are joined, so that a secret holding
    ``+``, ``%``, ``:`` or ``/`` (a base64 one) reaches the provider as it is."""
    quote = urllib.parse.quote_plus
    return httpx.BasicAuth(quote(client_id), quote(secret))


class ProviderMetadata(msgspec.Struct, kw_only=True):
    """The parts of the discovery document the gateway uses (unknown fields ignored)."""

    issuer: str
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    jwks_uri: str = ""
    end_session_endpoint: str = ""
    introspection_endpoint: str = ""
    device_authorization_endpoint: str = ""
    # None: not published (RFC 8414 §2: client_secret_basic is then the default).
    introspection_endpoint_auth_methods_supported: Any = None


class DeviceStart(msgspec.Struct, kw_only=True):
    """The provider's answer to a device authorization request (RFC 8628 §3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str = ""
    expires_in: int = 600
    interval: int = 5


class _TokenAnswer(msgspec.Struct, kw_only=True):
    id_token: str = ""
    refresh_token: str = ""
    error: str = ""
    error_description: str = ""


@dataclass(frozen=True)
class SignedIn:
    """A finished sign-in: who, and the ID token the board now sends as its bearer."""

    principal: Principal
    token: str
    expires_at: int
    claims: dict[str, Any] = field(repr=False)
    # What renews the session before the token ends ("": the provider gave none).
    refresh_token: str = field(default="", repr=False)


def _client() -> httpx.AsyncClient:
    # One per exchange: a client bound to no loop survives the app being stopped and
    # started again. Its TLS context is the process's one (``tls``): loading the trust
    # store for each took more CPU than the exchange.
    return httpx.AsyncClient(timeout=10, follow_redirects=False, verify=tls.shared())


class OidcVerifier:
    """Verifies JWTs and finishes the board's sign-in against one provider."""

    def __init__(self, settings: OidcSettings, *, public_url: str = "") -> None:
        self.settings = settings
        self.redirect_url = settings.redirect_url or f"{public_url.rstrip('/')}{CALLBACK_PATH}"
        self._metadata: ProviderMetadata | None = None
        self._jwks: jwt.PyJWKClient | None = (
            self._key_client(settings.jwks_url) if settings.jwks_url else None
        )
        self._lock = asyncio.Lock()
        self._failure: ProviderUnavailable | None = None
        self._failed_at = 0.0
        # Opaque tokens' answers (a Principal, or why the token is refused), keyed by the
        # token's SHA-256; and the last failed introspection, so a provider that is down
        # is not waited on by every request.
        self._answers: AnswerCache[Principal | str] = AnswerCache(
            seconds=settings.introspection_cache_seconds, size=settings.introspection_cache_size
        )
        self._introspection_failure: ProviderUnavailable | None = None
        self._introspection_failed_at = 0.0

    def _key_client(self, url: str) -> jwt.PyJWKClient:
        # The key set is cached for five minutes; single keys are not cached apart from
        # it (cache_keys), or a key the provider has withdrawn would stay trusted.
        return jwt.PyJWKClient(
            url,
            cache_keys=False,
            cache_jwk_set=True,
            lifespan=300,
            timeout=10,
            cooldown_duration=self.settings.jwks_cooldown_seconds,
        )

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, fetched once it is first needed (a failed
        fetch is tried again on the next call)."""
        async with self._lock:
            if self._metadata is not None:
                return self._metadata
            # A provider that is down is asked again after a pause, not on every request
            # (each would wait out the timeout behind this lock).
            if self._failure is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
                raise self._failure
            try:
                self._metadata = await self._discover()
            except ProviderUnavailable as error:
                self._failure, self._failed_at = error, time.monotonic()
                raise
            return self._metadata

    async def _discover(self) -> ProviderMetadata:
        issuer = self.settings.issuer or ""
        if not issuer:
            # JWKS-only configuration: no discovery, no browser sign-in.
            return ProviderMetadata(issuer="", jwks_uri=self.settings.jwks_url)
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with _client() as http:
                response = await http.get(url)
            response.raise_for_status()
            found = msgspec.json.decode(response.content, type=ProviderMetadata)
        except (httpx.HTTPError, msgspec.ValidationError, msgspec.DecodeError) as error:
            raise ProviderUnavailable(f"the discovery document at {url}: {error}") from error
        # OIDC Discovery 1.0 §4.3: the document must name the issuer it was fetched for,
        # else another party's keys would be trusted.
        if found.issuer.rstrip("/") != issuer.rstrip("/"):
            raise ProviderUnavailable(
                f"the discovery document names issuer {found.issuer[:200]!r}, not {issuer!r}"
            )
        if not found.jwks_uri and not self.settings.jwks_url:
            raise ProviderUnavailable("the discovery document names no jwks_uri")
        log.info("OIDC provider discovered", extra={"issuer": found.issuer})
        return found

    async def _keys(self) -> tuple[jwt.PyJWKClient, str | None]:
        """The key client and the issuer tokens must name (None: not checked)."""
        if self._jwks is not None:
            # Keys named outright (or found before): no discovery needed to verify.
            return self._jwks, (self._metadata.issuer if self._metadata else None)
        found = await self.metadata()
        self._jwks = self._key_client(found.jwks_uri)
        return self._jwks, found.issuer

    async def principal(self, token: str) -> Principal:
        """The caller a bearer JWT names, with the Aether scopes it grants."""
        audiences = [a for a in (self.settings.audience, self.settings.client_id) if a]
        claims = await self._verified(token, audiences)
        return self.principal_of(claims)

    async def opaque_principal(self, token: str) -> Principal:
        """The caller an opaque access token names, as the provider's introspection
        endpoint (RFC 7662) says. Each answer is kept a short while (never past the
        token's exp and the leeway) under the token's SHA-256, so a busy client does not
        make the gateway ask on every request. ``InvalidToken`` when refused;
        ``ProviderUnavailable`` when the provider could not say."""
        if len(token) > _MAX_OPAQUE_TOKEN:
            raise InvalidToken("the token is too long")
        key = token_hash(token)
        answer = self._answers.get(key, time.monotonic())
        if answer is None:
            said = await self._introspect(token)
            answer, expires_in = self._judged(said, time.time())
            self._answers.put(key, answer, time.monotonic(), expires_in=expires_in)
        if isinstance(answer, str):
            raise InvalidToken(answer)
        return answer

    async def _introspect(self, token: str) -> dict[str, Any]:
        """The introspection endpoint's answer about ``token``, asked as the gateway's
        confidential client (client_secret_basic; client_secret_post when the provider
        publishes only that)."""
        failure = self._introspection_failure
        if failure is not None and time.monotonic() - self._introspection_failed_at < RETRY_SECONDS:
            raise failure
        try:
            answer = await self._ask_introspection(token)
        except ProviderUnavailable as error:
            self._introspection_failure = error
            self._introspection_failed_at = time.monotonic()
            log.warning("OIDC token introspection failed", extra={"reason": str(error)})
            raise
        self._introspection_failure = None
        return answer

    async def _ask_introspection(self, token: str) -> dict[str, Any]:
        found = await self.metadata()
        url = self.settings.introspection_url or found.introspection_endpoint
        if not url:
            raise ProviderUnavailable(
                "the discovery document names no introspection_endpoint"
                " (set AETHER_OIDC_INTROSPECTION_URL)"
            )
        form = {"token": token, "token_type_hint": "access_token"}
        client_id, secret = self.settings.client_id, self.settings.client_secret
        methods = found.introspection_endpoint_auth_methods_supported
        auth: httpx.Auth
        if (
            isinstance(methods, list)
            and "client_secret_basic" not in methods
            and "client_secret_post" in methods
        ):
            form |= {"client_id": client_id, "client_secret": secret}
            auth = httpx.Auth()
        else:
            auth = basic_auth(client_id, secret)
        try:
            async with _client() as http:
                response = await http.post(
                    url, data=form, auth=auth, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"the introspection endpoint: {error!r}") from error
        if response.status_code != 200:
            raise ProviderUnavailable(
                f"the introspection endpoint answered HTTP {response.status_code}:"
                f" {response.text[:_MAX_ERROR_TEXT]}"
            )
        try:
            answer = msgspec.json.decode(response.content, type=dict[str, Any])
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise ProviderUnavailable(f"the introspection endpoint: {error}") from error
        return answer

    def _judged(self, said: dict[str, Any], now: float) -> tuple[Principal | str, float | None]:
        """Who the introspection answer ``said`` names, or why the token is refused; and
        in how many seconds the token is refused (None: it names no expiry), by the rule
        of a JWT's ``exp`` and of an event stream's end (``refused_from``)."""
        exp, nbf, issuer = said.get("exp"), said.get("nbf"), said.get("iss")
        leeway = self.settings.leeway_seconds
        expires_in = refused_from(exp, leeway) - now if _is_number(exp) else None
        if said.get("active") is not True:
            return "the token is not active", None
        if exp is not None and (not _is_number(exp) or has_expired(exp, now, leeway)):
            return "the token has expired", 0.0
        if nbf is not None and (not _is_number(nbf) or nbf > now + leeway):
            return "the token is not yet valid", 0.0  # not kept: it may be valid soon
        expected = (self.settings.issuer or "").rstrip("/")
        if issuer is not None and expected and str(issuer).rstrip("/") != expected:
            return "Invalid issuer", expires_in
        kind = said.get("token_type", said.get("typ"))
        if kind is not None and str(kind).lower() not in _ACCESS_TOKEN_TYPES:
            return f"not an access token ({str(kind)[:40]})", expires_in
        if "cnf" in said:
            # Bound to a key or certificate (DPoP, mTLS) whose proof is not checked here.
            return "the token is sender-constrained (cnf), which is not supported", expires_in
        # The same audiences as a JWT's: the API's, or Aether's own client (the client a
        # token was issued to counts as one of its audiences).
        accepted = {a for a in (self.settings.audience, self.settings.client_id) if a}
        if accepted and not (_names(said.get("aud")) | _names(said.get("client_id"))) & accepted:
            return "Audience doesn't match", expires_in
        try:
            return self.principal_of(said), expires_in
        except InvalidToken as error:
            return str(error), expires_in

    async def sign_in(self, code: str, code_verifier: str, nonce: str) -> SignedIn:
        """Swap an authorization code for tokens and check the ID token, its nonce too."""
        answer = await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_url,
                "code_verifier": code_verifier,
                "client_id": self.settings.client_id,
            },
            "code",
        )
        claims = await self._verified(answer.id_token, [self.settings.client_id], id_token=True)
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise InvalidToken("the ID token's nonce is not this sign-in's")
        return self._signed_in(answer, claims)

    async def refresh(self, refresh_token: str) -> SignedIn:
        """Renew a board session: the provider's refresh grant, the new ID token checked
        as a sign-in's is (but for the nonce, which a refresh does not carry)."""
        answer = await self._token_request(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.settings.client_id,
            },
            "refresh token",
        )
        claims = await self._verified(answer.id_token, [self.settings.client_id], id_token=True)
        if not answer.refresh_token:
            # Not rotated: the one the board holds goes on working.
            answer = msgspec.structs.replace(answer, refresh_token=refresh_token)
        return self._signed_in(answer, claims)

    @property
    def confidential(self) -> bool:
        """The gateway's client has a secret: only the gateway can use it at the provider."""
        return self.settings.browser_sign_in and bool(self.settings.client_secret)

    async def device_start(self) -> DeviceStart:
        """Start a device sign-in (RFC 8628) as the gateway's confidential client, for a
        command line that holds no secret."""
        found = await self.metadata()
        if not found.device_authorization_endpoint:
            raise InvalidToken("the provider does not offer the device authorization grant")
        form = {"client_id": self.settings.client_id, "scope": " ".join(self.settings.scopes)}
        try:
            async with _client() as http:
                response = await http.post(
                    found.device_authorization_endpoint, data=form, auth=self._client_auth()
                )
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"the device authorization endpoint: {error!r}") from error
        if response.status_code != 200:
            answer = _decoded_or_empty(response.content)
            why = answer.error_description or answer.error or f"HTTP {response.status_code}"
            raise InvalidToken(f"the provider refused the device sign-in: {why[:_MAX_ERROR_TEXT]}")
        try:
            return msgspec.json.decode(response.content, type=DeviceStart)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise ProviderUnavailable(f"the device authorization endpoint: {error}") from error

    async def device_finish(self, device_code: str) -> SignedIn:
        """Ask the token endpoint once whether the device sign-in was approved: the ID
        token checked as a sign-in's is, or ``SignInPending``."""
        answer = await self._token_request(
            {
                "grant_type": DEVICE_GRANT,
                "device_code": device_code,
                "client_id": self.settings.client_id,
            },
            "device code",
        )
        claims = await self._verified(answer.id_token, [self.settings.client_id], id_token=True)
        return self._signed_in(answer, claims)

    def _client_auth(self) -> httpx.Auth:
        # A confidential client authenticates with client_secret_basic; a public one
        # (no secret) is held to its PKCE verifier alone.
        if self.settings.client_secret:
            return basic_auth(self.settings.client_id, self.settings.client_secret)
        return httpx.Auth()

    async def _token_request(self, form: dict[str, str], what: str) -> _TokenAnswer:
        """The token endpoint's answer to ``form``; ``InvalidToken`` when it refuses
        ``what`` or gives no ID token."""
        if not self.settings.browser_sign_in:
            raise InvalidToken("OIDC sign-in is not configured")
        found = await self.metadata()
        try:
            async with _client() as http:
                response = await http.post(
                    found.token_endpoint, data=form, auth=self._client_auth()
                )
            answer = msgspec.json.decode(response.content, type=_TokenAnswer)
        except (httpx.HTTPError, msgspec.ValidationError, msgspec.DecodeError) as error:
            raise ProviderUnavailable(f"the token endpoint: {error}") from error
        if answer.error in ("authorization_pending", "slow_down"):
            raise SignInPending(answer.error)
        if response.status_code >= 400 or answer.error or not answer.id_token:
            why = answer.error_description or answer.error or f"HTTP {response.status_code}"
            raise InvalidToken(f"the provider refused the {what}: {why[:_MAX_ERROR_TEXT]}")
        return answer

    def _signed_in(self, answer: _TokenAnswer, claims: dict[str, Any]) -> SignedIn:
        audience = claims.get("aud")
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != self.settings.client_id:
            raise InvalidToken("the ID token was issued to another party (azp)")
        return SignedIn(
            principal=self.principal_of(claims),
            token=answer.id_token,
            expires_at=int(claims["exp"]),
            claims=claims,
            refresh_token=answer.refresh_token,
        )

    def principal_of(self, claims: dict[str, Any]) -> Principal:
        subject = str(claims.get("sub") or "")
        if not subject:
            raise InvalidToken("the token names no subject")
        raw: Any = claims.get(self.settings.scope_claim, "")
        granted = parse_scopes(
            raw if isinstance(raw, str | list) else "", self.settings.scope_prefix
        )
        roles = role_names(claim_at(claims, self.settings.role_claim))
        scopes = granted | scopes_for_roles(roles, self.settings.role_mapping())
        name = str(
            claims.get("preferred_username") or claims.get("email") or claims.get("name") or subject
        )
        exp = claims.get("exp")
        return Principal(
            id=f"oidc:{subject}",
            name=name[:200],
            scopes=scopes,
            kind="oidc",
            refused_from=(
                refused_from(float(exp), self.settings.leeway_seconds) if _is_number(exp) else None
            ),
        )

    async def _verified(
        self, token: str, audiences: list[str], *, id_token: bool = False
    ) -> dict[str, Any]:
        # ``ProviderUnavailable`` when the provider's keys cannot be had: the token may be
        # good, so the caller answers 503, not 401.
        keys, issuer = await self._keys()
        required = ["exp", "sub", "iat", "iss", "aud"] if id_token else ["exp", "sub"]
        # PyJWKClient fetches the key set with blocking I/O (cached after the first call).
        return await asyncio.to_thread(self._decode, keys, token, audiences, issuer, required)

    def _decode(
        self,
        keys: jwt.PyJWKClient,
        token: str,
        audiences: list[str],
        issuer: str | None,
        required: list[str],
    ) -> dict[str, Any]:
        issuer = issuer or self.settings.issuer
        try:
            key = keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=audiences or None,
                issuer=issuer,
                # The expiry is judged below, by the rule an event stream ends by too.
                options={"require": required, "verify_aud": bool(audiences), "verify_exp": False},
                leeway=self.settings.leeway_seconds,
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from error
        exp = claims["exp"]
        if not _is_number(exp):
            raise InvalidToken("Expiration Time claim (exp) must be a number")
        if has_expired(exp, time.time(), self.settings.leeway_seconds):
            raise InvalidToken("Signature has expired")
        return claims


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(value: object) -> set[str]:
    """A claim holding one name or a list of them (``aud``)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


def _decoded_or_empty(content: bytes) -> _TokenAnswer:
    """An error answer's fields, or none when it is not the JSON it should be."""
    try:
        return msgspec.json.decode(content, type=_TokenAnswer)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _TokenAnswer()
