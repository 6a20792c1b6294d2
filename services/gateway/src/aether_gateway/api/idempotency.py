"""``Idempotency-Key`` on POST: a repeated request gets the first answer back.

The first successful (2xx) answer to a caller's key is kept for a day with a hash of the
request. The same key with the same request is answered from the store (with
``Idempotent-Replayed: true``) without running the route again; the same key with a
different request is refused with 422. Answers that are errors are not kept, so a
request that failed may be retried with its key. Routes whose events are named by their
step are idempotent anyway; the store makes the *answer* the same too.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import ClientException, HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from aether_gateway.adapters.limits import IdempotencyStore, StoredResponse
from aether_gateway.api.admin import NO_IDEMPOTENCY_OPT
from aether_gateway.domain.auth import Principal

HEADER = b"idempotency-key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_KEPT_HEADERS = (b"content-type", b"location")


class IdempotencyMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        key = _header(scope, HEADER)
        principal = scope.get("user")
        if scope.get("method") != "POST" or key is None or not isinstance(principal, Principal):
            await next_app(scope, receive, send)
            return
        handler = scope.get("route_handler")
        if (getattr(handler, "opt", None) or {}).get(NO_IDEMPOTENCY_OPT):
            raise ClientException(detail="this route does not take an Idempotency-Key")
        if not _KEY.match(key):
            raise ClientException(
                detail="Idempotency-Key must be 1 to 255 visible ASCII characters",
                extra={"key": "Idempotency-Key"},
            )
        body = await _read_body(receive)
        path = str(scope.get("path", ""))
        digest = hashlib.sha256(b"POST\x00" + path.encode() + b"\x00" + body).hexdigest()
        stored = await self.store.get(principal.id, key)
        if stored is not None:
            if stored.request_hash != digest:
                raise HTTPException(
                    status_code=422,
                    detail="this Idempotency-Key was used before with a different request",
                    extra={"first_path": stored.path},
                )
            await _replay(stored, send)
            return

        captured: dict[str, Any] = {"status": 0, "headers": [], "body": b""}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [
                    [k.decode(), v.decode()]
                    for k, v in message.get("headers", [])
                    if k.lower() in _KEPT_HEADERS
                ]
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        await next_app(scope, _replaying(body, receive), capture)
        if 200 <= captured["status"] < 300:
            await self.store.put(
                principal.id,
                key,
                StoredResponse(
                    method="POST",
                    path=path,
                    request_hash=digest,
                    status_code=captured["status"],
                    headers=captured["headers"],
                    body=captured["body"],
                ),
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The request body once more, then whatever the client sends next (a disconnect)."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _replay(stored: StoredResponse, send: Send) -> None:
    headers = [(k.encode(), v.encode()) for k, v in stored.headers]
    headers.append((b"idempotent-replayed", b"true"))
    headers.append((b"content-length", str(len(stored.body)).encode()))
    await send({"type": "http.response.start", "status": stored.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})
