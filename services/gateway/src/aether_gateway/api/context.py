"""What the routes work with, built once per gateway (the routes find it on each
connection's scope: ``served``), and small helpers they share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException

from aether_events import Event, tag_of
from aether_gateway.adapters.bus import Bus
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.diffs import BrokerReader
from aether_gateway.adapters.hub import Hub
from aether_gateway.adapters.limits import BucketLimiter, RateLimiter, StreamSlots
from aether_gateway.adapters.oidc import OidcVerifier
from aether_gateway.adapters.queries import Queries
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.adapters.revocations import OpenStreams
from aether_gateway.adapters.runners import Runners
from aether_gateway.adapters.tokens import TokenStore
from aether_gateway.api.auth import Authenticator
from aether_gateway.api.errors import BUS_RETRY_SECONDS, service_unavailable
from aether_gateway.api.idempotency import IdempotentPosts
from aether_gateway.api.served import context_of
from aether_gateway.config import GatewaySettings
from aether_gateway.domain.auth import Principal

log = logging.getLogger("aether.gateway.api")


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


@dataclass
class GatewayContext:
    """The gateway's adapters, as the routes see them."""

    settings: GatewaySettings
    db: Database
    read_model: ReadModel
    queries: Queries
    bus: Bus
    hub: Hub
    tokens: TokenStore
    authenticator: Authenticator
    # The requests with an Idempotency-Key: their store, and those running here, which
    # their copies here wait on.
    idempotent: IdempotentPosts
    mission_rate: RateLimiter
    # Every other write request, per caller (``api.limits``).
    command_rate: RateLimiter
    # Reads per caller, and event streams open at once per caller, on this replica.
    read_rate: BucketLimiter
    streams: StreamSlots
    # The open sign-in steps, per client address, on this replica.
    sign_in_rate: BucketLimiter
    # The git broker's read API (the board's diffs and default branches).
    broker: BrokerReader
    # The registry of live agent runners (which runtimes exist).
    runners: Runners
    # Rebuilds the read model from both streams; set by the app (it needs the stream).
    rebuild: Any = None
    # The event streams open here, by token: a revocation ends them (``revocations``).
    open_streams: OpenStreams = field(default_factory=OpenStreams)
    # Set when the app shuts down, so open event streams end instead of holding it up.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # OIDC, when configured: bearer JWTs and the board's sign-in.
    oidc: OidcVerifier | None = None
    # Returns once the projection here folds its next run, or after the seconds given:
    # a query waiting for the read model looks again as soon as it may have moved.
    next_fold: Callable[[float], Awaitable[None]] = _pause
    # Has the projection here fold what waits for its run now (see ``LIVE_SPACING``).
    hurry: Callable[[], None] = lambda: None

    def mission_url(self, mission_id: str) -> str:
        return f"{self.settings.base_url}/missions/{mission_id}"

    async def publish(self, event: Event) -> int:
        """Publish a command's event; a bus that does not take it is a 503."""
        try:
            return await self.bus.publish(event)
        except Exception as error:
            log.exception("publishing failed", extra={"event_type": tag_of(type(event))})
            raise service_unavailable(
                "the event bus did not accept the request; try again",
                BUS_RETRY_SECONDS,
                reason=type(error).__name__,
            ) from error

    async def settled(self, within: float = 2.0) -> None:
        """Wait (briefly) until the read model has folded every event this gateway has
        streamed to clients, so a client that saw an event on a stream finds it in the
        queries it makes next; while the hub follows no stream (no client here wants
        one), every event the stream holds, so a command's event is found by the query
        made after it. Costs one position read when nothing is pending, and the stream's
        position while the hub is idle."""
        target = self.hub.last_sequence
        if not self.hub.following:
            try:
                target = max(target, await self.bus.last_sequence())
            except Exception as error:  # the bus out of reach: the read model as it is
                log.info("stream position not known", extra={"error": repr(error)})
        position = await self.read_model.position()
        if position >= target:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while position < target and loop.time() < deadline:
            self.hurry()  # at every look: the event may reach the projection after the hub
            await self.next_fold(0.02)
            position = await self.read_model.position()

    async def caught_up(self, within: float = 5.0) -> bool:
        """Wait until the read model has folded everything the stream held when called.

        Returns whether it was behind (so a caller knows a second look may differ).
        """
        target = await self.bus.last_sequence()
        position = await self.read_model.position()
        if position >= target:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while position < target and loop.time() < deadline:
            self.hurry()
            await self.next_fold(0.05)
            position = await self.read_model.position()
        return True


def request_context(request: Request[Any, Any, Any]) -> GatewayContext:
    """The routes' ``ctx`` dependency."""
    return context_of(request.scope)


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The authenticated caller (the auth middleware put it on the request)."""
    user = request.scope.get("user")
    if not isinstance(user, Principal):
        raise NotAuthorizedException(detail="authentication required")
    return user
