"""The board's OIDC sign-in: what the browser needs to start it, and the code exchange
that finishes it. Both are open (the caller has no token yet); everything after uses the
ID token they hand out, checked like any other bearer token."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ServiceUnavailableException,
)
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from aether_gateway.adapters.oidc import (
    InvalidToken,
    OidcVerifier,
    ProviderUnavailable,
    SignedIn,
)
from aether_gateway.api.auth import CHALLENGE
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import error_responses
from aether_gateway.api.idempotency import NO_IDEMPOTENCY_OPT

log = logging.getLogger("aether.gateway.oidc")

_OPEN: dict[str, Any] = {"exclude_from_auth": True}
# PKCE verifiers are 43 to 128 characters (RFC 7636 §4.1); codes and nonces are the
# provider's and the browser's, bounded so no one sends megabytes.
_Verifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._~-]{43,128}$")]
_Opaque = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class OidcConfig(msgspec.Struct, kw_only=True):
    """How the board starts a sign-in (``enabled`` false: tokens only)."""

    enabled: bool
    issuer: str = ""
    authorization_endpoint: str = ""
    end_session_endpoint: str = ""
    client_id: str = ""
    scopes: list[str] = msgspec.field(default_factory=list)
    redirect_uri: str = ""


class OidcSignIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The provider's code, and the PKCE verifier and nonce the browser kept for it."""

    code: _Opaque
    code_verifier: _Verifier
    nonce: _Opaque


class OidcSession(msgspec.Struct, kw_only=True):
    """The signed-in caller; ``token`` is the ID token to send as the bearer token until
    ``expires_at`` (seconds since the epoch)."""

    token: str
    expires_at: int
    id: str
    name: str
    kind: str
    scopes: list[str]
    # Renews the session before ``expires_at`` (``/auth/oidc/refresh``); "" when the
    # provider gave none, and the session ends with the token.
    refresh_token: str = ""


@get(
    "/auth/oidc",
    summary="How the board signs in with OIDC (enabled false: not configured)",
    opt=_OPEN,
    # OpenAPI: one empty requirement means no credentials are needed.
    security=[{}],
    responses=error_responses(503),
    tags=["auth"],
)
async def oidc_config(ctx: NamedDependency[GatewayContext]) -> OidcConfig:
    verifier = ctx.oidc
    if verifier is None or not verifier.settings.browser_sign_in:
        return OidcConfig(enabled=False)
    try:
        found = await verifier.metadata()
    except ProviderUnavailable as error:
        log.warning("OIDC discovery failed", extra={"reason": str(error)})
        raise ServiceUnavailableException(
            detail="the identity provider cannot be reached; try again"
        ) from None
    return OidcConfig(
        enabled=True,
        issuer=found.issuer,
        authorization_endpoint=found.authorization_endpoint,
        end_session_endpoint=found.end_session_endpoint,
        client_id=verifier.settings.client_id,
        scopes=list(verifier.settings.scopes),
        redirect_uri=verifier.redirect_url,
    )


@post(
    "/auth/oidc/token",
    status_code=HTTP_200_OK,
    summary="Finish an OIDC sign-in: swap the code for a checked ID token",
    opt={**_OPEN, NO_IDEMPOTENCY_OPT: True},
    # OpenAPI: one empty requirement means no credentials are needed.
    security=[{}],
    responses=error_responses(400, 401, 403, 404, 503),
    tags=["auth"],
)
async def oidc_token(
    ctx: NamedDependency[GatewayContext], data: JSONBody[OidcSignIn]
) -> OidcSession:
    verifier = ctx.oidc
    if verifier is None or not verifier.settings.browser_sign_in:
        raise NotFoundException(detail="OIDC sign-in is not configured")
    try:
        done = await verifier.sign_in(data.code, data.code_verifier, data.nonce)
    except ProviderUnavailable as error:
        log.warning("OIDC sign-in failed", extra={"reason": str(error)})
        raise ServiceUnavailableException(
            detail="the identity provider cannot be reached; try again"
        ) from None
    except InvalidToken as error:
        log.info("OIDC sign-in refused", extra={"reason": str(error)})
        raise NotAuthorizedException(
            detail=f"the OIDC sign-in is not valid: {error}", headers=CHALLENGE
        ) from None
    return _session(verifier, done)


class OidcRefresh(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The refresh token a sign-in (or the last renewal) handed out."""

    refresh_token: _Opaque


@post(
    "/auth/oidc/refresh",
    status_code=HTTP_200_OK,
    summary="Renew an OIDC session before its ID token ends",
    opt={**_OPEN, NO_IDEMPOTENCY_OPT: True},
    # OpenAPI: one empty requirement means no credentials are needed.
    security=[{}],
    responses=error_responses(400, 401, 403, 404, 503),
    tags=["auth"],
)
async def oidc_refresh(
    ctx: NamedDependency[GatewayContext], data: JSONBody[OidcRefresh]
) -> OidcSession:
    """The provider's refresh grant: a new checked ID token (and the refresh token to
    use next), or 401 once the provider no longer renews the session."""
    verifier = ctx.oidc
    if verifier is None or not verifier.settings.browser_sign_in:
        raise NotFoundException(detail="OIDC sign-in is not configured")
    try:
        done = await verifier.refresh(data.refresh_token)
    except ProviderUnavailable as error:
        log.warning("OIDC renewal failed", extra={"reason": str(error)})
        raise ServiceUnavailableException(
            detail="the identity provider cannot be reached; try again"
        ) from None
    except InvalidToken as error:
        log.info("OIDC renewal refused", extra={"reason": str(error)})
        raise NotAuthorizedException(
            detail=f"the session cannot be renewed: {error}", headers=CHALLENGE
        ) from None
    return _session(verifier, done)


def _session(verifier: OidcVerifier, done: SignedIn) -> OidcSession:
    """The board's session for a checked ID token; 403 when it grants no Aether role."""
    principal = done.principal
    if not principal.scopes:
        raise PermissionDeniedException(
            detail="your account has no Aether role",
            extra={"role_claim": verifier.settings.role_claim},
        )
    log.info("OIDC session", extra={"principal": principal.id, "scopes": sorted(principal.scopes)})
    return OidcSession(
        token=done.token,
        expires_at=done.expires_at,
        id=principal.id,
        name=principal.name,
        kind=principal.kind,
        scopes=sorted(principal.scopes),
        refresh_token=done.refresh_token,
    )


OIDC_ROUTES = [oidc_config, oidc_token, oidc_refresh]
