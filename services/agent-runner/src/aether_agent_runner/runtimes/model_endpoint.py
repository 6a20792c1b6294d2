"""The metered model endpoint: how a CLI agent in a sandbox without a network calls the
model, without holding the model's key, and within the attempt's limits.

The runner serves plain HTTP on a unix socket in a directory the sandbox can read
(``relay_inside`` carries the sandbox's loopback to it); the tool is given that loopback
as ``ANTHROPIC_BASE_URL`` and, as ``ANTHROPIC_API_KEY``, a key made for the attempt
(``ModelEndpoint.placeholder``) that is worth nothing anywhere else. Each request:

- must be ``POST /v1/messages`` or ``POST /v1/messages/count_tokens`` (anything else is
  ``404``, another method ``405``), carry the attempt's key (``401`` otherwise), a body
  of at most ``MAX_BODY`` bytes (``413``) naming a ``model`` the runner's tiers have or
  the attempt's own (``400``);
- is sent on to the runner's own endpoint (``https`` or ``http``) with the real key, and
  its reply comes back unchanged, a stream event by event as it arrives;
- counts, when it is a message: each reply's usage (the JSON reply's ``usage``, a
  stream's ``message_start`` and ``message_delta``) is priced by the price table and
  published as the attempt's ``UsageRecorded`` while the tool runs (``Meter``). A
  message the attempt's turn, token or cost limit forbids is refused (``403``
  ``permission_error``, saying which limit) and ends the attempt, as a limit ends the
  built-in loop.

Every answer of the runner's own is a Messages API error body, which the anthropic SDK
and CLI agents report as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import msgspec

from aether_agent_runner.adapters.model import Observer
from aether_agent_runner.domain import Limits, limit_reached
from aether_events import Usage
from aether_llm import PriceTable
from aether_llm.metrics import UsageReader, metered_http_client

if TYPE_CHECKING:
    from aiohttp import web

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
SERVED = (MESSAGES, COUNT_TOKENS)
# The largest request body passed on: the Messages API's own limit.
MAX_BODY = 32 * 1024 * 1024
# The largest whole (not streamed) reply read before it is passed back.
MAX_REPLY = 64 * 1024 * 1024
# The tool's request headers passed on (its key is replaced by the real one); any other
# one, a proxy's or a credential's, stays here.
REQUEST_HEADERS = ("anthropic-version", "anthropic-beta", "content-type", "accept", "user-agent")
# The reply's headers passed back, besides every ``anthropic-*`` one.
REPLY_HEADERS = frozenset({"content-type", "request-id", "retry-after", "x-should-retry"})
UPSTREAM_TIMEOUT = httpx2.Timeout(600.0, connect=30.0)


class _Named(msgspec.Struct):
    """The one field of a request body the endpoint reads (the rest is skipped)."""

    model: Any = None


_NAMED = msgspec.json.Decoder(_Named)


@dataclass
class Meter:
    """An attempt's model calls as they pass the endpoint: counted, priced, published (with
    ``publish``), and held to the attempt's limits. ``turns`` and ``usage`` start from what
    earlier runs of the attempt spent; ``record`` journals each reply before it is
    published (a resumed run counts it)."""

    limits: Limits
    observer: Observer
    prices: PriceTable
    turns: int = 0
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    publish: bool = True
    record: Callable[[str, Usage], Awaitable[None]] | None = None
    # The limit that refused a call; set, the attempt is over.
    reason: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Calls sent on and not yet answered: they count against the turn limit already.
    in_flight: int = 0

    def refusal(self) -> str | None:
        """The limit that forbids another call, or ``None``. The wall time is the
        sandbox's: a tool past it is killed, not refused."""
        if self.reason is None:
            self.reason = limit_reached(self.limits, self.turns + self.in_flight, self.usage, 0.0)
        return self.reason

    async def replied(self, model: str, counts: dict[str, Any]) -> None:
        """Count one reply (its usage object, cumulative figures merged)."""
        tokens = Usage(
            input_tokens=_count(counts, "input_tokens"),
            output_tokens=_count(counts, "output_tokens"),
            cache_creation_input_tokens=_count(counts, "cache_creation_input_tokens"),
            cache_read_input_tokens=_count(counts, "cache_read_input_tokens"),
        )
        priced = self.prices.priced(model, tokens)
        self.turns += 1
        self.usage = self.usage.plus(priced)
        if self.record is not None:
            await self.record(model, tokens)
        if self.publish:
            await self.observer.model_called(self.turns, priced)


def _count(counts: dict[str, Any], key: str) -> int:
    value = counts.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def api_error(status: int, kind: str, message: str) -> web.Response:
    """An answer of the endpoint's own, shaped as the Messages API's errors are."""
    from aiohttp import web

    body = {"type": "error", "error": {"type": kind, "message": f"Aether: {message}"}}
    return web.json_response(body, status=status)


