"""Model-call metrics, taken where every call passes: the HTTP transport under the
anthropic client that ``make_client`` builds.

Measuring at the transport counts each HTTP attempt (so the SDK's retries of 429 and 529
show up as what they are), times a streamed reply to its last byte, and reads the token
usage the endpoint reports in the body, for the planner and the agent runner alike,
without either having to remember to record anything. A reply that is replayed from a
journal makes no HTTP call and so is, rightly, not counted again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx2
import msgspec
from prometheus_client import Counter, Histogram

from aether_events import Usage
from aether_llm.pricing import load_prices
from aether_runtime import tls
from aether_runtime.metrics import at_zero

log = logging.getLogger("aether.llm.metrics")

MODEL_REQUESTS = Counter(
    "aether_model_requests_total",
    "Calls to the model endpoint (each retry is a call), by model and outcome: ok, "
    "rate_limited (429), overloaded (529), server_error, client_error, timeout, "
    "connection_error",
    ["model", "outcome"],
)
MODEL_SECONDS = Histogram(
    "aether_model_request_duration_seconds",
    "Time of one model call, from sending the request to the last byte of the reply",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_TOKENS = Counter(
    "aether_model_tokens_total",
    "Tokens the endpoint reported, by model and kind: input, output, cache_write, cache_read",
    ["model", "kind"],
)
MODEL_COST = Counter(
    "aether_model_cost_usd_total",
    "Cost of model calls in USD from the price table (a model without a price adds "
    "nothing here and counts in aether_model_unpriced_responses_total)",
    ["model"],
)
MODEL_UNPRICED = Counter(
    "aether_model_unpriced_responses_total",
    "Replies from a model the price table has no price for (their cost is unknown)",
    ["model"],
)

TOKEN_KINDS: dict[str, str] = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_write",
    "cache_read_input_tokens": "cache_read",
}
OUTCOMES = (
    "ok",
    "rate_limited",
    "overloaded",
    "server_error",
    "client_error",
    "timeout",
    "connection_error",
)


def models_at_zero(models: Iterable[str]) -> None:
    """Export every model-call series of the configured ``models`` at zero. Model ids are
    open-ended (a mission may name its own), so only the configured ones are known."""
    known = sorted(set(models))
    at_zero(MODEL_REQUESTS, model=known, outcome=OUTCOMES)
    at_zero(MODEL_SECONDS, model=known)
    at_zero(MODEL_TOKENS, model=known, kind=TOKEN_KINDS.values())
    at_zero(MODEL_COST, model=known)
    at_zero(MODEL_UNPRICED, model=known)


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status == 529:
        return "overloaded"
    if status >= 500:
        return "server_error"
    return "client_error"


def record_usage(model: str, usage: dict[str, Any]) -> None:
    """Count one reply's reported usage (the Messages API's ``usage`` object)."""
    counts = {kind: int(usage.get(field) or 0) for field, kind in TOKEN_KINDS.items()}
    for kind, count in counts.items():
        if count:
            MODEL_TOKENS.labels(model, kind).inc(count)
    cost = load_prices().cost(
        model,
        Usage(
            input_tokens=counts["input"],
            output_tokens=counts["output"],
            cache_creation_input_tokens=counts["cache_write"],
            cache_read_input_tokens=counts["cache_read"],
        ),
    )
    if cost is None:
        MODEL_UNPRICED.labels(model).inc()
    else:
        MODEL_COST.labels(model).inc(cost)


class UsageReader:
    """Finds the usage in a reply body: the JSON message, or the ``message_start`` and
    ``message_delta`` events of a stream (whose usage figures are cumulative)."""

    def __init__(self, streamed: bool) -> None:
        self.streamed = streamed
        self.usage: dict[str, Any] = {}
        # A stream's ``message_delta`` gave its stop reason: nothing more is generated.
        self.stopped = False
        self._body = bytearray()
        self._line = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not self.streamed:
            self._body += chunk
            return
        self._line += chunk
        *lines, rest = bytes(self._line).split(b"\n")
        self._line = bytearray(rest)
        for line in lines:
            self._event_line(line.strip())

    def _event_line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or b"usage" not in line:
            return
        try:
            data = json.loads(line[5:])
        except ValueError:
            return
        kind = data.get("type")
        if kind == "message_start":
            self._merge((data.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            self._merge(data.get("usage"))
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.stopped = True

    def _merge(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    def finish(self) -> dict[str, Any]:
        if self.streamed:
            self._event_line(bytes(self._line).strip())
        elif self._body:
            try:
                message = json.loads(bytes(self._body))
            except ValueError:
                return {}
            usage = message.get("usage") if isinstance(message, dict) else None
            self._merge(usage)
        return self.usage


class _MeteredStream(httpx2.AsyncByteStream):
    """Passes the reply through, reading its usage; records once, at its end."""

    def __init__(
        self, inner: httpx2.AsyncByteStream, model: str, began: float, reader: UsageReader | None
    ) -> None:
        self._inner = inner
        self._model = model
        self._began = began
        self._reader = reader
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if self._reader is not None:
                self._reader.feed(chunk)
            yield chunk
        self._finish()

    async def aclose(self) -> None:
        self._finish()
        await self._inner.aclose()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        MODEL_SECONDS.labels(self._model).observe(time.perf_counter() - self._began)
        if self._reader is not None:
            usage = self._reader.finish()
            if usage:
                record_usage(self._model, usage)


class MeteredTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that meters model calls on the way through."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        model = _model_of(request)
        # Usage is read from the body as it passes; a compressed body would hide it, and
        # replies are a few kilobytes, so ask for them plain.
        request.headers["accept-encoding"] = "identity"
        began = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TimeoutException:
            MODEL_REQUESTS.labels(model, "timeout").inc()
            MODEL_SECONDS.labels(model).observe(time.perf_counter() - began)
            raise
        except httpx2.TransportError:
            MODEL_REQUESTS.labels(model, "connection_error").inc()
            MODEL_SECONDS.labels(model).observe(time.perf_counter() - began)
            raise
        MODEL_REQUESTS.labels(model, outcome_of(response.status_code)).inc()
        content_type = response.headers.get("content-type", "")
        plain = response.headers.get("content-encoding", "identity") in ("", "identity")
        reader = None
        if response.is_success and plain:
            reader = UsageReader(streamed=content_type.startswith("text/event-stream"))
        if not isinstance(response.stream, httpx2.AsyncByteStream):
            return response  # not a body we can pass through; the call is counted above
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_MeteredStream(response.stream, model, began, reader),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Named(msgspec.Struct):
    """The one field of a request body the metrics read."""

    model: Any = None


# The request body is the whole conversation; only its model is wanted, and a decoder
# with one field skips the rest without building it (several times faster than
# ``json.loads``, which grows with every turn).
_NAMED = msgspec.json.Decoder(_Named)


def _model_of(request: httpx2.Request) -> str:
    try:
        model = _NAMED.decode(request.content).model
    except (httpx2.RequestNotRead, msgspec.DecodeError):
        return "unknown"
    return model if isinstance(model, str) and model else "unknown"


def metered_http_client() -> httpx2.AsyncClient:
    """The anthropic SDK's async HTTP client on its aiohttp transport (the SDK's
    ``aiohttp`` extra, ``anthropic.DefaultAioHttpClient``), with the metering transport
    over it, the connection limits the SDK would set, and the process's one TLS context
    (``aether_runtime.tls``: a transport otherwise loads the trust store, tens of
    milliseconds of CPU, for every client made).

    aiohttp parses HTTP in C where httpx's own transport goes through h11 and anyio in
    Python: a short streamed reply costs the caller about a third less CPU
    (``bench/model_call.py``). Its session holds the connections of the loop that made
    its first call; ``aether_llm.client.LazyClient.aclose`` closes it with the service.
    """
    import anthropic  # here: the SDK is imported when a client is built (``aether_llm.client``)

    # The transport ``DefaultAioHttpClient`` builds for itself, from the SDK's own copy of
    # httpx-aiohttp (pinned with the SDK in uv.lock): built here to be metered.
    from anthropic._vendor.httpx_aiohttp import AiohttpTransport

    inner = AiohttpTransport(
        verify=tls.shared(),
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
    )
    client: httpx2.AsyncClient = anthropic.DefaultAioHttpClient(transport=MeteredTransport(inner))
    return client
