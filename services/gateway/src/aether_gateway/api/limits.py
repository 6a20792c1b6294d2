"""Per-caller rate limits on write requests, counted in PostgreSQL (every replica shares
them) and answered ``429`` with ``Retry-After``.

``POST /missions`` has a limit of its own (``AETHER_MISSION_RATE_LIMIT``), counted once
the request is known to be valid. Every other write route (the commands, tokens, the
read model's rebuild) takes ``COMMAND_RATE`` as its guard after its scope guard: a
request is counted once its caller may make it and before anything else happens, so a
flood of requests is refused however wrong their bodies are, and nothing is published
past the limit. A copy answered from the idempotency store never reaches a guard, so it
is not counted again.

Reads (``GET``) have a limit per caller on each replica (``AETHER_READ_RATE_LIMIT``), in
its memory, taken by every route as an app-wide guard once the caller may read; an event
stream counts once as it opens, and a caller may hold at most ``AETHER_STREAM_LIMIT``
streams open at once on a replica (``api.live``).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler

from aether_gateway.adapters.limits import BucketLimiter, RateLimiter
from aether_gateway.api.errors import retry_seconds
from aether_gateway.api.served import context_of
from aether_gateway.domain.auth import Principal


async def within_limit(limiter: RateLimiter, caller: str, what: str) -> None:
    """Count one hit of ``caller``'s; past the limit, a 429 saying when to try again."""
    retry_after = await limiter.hit(caller)
    if retry_after is not None:
        # Whole seconds, rounded up: a wait under half a second said as "0" was asked
        # again at once, and refused again.
        seconds = retry_seconds(retry_after)
        raise too_many(
            f"at most {limiter.limit} {what} per {limiter.window_seconds} seconds;"
            f" try again in {seconds} s",
            seconds,
        )


async def command_rate(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard: one more write request of the caller's (``AETHER_COMMAND_RATE_LIMIT``)."""
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):  # an open route: the scope guards refuse others
        return
    ctx = context_of(connection.scope)
    await within_limit(ctx.command_rate, principal.id, "write requests")


COMMAND_RATE = command_rate

_READS = frozenset({"GET", "HEAD"})


def too_many(detail: str, retry_after: float) -> TooManyRequestsException:
    """A 429 saying when to try again (whole seconds, at least one)."""
    return TooManyRequestsException(
        detail=detail, headers={"Retry-After": str(retry_seconds(retry_after))}
    )


async def read_rate(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard on every route: one more read of the caller's (``AETHER_READ_RATE_LIMIT``),
    counted only for a read a caller with a token may make (the scope guards refuse the
    others, uncounted)."""
    if connection.scope.get("method") not in _READS:
        return
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal) or not principal.allows("read"):
        return
    limiter: BucketLimiter = context_of(connection.scope).read_rate
    retry_after = limiter.hit(principal.id)
    if retry_after is not None:
        raise too_many(
            f"at most {limiter.limit} reads per {limiter.window_seconds} seconds on this"
            f" replica; try again in {retry_seconds(retry_after)} s",
            retry_after,
        )


READ_RATE = read_rate


async def sign_in_rate(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard on the open sign-in steps, which have no caller yet and each have the
    gateway ask the OIDC provider with its own client credentials: per client address
    (``AETHER_SIGN_IN_RATE_LIMIT``), so that a flood from one address neither has the
    provider refuse the gateway's client nor keeps others from signing in."""
    client = connection.scope.get("client")
    address = client[0] if client else "unknown"
    limiter: BucketLimiter = context_of(connection.scope).sign_in_rate
    retry_after = limiter.hit(address)
    if retry_after is not None:
        raise too_many(
            f"at most {limiter.limit} sign-in steps per {limiter.window_seconds} seconds"
            f" from one address; try again in {retry_seconds(retry_after)} s",
            retry_after,
        )


SIGN_IN_RATE = sign_in_rate
