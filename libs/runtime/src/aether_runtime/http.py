"""HTTP request metrics for any ASGI app: requests by route, method and status, and how
long they took.

The metrics are registered on first use rather than at import, and a process that has
already registered the same names with the same labels (the gateway defines its own,
until it moves to this helper) shares them instead of failing on a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from aether_runtime.health import ASGIApp, Message, Receive, Scope, Send

# Event streams last for minutes: their duration says nothing about the service.
_STREAMING = b"text/event-stream"


M = TypeVar("M", Counter, Histogram)
REQUESTS = "aether_http_requests_total"
SECONDS = "aether_http_request_duration_seconds"


@cache
def http_metrics(registry: CollectorRegistry = REGISTRY) -> tuple[Counter, Histogram]:
    """``aether_http_requests_total`` and ``aether_http_request_duration_seconds``."""
    requests = _registered(registry, REQUESTS, Counter, ("route", "method", "status"))
    if requests is None:
        requests = Counter(
            REQUESTS,
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
    seconds = _registered(registry, SECONDS, Histogram, ("route", "method"))
    if seconds is None:
        seconds = Histogram(
            SECONDS,
            "Time to answer an HTTP request (event streams are left out)",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
    return requests, seconds


def _registered(
    registry: CollectorRegistry, name: str, kind: type[M], labels: tuple[str, ...]
) -> M | None:
    """The metric already registered under ``name``, if it is the same kind with the same
    labels (prometheus_client has no public lookup by name)."""
    existing = registry._names_to_collectors.get(name)
    if existing is None:
        return None
    if not isinstance(existing, kind) or tuple(existing._labelnames) != labels:
        raise ValueError(f"{name} is registered already, with another type or labels")
    return existing


def route_of(scope: Scope, fixed: str | None = None) -> str:
    """The route a request matched: ``fixed`` when given, else the template the framework
    left in the scope (Litestar sets ``path_template``), else ``unmatched`` so raw paths
    never become label values."""
    if fixed is not None:
        return fixed
    template: Any = scope.get("path_template") or scope.get("route_template")
    return str(template) if template else "unmatched"


def instrument(
    app: ASGIApp, route: str | None = None, registry: CollectorRegistry = REGISTRY
) -> ASGIApp:
    """Wrap ``app`` so every HTTP request it answers is counted and timed under ``route``
    (or the framework's route template when ``route`` is None)."""
    requests, seconds = http_metrics(registry)

    async def metered(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        streaming = False

        async def observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers: Any = message.get("headers") or []
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(_STREAMING) for k, v in headers
                )
            await send(message)

        try:
            await app(scope, receive, observe)
        finally:
            name = route_of(scope, route)
            method = str(scope.get("method", ""))
            requests.labels(name, method, str(status)).inc()
            if not streaming:
                seconds.labels(name, method).observe(time.perf_counter() - began)

    return metered


def middleware() -> Callable[[ASGIApp], ASGIApp]:
    """The same as an ASGI middleware factory (for frameworks that take one)."""
    return lambda app: instrument(app)
