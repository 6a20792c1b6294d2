"""Administration: API tokens, rebuilding the read model, and who the caller is."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from aether_gateway.adapters.tokens import TokenInfo
from aether_gateway.api.auth import ADMIN, READ
from aether_gateway.api.bodies import (
    CreateToken,
    RebuildResult,
    TokenCreated,
    TokenList,
    WhoAmI,
)
from aether_gateway.api.context import GatewayContext, principal_of
from aether_gateway.api.errors import error_responses, not_found
from aether_gateway.api.idempotency import NO_IDEMPOTENCY_OPT
from aether_gateway.api.limits import COMMAND_RATE


@post(
    "/admin/tokens",
    status_code=HTTP_201_CREATED,
    summary="Create an API token (its secret is shown once)",
    guards=[ADMIN, COMMAND_RATE],
    responses=error_responses(400, 401, 403, 429),
    opt={NO_IDEMPOTENCY_OPT: True},
    tags=["admin"],
)
async def create_token(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    data: JSONBody[CreateToken],
) -> TokenCreated:
    """Scopes: ``read`` (queries and event streams), ``write`` (also commands),
    ``admin`` (also tokens and the read model). Only a hash of the secret is stored."""
    info, secret = await ctx.tokens.create(
        data.name.strip(),
        list(data.scopes),
        created_by=principal_of(request).name,
        expires_in_days=data.expires_in_days,
    )
    return TokenCreated(**msgspec.structs.asdict(info), token=secret)


@get(
    "/admin/tokens",
    summary="List API tokens (never their secrets)",
    guards=[ADMIN],
    responses=error_responses(400, 401, 403),
    tags=["admin"],
)
async def list_tokens(
    ctx: NamedDependency[GatewayContext],
    include_revoked: Annotated[bool, QueryParameter()] = False,
) -> TokenList:
    return TokenList(tokens=await ctx.tokens.list(include_revoked=include_revoked))


@delete(
    "/admin/tokens/{token_id:str}",
    status_code=HTTP_200_OK,
    summary="Revoke an API token",
    guards=[ADMIN, COMMAND_RATE],
    responses=error_responses(400, 401, 403, 404, 429),
    tags=["admin"],
)
async def revoke_token(ctx: NamedDependency[GatewayContext], token_id: FromPath[str]) -> TokenInfo:
    """The token is refused from now on, and the event streams opened with it end: on
    this replica here, on the others when the revocation's notification reaches them."""
    revoked = await ctx.tokens.revoke(token_id)
    if revoked is None:
        raise not_found(f"token {token_id!r}", token_id=token_id)
    ctx.open_streams.revoked(token_id)
    return revoked


@post(
    "/admin/read-model/rebuild",
    status_code=HTTP_200_OK,
    summary="Rebuild the read model from the event streams",
    guards=[ADMIN, COMMAND_RATE],
    responses=error_responses(401, 403, 429, 503),
    tags=["admin"],
)
async def rebuild_read_model(ctx: NamedDependency[GatewayContext]) -> RebuildResult:
    """Folds the whole mission stream and the telemetry still kept into fresh rows, in
    one transaction: queries answer from the old rows until it commits."""
    began = time.monotonic()
    missions, telemetry, folded = await ctx.rebuild()
    return RebuildResult(
        missions_sequence=missions,
        telemetry_sequence=telemetry,
        events_folded=folded,
        seconds=round(time.monotonic() - began, 3),
    )


@get(
    "/auth/whoami",
    summary="The caller, as the gateway sees it",
    guards=[READ],
    responses=error_responses(401, 403),
    tags=["admin"],
)
async def whoami(request: Request[Any, Any, Any]) -> WhoAmI:
    principal = principal_of(request)
    return WhoAmI(
        id=principal.id, name=principal.name, kind=principal.kind, scopes=sorted(principal.scopes)
    )


ADMIN_ROUTES = [create_token, list_tokens, revoke_token, rebuild_read_model, whoami]
