"""Which gateway a connection came to.

The routes are built once per process (``app.shared_routes``) and serve whichever
gateway a connection came to: the ASGI app of each gateway (``app.GatewayApp``) puts its
context on every connection's scope, where the routes' dependencies and the middleware
find it. (A module of its own: the context names the middleware's types.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from aether_gateway.api.context import GatewayContext

# Where a gateway's ASGI app puts its context on each connection's scope.
SCOPE_KEY = "aether.gateway.context"


def context_of(scope: Mapping[str, Any]) -> GatewayContext:
    """The context of the gateway a connection came to."""
    return cast("GatewayContext", scope[SCOPE_KEY])
