"""Authentication and scopes.

Every route needs a bearer token but health, readiness and metrics, the board's pages and
files (they hold no data) and the board's OIDC sign-in (``exclude_from_auth``):

- an API token (``aet_…``), looked up by its SHA-256 hash;
- the bootstrap admin token from ``AETHER_ADMIN_TOKEN``, compared in constant time;
- an OIDC JWT (an access token for ``AETHER_OIDC_AUDIENCE``, or an ID token issued to
  ``AETHER_OIDC_CLIENT_ID``, which is what the board signs in with), verified against the
  identity provider's JWKS, when ``AETHER_OIDC_ISSUER`` or ``AETHER_OIDC_JWKS_URL`` is
  set. Its scopes come from the scope claim and from the roles in the role claim;
- with introspection on (``AETHER_OIDC_INTROSPECTION``), an opaque OIDC access token:
  whatever is not a JWT is asked about at the provider's introspection endpoint (the
  answer cached briefly), and held to the same audiences, scopes and roles. A provider
  that cannot say answers 503 with ``Retry-After``: the token may be good.

Event streams also take the token as ``?access_token=`` (a browser's EventSource cannot
send headers). Each route then names the scope it needs with a guard.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from aether_gateway.adapters.oidc import (
    RETRY_SECONDS,
    InvalidToken,
    OidcVerifier,
    ProviderUnavailable,
)
from aether_gateway.adapters.tokens import TokenStore
from aether_gateway.api.errors import service_unavailable
from aether_gateway.api.served import context_of
from aether_gateway.domain.auth import TOKEN_PREFIX, Principal
from aether_gateway.domain.auth import Scope as AetherScope

log = logging.getLogger("aether.gateway.auth")

# Route option: the route takes the token from ``?access_token=`` too.
QUERY_TOKEN_OPT = "query_token"  # noqa: S105 (an option name)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="aether"'}

BOOTSTRAP = Principal(
    id="bootstrap", name="bootstrap-admin", scopes=frozenset({"admin"}), kind="bootstrap"
)


def _unauthorized(message: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail=message, headers=CHALLENGE)


class Authenticator:
    """Tells who holds a bearer token."""

    def __init__(
        self, tokens: TokenStore, *, admin_token: str = "", oidc: OidcVerifier | None = None
    ) -> None:
        self._tokens = tokens
        self._admin_token = admin_token.encode()
        self._oidc = oidc

    async def principal(self, token: str) -> Principal:
        if self._admin_token and hmac.compare_digest(token.encode(), self._admin_token):
            return BOOTSTRAP
        if token.startswith(TOKEN_PREFIX):
            found = await self._tokens.principal(token)
            if found is None:
                raise _unauthorized("the token is unknown, revoked or expired")
            return found
        oidc = self._oidc
        if oidc is not None and token.count(".") == 2:
            return _with_scopes(oidc, await self._jwt(oidc, token))
        if oidc is not None and oidc.settings.introspects:
            return _with_scopes(oidc, await self._opaque(oidc, token))
        raise _unauthorized("the token is not valid")

    async def _jwt(self, oidc: OidcVerifier, token: str) -> Principal:
        try:
            return await oidc.principal(token)
        except InvalidToken as error:
            log.info("OIDC token refused", extra={"reason": str(error)})
            raise _unauthorized(f"the OIDC token is not valid: {error}") from None
        except ProviderUnavailable as error:
            raise _provider_away("the identity provider's keys cannot be had", error) from None

    async def _opaque(self, oidc: OidcVerifier, token: str) -> Principal:
        try:
            return await oidc.opaque_principal(token)
        except InvalidToken as error:
            log.info("OIDC opaque token refused", extra={"reason": str(error)})
            raise _unauthorized(f"the OIDC token is not valid: {error}") from None
        except ProviderUnavailable as error:
            raise _provider_away("the identity provider cannot check the token", error) from None


def _provider_away(what: str, error: ProviderUnavailable) -> HTTPException:
    """Not the caller's fault, and the token may be good: not 401 (a client would drop
    its sign-in); the reason goes to the gateway's log, not the answer."""
    log.warning("OIDC token not checked", extra={"reason": str(error)})
    return service_unavailable(f"{what}; try again", RETRY_SECONDS)


def _with_scopes(oidc: OidcVerifier, found: Principal) -> Principal:
    """``found``, or 403 when the provider's token grants no Aether scope."""
    if not found.scopes:
        raise PermissionDeniedException(
            detail="the OIDC token grants no Aether scope",
            extra={
                "scope_claim": oidc.settings.scope_claim,
                "role_claim": oidc.settings.role_claim,
            },
        )
    return found


class AuthMiddleware(ASGIMiddleware):
    """Puts the caller on ``scope["user"]``, or answers 401 (with the authenticator of
    the gateway the request came to)."""

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = "exclude_from_auth"

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        token = _bearer(connection.headers.get("authorization"))
        if token is None and _route_opt(scope, QUERY_TOKEN_OPT):
            token = connection.query_params.get("access_token") or None
        if token is None:
            raise _unauthorized("authentication required: send Authorization: Bearer <token>")
        scope["user"] = await context_of(scope).authenticator.principal(token)
        # Kept for what outlives the request's check: an event stream asks again.
        scope["auth"] = token
        await next_app(scope, receive, send)


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def _route_opt(scope: Scope, key: str) -> bool:
    handler = scope.get("route_handler")
    opt = getattr(handler, "opt", None) or {}
    return bool(opt.get(key))


def requires(needed: AetherScope) -> Any:
    """A guard: the caller's scopes must include ``needed`` (or a higher one)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            raise _unauthorized("authentication required")
        if not principal.allows(needed):
            raise PermissionDeniedException(
                detail=f"this needs the {needed!r} scope",
                extra={"needed": needed, "granted": sorted(principal.scopes)},
            )

    guard.__name__ = f"requires_{needed}"
    return guard


READ = requires("read")
WRITE = requires("write")
ADMIN = requires("admin")
