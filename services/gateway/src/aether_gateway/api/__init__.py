"""The REST and SSE API: routes that decode and validate, call the read model or the
bus, and answer. Every error answers ``{"error": "<what went wrong>", "detail": ...}``."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from aether_gateway.api.activity import ACTIVITY_ROUTES
from aether_gateway.api.admin import ADMIN_ROUTES
from aether_gateway.api.commands import COMMAND_ROUTES
from aether_gateway.api.context import GatewayContext, request_context
from aether_gateway.api.errors import on_http_error, on_unexpected_error, on_validation_error
from aether_gateway.api.inputs import InputGuard, strict_body
from aether_gateway.api.live import LIVE_ROUTES
from aether_gateway.api.oidc import OIDC_ROUTES
from aether_gateway.api.queries import QUERY_ROUTES
from aether_gateway.api.runtimes import RUNTIME_ROUTES
from aether_gateway.api.steps import STEP_ROUTES
from aether_gateway.api.transcript import TRANSCRIPT_ROUTES

__all__ = [
    "GatewayContext",
    "InputGuard",
    "on_http_error",
    "on_unexpected_error",
    "on_validation_error",
    "router",
]


def router() -> Router:
    """Every API route, with the context of the gateway a request came to injected as
    ``ctx`` into each handler and its JSON body (if it takes one) checked strictly
    before it runs."""
    return Router(
        path="/",
        route_handlers=[
            *COMMAND_ROUTES,
            *QUERY_ROUTES,
            *RUNTIME_ROUTES,
            *LIVE_ROUTES,
            *ADMIN_ROUTES,
            *STEP_ROUTES,
            *ACTIVITY_ROUTES,
            *TRANSCRIPT_ROUTES,
            *OIDC_ROUTES,
        ],
        dependencies={"ctx": Provide(request_context, sync_to_thread=False)},
        before_request=strict_body,
    )
