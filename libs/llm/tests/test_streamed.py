"""``stream_reply`` folds a streamed reply into what the SDK's own stream accumulator gives:
the same streams, served over real HTTP, read both ways through the real anthropic SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import pytest

from aether_llm import LLMSettings, make_client
from aether_llm.streamed import StreamedReply, stream_reply

JSON = dict[str, Any]
MODEL = "claude-haiku-5-5"


def start(usage: JSON | None = None) -> tuple[str, JSON]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage
        or {
            "input_tokens": 120,
            "output_tokens": 1,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 4000,
        },
    }
    return "message_start", {"type": "message_start", "message": message}


def block(index: int, content_block: JSON) -> tuple[str, JSON]:
    return "content_block_start", {
        "type": "content_block_start",
        "index": index,
        "content_block": content_block,
    }


def delta(index: int, piece: JSON) -> tuple[str, JSON]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": piece}


def stop(index: int) -> tuple[str, JSON]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def end(stop_reason: str, usage: JSON) -> list[tuple[str, JSON]]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


CITATION = {
    "type": "char_location",
    "cited_text": "the sky is blue",
    "document_index": 0,
    "document_title": None,
    "start_char_index": 0,
    "end_char_index": 15,
}

# Every kind of block and piece the built-in loop can be sent, pieces split mid-token.
MIXED = [
    start(),
    ("ping", {"type": "ping"}),
    block(0, {"type": "thinking", "thinking": "", "signature": ""}),
    delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
    delta(0, {"type": "thinking_delta", "thinking": "look."}),
    delta(0, {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}),
    stop(0),
    block(1, {"type": "redacted_thinking", "data": "b3BhcXVl"}),
    stop(1),
    block(2, {"type": "text", "text": "", "citations": None}),
    delta(2, {"type": "text_delta", "text": "The sky "}),
    delta(2, {"type": "citations_delta", "citation": CITATION}),
    delta(2, {"type": "text_delta", "text": "is blue — ünïcode."}),
    stop(2),
    block(3, {"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {}}),
    delta(3, {"type": "input_json_delta", "partial_json": '{"path": "src/a'}),
    delta(3, {"type": "input_json_delta", "partial_json": '.py", "content": "x = [1,'}),
    ("ping", {"type": "ping"}),
    delta(3, {"type": "input_json_delta", "partial_json": ' {\\"k\\": null}]\\n", "mode": nu'}),
    delta(3, {"type": "input_json_delta", "partial_json": 'll, "opts": {"a": null}}'}),
    stop(3),
    block(4, {"type": "tool_use", "id": "toolu_2", "name": "list_dir", "input": {}}),
    stop(4),
    *end("tool_use", {"output_tokens": 87, "cache_read_input_tokens": 4100}),
]

# A reply cut off by the output limit in the middle of a tool call's input.
CUT_OFF = [
    start(),
    block(0, {"type": "text", "text": ""}),
    delta(0, {"type": "text_delta", "text": "Writing it."}),
    stop(0),
    block(1, {"type": "tool_use", "id": "toolu_3", "name": "write_file", "input": {}}),
    delta(1, {"type": "input_json_delta", "partial_json": '{"path": "big.txt", "content": "aaa'}),
    *end("max_tokens", {"output_tokens": 8192}),
]

# A reply whose last usage leaves its output count out: null in the final usage, which
# the SDK's model does not allow, so it is taken as it came, as the SDK's accumulator does.
UNCOUNTED = [
    start(),
    block(0, {"type": "text", "text": ""}),
    delta(0, {"type": "text_delta", "text": "Done."}),
    stop(0),
    *end("end_turn", {}),
]

# An error event after the reply began.
OVERLOADED = [
    start(),
    block(0, {"type": "text", "text": ""}),
    delta(0, {"type": "text_delta", "text": "Half"}),
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
]


class SseServer:
    """Answers every POST with ``events`` as a server-sent event stream."""

    def __init__(self) -> None:
        self.events: list[tuple[str, JSON]] = []
        self.requests: list[JSON] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                served.requests.append(json.loads(self.rfile.read(length)))
                body = b"".join(
                    f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    for name, data in served.events
                )
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,))
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[SseServer]:
    running = SseServer()
    yield running
    running.stop()


def client_for(server: SseServer) -> anthropic.AsyncAnthropic:
    return make_client(LLMSettings(api_key="test", base_url=server.url, max_retries=0))


PARAMS: JSON = {
    "model": MODEL,
    "max_tokens": 8192,
    "system": [{"type": "text", "text": "You write files."}],
    "tools": [{"name": "write_file", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "Write src/a.py."}],
}


async def both_ways(server: SseServer) -> tuple[anthropic.types.Message, StreamedReply]:
    client = client_for(server)
    async with client.messages.stream(**PARAMS) as stream:
        expected = await stream.get_final_message()
    got = await stream_reply(client, **PARAMS)
    return expected, got


@pytest.mark.parametrize(
    "events", [MIXED, CUT_OFF, UNCOUNTED], ids=["mixed", "cut-off", "uncounted"]
)
async def test_the_reply_is_the_sdks_final_message(
    server: SseServer, events: list[tuple[str, JSON]]
) -> None:
    server.events = events
    expected, got = await both_ways(server)

    assert got.content == [b.model_dump(mode="json", exclude_none=True) for b in expected.content]
    assert got.stop_reason == expected.stop_reason
    assert got.usage.model_dump(exclude_none=True) == expected.usage.model_dump(exclude_none=True)
    assert got.usage.output_tokens == expected.usage.output_tokens
    # Both requests asked for the same streamed reply.
    assert server.requests[0] == server.requests[1]
    assert server.requests[1]["stream"] is True


async def test_what_the_fold_gives_for_the_mixed_reply(server: SseServer) -> None:
    """Spelled out, not only compared with the SDK: a fold that lost a piece in both
    would pass the comparison."""
    server.events = MIXED
    _, got = await both_ways(server)

    assert got.content == [
        {"type": "thinking", "thinking": "Let me look.", "signature": "c2lnbmF0dXJl"},
        {"type": "redacted_thinking", "data": "b3BhcXVl"},
        {
            "type": "text",
            "text": "The sky is blue — ünïcode.",
            "citations": [{k: v for k, v in CITATION.items() if v is not None}],
        },
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "write_file",
            # None inside a tool's input is the model's, kept as the SDK keeps it.
            "input": {
                "path": "src/a.py",
                "content": 'x = [1, {"k": null}]\n',
                "mode": None,
                "opts": {"a": None},
            },
        },
        {"type": "tool_use", "id": "toolu_2", "name": "list_dir", "input": {}},
    ]
    assert got.stop_reason == "tool_use"
    usage = got.usage
    assert (usage.input_tokens, usage.output_tokens) == (120, 87)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (300, 4100)


async def test_an_error_in_the_stream_raises_as_the_sdk_raises_it(server: SseServer) -> None:
    server.events = OVERLOADED
    client = client_for(server)
    with pytest.raises(anthropic.APIStatusError) as sdk:
        async with client.messages.stream(**PARAMS) as stream:
            await stream.get_final_message()
    with pytest.raises(anthropic.APIStatusError) as ours:
        await stream_reply(client, **PARAMS)

    assert type(ours.value) is type(sdk.value)
    assert ours.value.message == sdk.value.message
    assert ours.value.body == sdk.value.body
    assert ours.value.status_code == sdk.value.status_code


async def test_a_stream_without_a_message_is_an_api_error(server: SseServer) -> None:
    server.events = [("ping", {"type": "ping"})]
    with pytest.raises(anthropic.APIError):
        await stream_reply(client_for(server), **PARAMS)


@contextlib.asynccontextmanager
async def broken_stream(how: str) -> AsyncIterator[str]:
    """A server whose reply starts (its headers and ``message_start``) and then stalls
    (``stall``) or closes its connection mid-body (``cut``)."""
    start = json.dumps(MIXED[0][1]).encode()
    event = b"event: message_start\ndata: " + start + b"\n\n"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event)
        )
        await writer.drain()
        if how == "stall":
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("how", "raised"),
    [("stall", anthropic.APITimeoutError), ("cut", anthropic.APIConnectionError)],
)
async def test_a_reply_stalled_or_cut_mid_stream_is_the_sdk_s_transport_error(
    how: str, raised: type[anthropic.APIError]
) -> None:
    # The SDK raises its HTTP client's own errors from a stream it already answered;
    # the built-in loop, which takes the SDK's errors as a failed call to try again,
    # would have crashed the attempt on them.
    async with broken_stream(how) as url:
        settings = LLMSettings(api_key="test", base_url=url, max_retries=0, timeout_seconds=0.5)
        client = make_client(settings)
        began = time.monotonic()
        with pytest.raises(raised):
            await stream_reply(client, **PARAMS)
        assert time.monotonic() - began < 10
        await client.close()
