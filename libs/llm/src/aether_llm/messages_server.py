"""A small HTTP server that speaks the Anthropic Messages API.

It serves the offline model (``aether_llm.offline``) and the scripted fakes tests use, so
every caller goes through the real anthropic SDK over real HTTP. It answers
``POST /v1/messages`` with either a whole message or, when the request says
``"stream": true``, the server-sent events the SDK's stream parser expects, and
``POST /v1/messages/count_tokens`` with a count (``count_tokens``); replies can
also be API errors (429, 529, 5xx) with the documented error body. Given a
``PromptCache`` (``aether_llm.prompt_cache``), it reports the input side of every reply's
usage as Anthropic's prefix cache would (the reply's own input figures are replaced).
Given an ``ssl_context``, it speaks HTTPS. A reply may also stream slowly, in pieces, with
its usage so far after each (``Reply.pieces``): a long reply a client can hang up on, which
the server counts (``streams_cut``).
"""

from __future__ import annotations

import itertools
import json
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aether_llm.prompt_cache import CacheRequestError, PromptCache, approximate_tokens

JSON = dict[str, Any]

# What a token count may be asked with: the Messages API refuses any other field.
COUNTED_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})

_ids = itertools.count(1)


@dataclass
class ApiError:
    """An error reply: HTTP status, Anthropic error type, message."""

    status: int
    type: str
    message: str
    retry_after: float | None = None


@dataclass
class Reply:
    """A message reply: content blocks, stop reason and usage."""

    content: list[JSON]
    stop_reason: str = "end_turn"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    model: str | None = None
    delay_seconds: float = 0.0
    # Streamed, its text comes in this many deltas, each followed by a ``message_delta``
    # with the output tokens so far (as a server that reports usage as it goes does),
    # written one by one ``piece_seconds`` apart; the reply's own figures are its last.
    pieces: int = 1
    piece_seconds: float = 0.0

    def to_message(self, request: JSON) -> JSON:
        return {
            "id": f"msg_{next(_ids):08d}",
            "type": "message",
            "role": "assistant",
            "model": self.model or request.get("model", "unknown"),
            "content": self.content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens,
            },
        }


Responder = Callable[[JSON], Reply | ApiError]


def text_block(text: str) -> JSON:
    return {"type": "text", "text": text}


def tool_use_block(name: str, tool_input: JSON, tool_id: str | None = None) -> JSON:
    return {
        "type": "tool_use",
        "id": tool_id or f"toolu_{next(_ids):08d}",
        "name": name,
        "input": tool_input,
    }


