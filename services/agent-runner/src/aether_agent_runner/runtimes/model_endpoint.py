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
- when it is a message (its ``max_tokens`` a positive whole number, ``400`` otherwise),
  is held to the attempt's budget (``meter``): its worst case is reserved before it is
  sent on, beside every call in flight (its input bounded by its size or, when that
  leaves no room, by the model endpoint's ``count_tokens``), and a message the attempt's
  turn, token or cost limit has no room for is refused (``403`` ``permission_error``,
  saying which limit); one that could not fit even alone ends the attempt, as a limit
  ends the built-in loop;
- counts, when it is a message: each reply's usage (the JSON reply's ``usage``, a
  stream's ``message_start`` and ``message_delta``, read as they arrive) is priced by the
  price table and published as the attempt's ``UsageRecorded`` while the tool runs. A
  stream whose spending goes past a limit is cut off there: the tool gets an ``error``
  event, the model's connection is closed, and the attempt ends.

Every answer of the runner's own is a Messages API error body, which the anthropic SDK
and CLI agents report as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import msgspec

from aether_agent_runner.runtimes.meter import Call, Meter, Refusal, counted_bound, size_bound
from aether_llm.metrics import UsageReader, metered_http_client

if TYPE_CHECKING:
    from aiohttp import web

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
SERVED = (MESSAGES, COUNT_TOKENS)
__all__ = ["Meter", "ModelEndpoint", "api_error"]

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
COUNT_TIMEOUT = httpx2.Timeout(30.0)
# A source the body names rather than carries (``{"type": "url", …}``, ``{"type": "file",
# …}``): quoted so, these are JSON tokens of the body itself, never text within a string
# (where quotes are escaped); a tool's ``url`` parameter is not one.
_FETCHED = re.compile(rb'"type"\s*:\s*"(?:url|file)"')
# The fields of a message request a token count takes (the API refuses any other).
COUNTED_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})


class _Named(msgspec.Struct):
    """The fields of a request body the endpoint reads (the rest is skipped)."""

    model: Any = None
    max_tokens: Any = None


_NAMED = msgspec.json.Decoder(_Named)


