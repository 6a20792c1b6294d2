"""Plain ASGI endpoints for liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def healthz(check: Callable[[], tuple[bool, str]] | None = None) -> ASGIApp:
    """Liveness: the process answers, and ``check()``, if given, says it is of use (a
    process holding something it can never let go of answers 503, so its supervisor
    replaces it)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if check is not None:
            ok, detail = check()
            if not ok:
                body = json.dumps({"status": "unhealthy", "detail": detail}).encode()
                await _respond(send, 503, body, "application/json")
                return
        await _respond(send, 200, b'{"status":"ok"}', "application/json")

    return app


def readyz(check: Callable[[], tuple[bool, str]]) -> ASGIApp:
    """Readiness: ``check()`` says whether the service can do its work, and why not. The
    answer carries the process id, so a supervisor can tell its own child from another
    program answering on the same port."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ok, detail = check()
        status = "ready" if ok else "not-ready"
        body = json.dumps({"status": status, "detail": detail, "pid": os.getpid()}).encode()
        await _respond(send, 200 if ok else 503, body, "application/json")

    return app


def metrics() -> ASGIApp:
    """Prometheus text exposition of the default registry."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, generate_latest(), CONTENT_TYPE_LATEST)

    return app