def _stream_events(message: JSON, pieces: int = 1) -> list[tuple[str, JSON]]:
    """The SSE events of one message, as the Messages API streams them; with ``pieces``,
    each text block in that many deltas, each followed by the usage so far."""
    start = dict(message, content=[], stop_reason=None)
    start["usage"] = dict(message["usage"], output_tokens=1)
    events: list[tuple[str, JSON]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            text: str = block["text"]
            size = -(-len(text) // pieces) if pieces > 1 else len(text) or 1
            for at in range(0, max(len(text), 1), max(size, 1)):
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": text[at : at + size]},
                        },
                    )
                )
                if pieces > 1:
                    events.append(("usage_so_far", {}))
        else:
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                )
            )
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": json.dumps(block["input"]),
                        },
                    },
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    marks = [i for i, (name, _) in enumerate(events) if name == "usage_so_far"]
    output = message["usage"]["output_tokens"]
    for done, i in enumerate(marks, 1):
        so_far = {"output_tokens": max(1, output * done // len(marks))}
        delta = {"stop_reason": None, "stop_sequence": None}
        events[i] = ("message_delta", {"type": "message_delta", "delta": delta, "usage": so_far})
    return events


@dataclass
class MessagesServer:
    """Serves ``responder`` on ``127.0.0.1:port`` (0 picks a free port) in a thread."""

    responder: Responder
    port: int = 0
    host: str = "127.0.0.1"
    requests: list[JSON] = field(default_factory=list)
    # The key each request to /v1/messages came with (``x-api-key``), in order.
    api_keys: list[str] = field(default_factory=list)
    cache: PromptCache | None = None
    ssl_context: ssl.SSLContext | None = None
    # Streamed replies whose client hung up before their end.
    streams_cut: int = 0
    # ``POST /v1/messages/count_tokens``: its answer, and the requests it was asked.
    count_tokens: Callable[[JSON], int] = approximate_tokens
    counted: list[JSON] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> MessagesServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # A reply is written in pieces (headers, then body or events) on a kept-alive
            # connection: with Nagle's algorithm each later piece waits for the client's
            # delayed acknowledgement of the first, about 40 ms per call.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("", "/healthz"):
                    self._send_json(200, {"status": "ok"})
                else:
                    self._send_json(404, _error_body("not_found_error", "no such route"))

            def do_POST(self) -> None:
                if not self.path.startswith("/v1/messages"):
                    self._send_json(404, _error_body("not_found_error", "no such route"))
                    return
                length = int(self.headers.get("content-length", "0"))
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send_json(400, _error_body("invalid_request_error", "body is not JSON"))
                    return
                if self.path.split("?")[0] == "/v1/messages/count_tokens":
                    self._count_tokens(request)
                    return
                with server._lock:
                    server.requests.append(request)
                    server.api_keys.append(self.headers.get("x-api-key", ""))
                accounting = None
                if server.cache is not None:
                    try:
                        accounting = server.cache.account(request)
                    except CacheRequestError as error:
                        self._send_json(400, _error_body("invalid_request_error", str(error)))
                        return
                try:
                    reply = server.responder(request)
                except Exception as error:  # a broken script must show, not hang the client
                    reply = ApiError(500, "api_error", f"responder failed: {error!r}")
                if isinstance(reply, ApiError):
                    headers = {}
                    if reply.retry_after is not None:
                        headers["retry-after"] = str(reply.retry_after)
                    self._send_json(reply.status, _error_body(reply.type, reply.message), headers)
                    return
                if reply.delay_seconds:
                    threading.Event().wait(reply.delay_seconds)
                message = reply.to_message(request)
                if accounting is not None:
                    message["usage"].update(accounting.usage())
                    accounting.commit()  # an entry is readable once its reply begins
                if request.get("stream"):
                    self._send_stream(message, reply)
                else:
                    self._send_json(200, message)

            def _count_tokens(self, request: JSON) -> None:
                extra = sorted(set(request) - COUNTED_FIELDS)
                if extra or "messages" not in request:
                    why = f"{extra[0]}: Extra inputs are not permitted" if extra else "messages"
                    self._send_json(400, _error_body("invalid_request_error", why))
                    return
                with server._lock:
                    server.counted.append(request)
                self._send_json(200, {"input_tokens": server.count_tokens(request)})

            def _send_json(
                self, status: int, body: JSON, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{next(_ids):08d}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _send_stream(self, message: JSON, reply: Reply) -> None:
                events = [
                    f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    for name, data in _stream_events(message, reply.pieces)
                ]
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                if reply.pieces <= 1:
                    self.send_header("content-length", str(sum(map(len, events))))
                    self.end_headers()
                    self.wfile.write(b"".join(events))
                    return
                # In pieces: no length known ahead, the reply ends with the connection.
                self.send_header("connection", "close")
                self.close_connection = True
                self.end_headers()
                pause = threading.Event()
                try:
                    for event in events:
                        self.wfile.write(event)
                        self.wfile.flush()
                        if event.startswith(b"event: message_delta"):
                            pause.wait(reply.piece_seconds)
                except ConnectionError:
                    with server._lock:
                        server.streams_cut += 1

        self._httpd = _QuietServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        if self.ssl_context is not None:
            # Each connection's handshake in its own thread, when its request is read.
            self._httpd.socket = self.ssl_context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        # A short poll: ``stop`` waits for the serving loop to notice, which with the
        # default half second is most of a test's tear-down.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="messages-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-reply (a cancelled agent) is not an error worth a trace."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _error_body(error_type: str, message: str) -> JSON:
    return {"type": "error", "error": {"type": error_type, "message": message}}