@dataclass
class ModelEndpoint:
    """The endpoint one attempt's tool calls the model through (see the module)."""

    base_url: str
    api_key: str
    meter: Meter
    # The models a request may name; ``None``: any.
    models: frozenset[str] | None = None
    placeholder: str = field(default_factory=lambda: "aether-attempt-" + secrets.token_hex(24))
    _client: httpx2.AsyncClient | None = field(default=None, init=False, repr=False)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set, init=False, repr=False)

    @contextlib.asynccontextmanager
    async def serving(self, socket_path: Path) -> AsyncIterator[None]:
        """Serve the endpoint on ``socket_path`` while in use; a call still at work when
        it ends is cut off."""
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._client = metered_http_client()
        try:
            await web.UnixSite(runner, str(socket_path)).start()
            yield
        finally:
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await runner.cleanup()
            client, self._client = self._client, None
            await client.aclose()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await self._answer(request)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        path = request.rel_url.raw_path
        if path not in SERVED:
            return api_error(
                404, "not_found_error", f"this endpoint serves only POST {' and '.join(SERVED)}"
            )
        if request.method != "POST":
            return api_error(405, "invalid_request_error", f"{path} takes POST only")
        given = request.headers.get("x-api-key", "")
        bearer = request.headers.get("authorization", "")
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if not hmac.compare_digest(given.encode(), self.placeholder.encode()):
            return api_error(401, "authentication_error", "invalid x-api-key for this attempt")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return api_error(413, "request_too_large", f"a request may hold {MAX_BODY:,} bytes")
        try:
            model = _NAMED.decode(body).model
        except msgspec.DecodeError:
            model = None
        if not isinstance(model, str) or not model:
            return api_error(400, "invalid_request_error", "the body is not JSON naming a model")
        if self.models is not None and model not in self.models:
            allowed = ", ".join(sorted(self.models))
            message = f"model {model[:100]!r} is not one this attempt may use ({allowed})"
            return api_error(400, "invalid_request_error", message)
        if path != MESSAGES:
            return await self._forward(request, body, model, metered=False)
        meter = self.meter
        if (reason := meter.refusal()) is not None:
            meter.ended.set()
            return api_error(403, "permission_error", f"{reason}; no more model calls")
        meter.in_flight += 1
        try:
            return await self._forward(request, body, model, metered=True)
        finally:
            meter.in_flight -= 1

    async def _forward(
        self, request: web.Request, body: bytes, model: str, *, metered: bool
    ) -> web.StreamResponse:
        from aiohttp import web

        assert self._client is not None
        headers = {name: value for name in REQUEST_HEADERS if (value := request.headers.get(name))}
        headers["x-api-key"] = self.api_key
        headers["accept-encoding"] = "identity"  # usage is read from the reply as it passes
        url = self.base_url.rstrip("/") + request.rel_url.raw_path
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        sent = self._client.build_request(
            "POST", url, content=body, headers=headers, timeout=UPSTREAM_TIMEOUT
        )
        try:
            reply = await self._client.send(sent, stream=True)
        except httpx2.HTTPError as error:
            message = f"the model endpoint could not be reached: {type(error).__name__}"
            return api_error(502, "api_error", message)
        try:
            passed = {
                name: value
                for name, value in reply.headers.items()
                if name.lower() in REPLY_HEADERS or name.lower().startswith("anthropic-")
            }
            counted = metered and reply.is_success
            if reply.headers.get("content-type", "").startswith("text/event-stream"):
                return await self._stream(request, reply, passed, model if counted else None)
            whole = bytearray()
            async for chunk in reply.aiter_raw():
                whole += chunk
                if len(whole) > MAX_REPLY:
                    return api_error(502, "api_error", "the model's reply is too large")
            if counted:
                reader = UsageReader(streamed=False)
                reader.feed(bytes(whole))
                if usage := reader.finish():
                    await self.meter.replied(model, usage)
            return web.Response(status=reply.status_code, body=bytes(whole), headers=passed)
        except httpx2.HTTPError as error:
            message = f"the model's reply was cut off: {type(error).__name__}"
            return api_error(502, "api_error", message)
        finally:
            await reply.aclose()

    async def _stream(
        self,
        request: web.Request,
        reply: httpx2.Response,
        headers: dict[str, str],
        model: str | None,
    ) -> web.StreamResponse:
        """Pass a stream back as it comes, reading its usage on the way; the reply is
        counted once it ends (or is cut off: what was received may be billed)."""
        from aiohttp import web

        response = web.StreamResponse(status=reply.status_code, headers=headers)
        await response.prepare(request)
        reader = UsageReader(streamed=True) if model is not None else None
        try:
            async for chunk in reply.aiter_raw():
                if reader is not None:
                    reader.feed(chunk)
                await response.write(chunk)
        finally:
            if reader is not None and model is not None and (usage := reader.finish()):
                await self.meter.replied(model, usage)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
