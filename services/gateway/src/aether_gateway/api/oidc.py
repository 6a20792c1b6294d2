"""The board's OIDC sign-in: what the browser needs to start it, and the code exchange
that finishes it; and, for a confidential client, the device sign-in (RFC 8628) the
command line runs through the gateway, which holds the secret. All open (the caller has
no token yet); everything after uses the ID token they hand out, checked like any other
bearer token."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from aether_gateway.adapters.oidc import (
    RETRY_SECONDS,
    InvalidToken,
    OidcVerifier,
    ProviderUnavailable,
    SignedIn,
    SignInPending,
)
from aether_gateway.api.auth import CHALLENGE
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import error_responses, service_unavailable
from aether_gateway.api.idempotency import NO_IDEMPOTENCY_OPT
from aether_gateway.api.limits import SIGN_IN_RATE

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
    # The client has a secret the gateway holds: a command line signs in through the
    # gateway's device sign-in (``device``: the provider offers it), never at the
    # provider's token endpoint itself.
    confidential: bool = False
    device: bool = False


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
        raise service_unavailable(
            "the identity provider cannot be reached; try again", RETRY_SECONDS
        ) from None
    return OidcConfig(
        enabled=True,
        issuer=found.issuer,
        authorization_endpoint=found.authorization_endpoint,
        end_session_endpoint=found.end_session_endpoint,
        client_id=verifier.settings.client_id,
        scopes=list(verifier.settings.scopes),
        redirect_uri=verifier.redirect_url,
        confidential=verifier.confidential,
        device=verifier.confidential and bool(found.device_authorization_endpoint),
    )


@post(
    "/auth/oidc/token",
    status_code=HTTP_200_OK,
    summary="Finish an OIDC sign-in: swap the code for a checked ID token",
    guards=[SIGN_IN_RATE],
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
    with _asking_provider("sign-in", NOT_VALID):
        done = await verifier.sign_in(data.code, data.code_verifier, data.nonce)
    return _session(verifier, done)


class OidcRefresh(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The refresh token a sign-in (or the last renewal) handed out."""

    refresh_token: _Opaque


@post(
    "/auth/oidc/refresh",
    status_code=HTTP_200_OK,
    summary="Renew an OIDC session before its ID token ends",
    guards=[SIGN_IN_RATE],
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
    with _asking_provider("renewal", "the session cannot be renewed: "):
        done = await verifier.refresh(data.refresh_token)
    return _session(verifier, done)


class OidcDeviceStart(msgspec.Struct, kw_only=True):
    """A device sign-in begun: the user enters ``user_code`` at ``verification_uri``;
    the command line then asks ``/auth/oidc/device/token`` with ``device_code`` every
    ``interval`` seconds until it is approved or ``expires_in`` seconds have passed."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


class OidcDeviceCode(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The device code a device sign-in's start handed out."""

    device_code: _Opaque


def _confidential(ctx: GatewayContext) -> OidcVerifier:
    verifier = ctx.oidc
    if verifier is None or not verifier.settings.browser_sign_in:
        raise NotFoundException(detail="OIDC sign-in is not configured")
    if not verifier.confidential:
        raise NotFoundException(
            detail="the gateway's OIDC client is public: sign in at the provider directly"
        )
    return verifier


@post(
    "/auth/oidc/device",
    status_code=HTTP_200_OK,
    summary="Start a device sign-in as the gateway's confidential client (the CLI's)",
    guards=[SIGN_IN_RATE],
    opt={**_OPEN, NO_IDEMPOTENCY_OPT: True},
    # OpenAPI: one empty requirement means no credentials are needed.
    security=[{}],
    responses=error_responses(401, 404, 503),
    tags=["auth"],
)
async def oidc_device(ctx: NamedDependency[GatewayContext]) -> OidcDeviceStart:
    """The provider's device authorization endpoint, asked with the client secret the
    command line does not hold; 401 when the provider refuses."""
    verifier = _confidential(ctx)
    with _asking_provider("device sign-in", NOT_VALID):
        started = await verifier.device_start()
    return OidcDeviceStart(
        device_code=started.device_code,
        user_code=started.user_code,
        verification_uri=started.verification_uri,
        verification_uri_complete=started.verification_uri_complete,
        expires_in=started.expires_in,
        interval=started.interval,
    )


@post(
    "/auth/oidc/device/token",
    status_code=HTTP_200_OK,
    summary="Finish a device sign-in once the user approved it",
    guards=[SIGN_IN_RATE],
    opt={**_OPEN, NO_IDEMPOTENCY_OPT: True},
    # OpenAPI: one empty requirement means no credentials are needed.
    security=[{}],
    responses=error_responses(400, 401, 403, 404, 503),
    tags=["auth"],
)
async def oidc_device_token(
    ctx: NamedDependency[GatewayContext], data: JSONBody[OidcDeviceCode]
) -> OidcSession:
    """The session, as a board's sign-in gives; 400 with ``detail.oauth_error``
    ``authorization_pending`` (or ``slow_down``: wait longer between asks) while the
    user has not approved it; 401 once denied or expired."""
    verifier = _confidential(ctx)
    with _asking_provider("device sign-in", NOT_VALID):
        try:
            done = await verifier.device_finish(data.device_code)
        except SignInPending as pending:
            raise ClientException(
                detail="the sign-in is not approved yet",
                extra={
                    "oauth_error": "slow_down" if pending.slow_down else "authorization_pending"
                },
            ) from None
    return _session(verifier, done)


# What a refused sign-in is told, before the provider's reason.
NOT_VALID = "the OIDC sign-in is not valid: "


@contextlib.contextmanager
def _asking_provider(step: str, refusal: str) -> Iterator[None]:
    """A sign-in ``step``'s question to the provider: 503 when it cannot be reached, 401
    when it refuses (``refusal``, then its reason); both logged."""
    try:
        yield
    except ProviderUnavailable as error:
        log.warning(f"OIDC {step} failed", extra={"reason": str(error)})
        raise service_unavailable(
            "the identity provider cannot be reached; try again", RETRY_SECONDS
        ) from None
    except InvalidToken as error:
        log.info(f"OIDC {step} refused", extra={"reason": str(error)})
        raise NotAuthorizedException(detail=f"{refusal}{error}", headers=CHALLENGE) from None


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


OIDC_ROUTES = [oidc_config, oidc_token, oidc_refresh, oidc_device, oidc_device_token]