def api_error(status: int, kind: str, message: str) -> web.Response:
    """An answer of the endpoint's own, shaped as the Messages API's errors are."""
    from aiohttp import web

    return web.json_response(_error(kind, message), status=status)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": f"Aether: {message}"}}


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
            named = _NAMED.decode(body)
        except msgspec.DecodeError:
            named = _Named()
        model = named.model
        if not isinstance(model, str) or not model:
            return api_error(400, "invalid_request_error", "the body is not JSON naming a model")
        if self.models is not None and model not in self.models:
            allowed = ", ".join(sorted(self.models))
            message = f"model {model[:100]!r} is not one this attempt may use ({allowed})"
            return api_error(400, "invalid_request_error", message)
        if path != MESSAGES:
            return await self._forward(request, body, model, None)
        wanted = named.max_tokens
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
            return api_error(400, "invalid_request_error", "max_tokens: a positive whole number")
        meter = self.meter
        call = await self._reserve(request, body, model, wanted)
        if isinstance(call, Refusal):
            if call.ends:
                meter.end(call.message)
                return api_error(403, "permission_error", f"{call.message}; no more model calls")
            return api_error(403, "permission_error", call.message)
        try:
            return await self._forward(request, body, model, call)
        finally:
            await meter.settle(call)

    async def _reserve(
        self, request: web.Request, body: bytes, model: str, max_tokens: int
    ) -> Call | Refusal:
        """Reserve a message call's worst case with the meter: its input bounded by its size
        or, where that is no bound (a source the body names by URL or file id, not
        carries) or leaves no room, by the model endpoint's count of it."""
        meter = self.meter
        size = size_bound(len(body))
        fetched = _FETCHED.search(body) is not None
        call = meter.reserve(model, size, max_tokens)
        if isinstance(call, Refusal) and (call.ends and meter.reason is not None):
            return call  # a limit reached: no count gives room
        if not fetched and isinstance(call, Call):
            return call
        # The size's reservation holds its place while the model counts (no call is made
        # yet, so none is cut off).
        held = call if isinstance(call, Call) else None
        if held is not None:
            held.task = None
        try:
            counted = await self._count_input(request, body)
        finally:
            if held is not None:
                meter.release(held)
        if counted is not None:
            return meter.reserve(model, counted_bound(counted), max_tokens)
        return meter.reserve(model, size, max_tokens) if held is not None else call

    async def _count_input(self, request: web.Request, body: bytes) -> int | None:
        """The model endpoint's count of a message request's input tokens (its
        ``count_tokens``, asked with the fields it takes), or ``None`` when it gives none."""
        assert self._client is not None
        try:
            whole = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return None
        if not isinstance(whole, dict):
            return None
        asked = {key: value for key, value in whole.items() if key in COUNTED_FIELDS}
        headers = {name: value for name in REQUEST_HEADERS if (value := request.headers.get(name))}
        headers.update({"x-api-key": self.api_key, "content-type": "application/json"})
        url = self.base_url.rstrip("/") + COUNT_TOKENS
        try:
            answer = await self._client.post(
                url, content=msgspec.json.encode(asked), headers=headers, timeout=COUNT_TIMEOUT
            )
            counted = msgspec.json.decode(answer.content).get("input_tokens")
        except (httpx2.HTTPError, msgspec.DecodeError, AttributeError):
            return None
        if not answer.is_success or isinstance(counted, bool) or not isinstance(counted, int):
            return None
        return counted if counted >= 0 else None

    async def _forward(
        self, request: web.Request, body: bytes, model: str, call: Call | None
    ) -> web.StreamResponse:
        """Send the request on and pass its reply back; a metered ``call``'s usage is
        given to the meter as it arrives, and the call is cut off past a limit (by its own
        reply, or by the meter, which then cancels this task)."""
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
        stream: web.StreamResponse | None = None
        try:
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
                counted = call if reply.is_success else None
                if reply.headers.get("content-type", "").startswith("text/event-stream"):
                    preparing = web.StreamResponse(status=reply.status_code, headers=passed)
                    await preparing.prepare(request)
                    stream = preparing
                    cut = await self._stream(reply, stream, counted)
                    if call is not None and cut is not None:
                        self.meter.cut_off(call, cut)
                        await _cut_short(stream, cut)
                        return stream
                    _over(call)
                    with contextlib.suppress(ConnectionError):
                        await stream.write_eof()
                    return stream
                whole = bytearray()
                async for chunk in reply.aiter_raw():
                    whole += chunk
                    if len(whole) > MAX_REPLY:
                        return api_error(502, "api_error", "the model's reply is too large")
                _over(call)
                if counted is not None:
                    reader = UsageReader(streamed=False)
                    reader.feed(bytes(whole))
                    if usage := reader.finish():
                        # Whole, it is paid for and passed back; past a limit, the calls
                        # still running are cut off and the next one is refused.
                        self.meter.progress(counted, usage)
                return web.Response(status=reply.status_code, body=bytes(whole), headers=passed)
            except httpx2.HTTPError as error:
                _over(call)
                if stream is not None:  # the tool sees the stream end early, as the model's
                    with contextlib.suppress(ConnectionError):
                        await stream.write_eof()
                    return stream
                message = f"the model's reply was cut off: {type(error).__name__}"
                return api_error(502, "api_error", message)
            finally:
                _over(call)
                await reply.aclose()
        except asyncio.CancelledError:
            # Cut off by the meter (another call went past a limit), or the endpoint stops.
            task = asyncio.current_task()
            if call is None or call.cut is None or task is None or task.cancelling() != 1:
                raise
            task.uncancel()
            if stream is None:
                return api_error(403, "permission_error", f"{call.cut}; the call was cut off")
            await _cut_short(stream, call.cut)
            return stream

    async def _stream(
        self, reply: httpx2.Response, response: web.StreamResponse, call: Call | None
    ) -> str | None:
        """Pass a stream back as it comes, whole events at a time, reading a metered
        call's usage on the way; the limit its spending passed (the reply is cut off there,
        unless the model had already ended it), or ``None``."""
        if call is None:
            async for chunk in reply.aiter_raw():
                await response.write(chunk)
            return None
        reader = UsageReader(streamed=True)
        pending = b""
        async for chunk in reply.aiter_raw():
            pending += chunk
            # One chunk may hold many events (a loaded machine reads them in bunches):
            # each usage is given to the meter in turn, and the reply is cut right after
            # the first past a limit, not at the chunk's last.
            start = 0
            while end := _event_end(pending, start):
                if pending.find(b"usage", start, end) >= 0:
                    reader.feed(pending[start:end])
                    passed = self.meter.progress(call, reader.usage)
                    if passed is not None and not reader.stopped:
                        await response.write(pending[:end])
                        return passed
                start = end
            if start:
                await response.write(pending[:start])
                pending = pending[start:]
        if pending:
            reader.feed(pending)
            await response.write(pending)
        if usage := reader.finish():
            self.meter.progress(call, usage)
        return None


def _event_end(data: bytes, start: int) -> int:
    """Where the first whole event in ``data`` from ``start`` ends (past the blank line
    that ends it); 0: none is whole yet."""
    ends = [at + len(end) for end in (b"\n\n", b"\r\n\r\n") if (at := data.find(end, start)) >= 0]
    return min(ends) if ends else 0


def _over(call: Call | None) -> None:
    """The exchange with the model is over: the call can no longer be cut off."""
    if call is not None:
        call.task = None


async def _cut_short(response: web.StreamResponse, reason: str) -> None:
    """End a stream cut off for ``reason`` with an ``error`` event, as the API ends one
    that fails midway (the SDK raises it as the error it names)."""
    event = msgspec.json.encode(_error("permission_error", f"{reason}; the reply was cut off"))
    with contextlib.suppress(ConnectionError):
        await response.write(b"event: error\ndata: " + event + b"\n\n")
        await response.write_eof()
