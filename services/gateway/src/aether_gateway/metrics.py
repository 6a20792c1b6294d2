"""The gateway's own metrics (the runtime's event metrics are exported beside them)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

from aether_runtime.metrics import at_zero

HTTP_REQUESTS = Counter(
    "aether_http_requests_total",
    "HTTP requests answered by the gateway, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "aether_http_request_duration_seconds",
    "Time to answer an HTTP request (event streams are left out: they last for minutes)",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SSE_CLIENTS = Gauge("aether_sse_clients", "Event-stream clients connected now")
SSE_EVENTS_SENT = Counter(
    "aether_sse_events_sent_total", "Events written to event-stream clients (replayed or live)"
)
PROJECTION_FAILURES = Counter(
    "aether_read_model_projection_failures_total",
    "Events the read model could not store as they were, recorded and passed over",
)
READ_MODEL_LAG = Gauge(
    "aether_read_model_lag_events",
    "Mission stream sequences stored but not yet folded into the read model",
)
READ_MODEL_REPAIRS = Counter(
    "aether_read_model_repairs_total",
    "Times the read model refolded from the stream what its consumer had not delivered:"
    " after a stall, over a gap, or all of it when the stream's history changed or the"
    " rows were folded by an older fold version (refold)",
    ["kind"],
)
TELEMETRY_LOST = Counter(
    "aether_telemetry_lost_total",
    "Telemetry messages (transcript entries among them) the stream dropped, by its age or"
    " size limit, before the gateway read them: counted when a gateway starts",
)
TRANSCRIPT_ENTRIES_DROPPED = Counter(
    "aether_transcript_entries_dropped_total",
    "Transcript entries not stored because their attempt already had the most the gateway"
    " keeps (AETHER_TRANSCRIPT_MAX_ENTRIES), each counted once",
)
REPAIR_KINDS = ("stalled", "gap", "diverged", "refold")
for _kind in REPAIR_KINDS:
    READ_MODEL_REPAIRS.labels(_kind)


def routes_at_zero(app: Litestar) -> None:
    """Export every route's requests (under the status its handler answers with) and
    request time at zero. Other statuses are open-ended and start at their first use."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            methods = sorted(handler.http_methods - {"OPTIONS", "HEAD"})
            if not methods:
                continue
            where = [route.path_format]
            at_zero(HTTP_REQUESTS, route=where, method=methods, status=[str(handler.status_code)])
            at_zero(HTTP_SECONDS, route=where, method=methods)


class HttpMetrics(ASGIMiddleware):
    """Counts every answered request under its route template, not its raw path."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        began = time.perf_counter()
        status = 500
        streaming = False

        async def observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                headers: Any = message.get("headers") or []
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in headers
                )
            await send(message)

        try:
            await next_app(scope, receive, observe)
        finally:
            route = str(scope.get("path_template") or "unmatched")
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            if not streaming:
                HTTP_SECONDS.labels(route, method).observe(time.perf_counter() - began)
