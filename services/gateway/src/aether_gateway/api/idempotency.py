"""``Idempotency-Key`` on POST: copies of a request get the first one's answer.

The key is reserved (atomically, in PostgreSQL) when its first request arrives, before
the route runs, so only that request acts and counts against rate limits. Copies that
arrive while it runs wait for its answer and give the same status and body (with
``Idempotent-Replayed: true``): copies on this replica wait on it in memory, copies on
other replicas poll the reservation. A successful (2xx) answer is kept for a day with a
hash of the request, and later copies are answered from the store without running the
route; an error is not kept, so a request that failed may be tried again with its key.
The same key with a different request is refused with 422; a copy that waited
``wait_seconds`` without an answer gets 409 and may try again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import ClientException, HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.status_codes import HTTP_409_CONFLICT
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from aether_gateway.adapters.limits import (
    Fingerprint,
    IdempotencyStore,
    InProgress,
    Reserved,
    StoredResponse,
)
from aether_gateway.api.served import context_of
from aether_gateway.domain.auth import Principal

HEADER = b"idempotency-key"
# Route option: a repeated request must not be answered from the idempotency store
# (it would have to keep the answer, and a token's secret must not be kept).
NO_IDEMPOTENCY_OPT = "no_idempotency"
WAIT_SECONDS = 30.0
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_KEPT_HEADERS = (b"content-type", b"location", b"retry-after")
_POLL_SECONDS = (0.02, 0.5)  # first and longest pause between looks at a reservation


@dataclass
class _Flight:
    """A request running on this replica under a key; its copies here wait on it."""

    request: Fingerprint
    # The answer, or None when the request ended without one (its copies then retry).
    answer: asyncio.Future[StoredResponse | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class IdempotencyMiddleware(ASGIMiddleware):
    """Hands each POST to the ``IdempotentPosts`` of the gateway it came to."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        await context_of(scope).idempotent.handle(scope, receive, send, next_app)


class IdempotentPosts:
    """One gateway's requests under an Idempotency-Key: its copies here wait on the
    request running here (``_flights``), copies elsewhere on the reservation in
    ``store``."""

    def __init__(self, store: IdempotencyStore, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self.store = store
        self.wait_seconds = wait_seconds
        self._flights: dict[tuple[str, str], _Flight] = {}

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
        request = Fingerprint(method="POST", path=path, request_hash=digest)
        slot = (principal.id, key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds

        while (flight := self._flights.get(slot)) is not None:
            _same_request(flight.request, request)
            try:
                answer = await asyncio.wait_for(
                    asyncio.shield(flight.answer), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                raise _still_running() from None
            if answer is not None:
                await _replay(answer, send)
                return
            # The request it copied ended without an answer: try in its place.

        flight = _Flight(request)
        self._flights[slot] = flight
        answer = None
        try:
            answer = await self._answer(
                scope,
                principal.id,
                key,
                request,
                deadline,
                _replaying(body, receive),
                send,
                next_app,
            )
        finally:
            del self._flights[slot]
            flight.answer.set_result(answer)

    async def _answer(
        self,
        scope: Scope,
        principal: str,
        key: str,
        request: Fingerprint,
        deadline: float,
        receive: Receive,
        send: Send,
        next_app: ASGIApp,
    ) -> StoredResponse:
        """Reserve the key and run the route, or wait for the request holding it."""
        loop = asyncio.get_running_loop()
        pause = _POLL_SECONDS[0]
        while True:
            state = await self.store.reserve(principal, key, request)
            if isinstance(state, StoredResponse):
                _same_request(state, request)
                await _replay(state, send)
                return state
            if isinstance(state, Reserved):
                return await self._run(
                    scope, principal, key, state, request, receive, send, next_app
                )
            assert isinstance(state, InProgress)
            _same_request(state.request, request)
            if loop.time() + pause > deadline:
                raise _still_running()
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_SECONDS[1])

    async def _run(
        self,
        scope: Scope,
        principal: str,
        key: str,
        reserved: Reserved,
        request: Fingerprint,
        receive: Receive,
        send: Send,
        next_app: ASGIApp,
    ) -> StoredResponse:
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

        try:
            await next_app(scope, receive, capture)
        except BaseException:
            # Shielded: a cancelled request still gives its key up (else its lease would).
            await asyncio.shield(self.store.release(principal, key, reserved))
            raise
        answer = StoredResponse(
            method=request.method,
            path=request.path,
            request_hash=request.request_hash,
            status_code=captured["status"],
            headers=captured["headers"],
            body=captured["body"],
        )
        if 200 <= answer.status_code < 300:
            await self.store.complete(principal, key, reserved, answer)
        else:
            await self.store.release(principal, key, reserved)
        return answer


def _same_request(first: Fingerprint | StoredResponse, request: Fingerprint) -> None:
    if first.request_hash != request.request_hash:
        raise HTTPException(
            status_code=422,
            detail="this Idempotency-Key was used before with a different request",
            extra={"first_path": first.path},
        )


def _still_running() -> HTTPException:
    return HTTPException(
        status_code=HTTP_409_CONFLICT,
        detail="the first request with this Idempotency-Key is still running; try again",
        headers={"Retry-After": "1"},
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
