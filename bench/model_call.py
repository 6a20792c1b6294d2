"""What one model call costs the caller's process, by the way its reply is read.

Serves ``bench/overhead.py``'s agent reply (one ``write_file`` call) from a local Messages
API server in a child process, and times the same request through the real anthropic SDK
three ways, alternating, in this process: streamed and read by the SDK's accumulator
(``messages.stream(...).get_final_message()``), streamed and folded by
``aether_llm.streamed.stream_reply`` (the built-in loop's way), and not streamed
(``messages.create``, for reference: the loop keeps streaming so that the read timeout
applies between events of a long reply). Prints, per way, the median wall time of a call
and the process CPU per call.

    uv run python bench/model_call.py [--calls 300] [--rounds 3]

A figure, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aether_llm import LLMSettings, MessagesServer, Reply, make_client, tool_use_block
from aether_llm.streamed import stream_reply

MODEL = "claude-haiku-4-5"


def reply(request: dict[str, Any]) -> Reply:
    write = {"path": "bench/f1.txt", "content": "t1\n"}
    return Reply([tool_use_block("write_file", write)], "tool_use", 10, 5)


def agent_request() -> dict[str, Any]:
    """A request shaped like the built-in loop's: a system prompt, a tool, the task."""
    return {
        "model": MODEL,
        "max_tokens": 8192,
        "system": [{"type": "text", "text": "You are a coding agent. " * 80}],
        "tools": [
            {
                "name": "write_file",
                "description": "Write a file.",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ],
        "messages": [{"role": "user", "content": "<task>write bench/f1.txt</task> " * 80}],
    }


def _serve(handler: Callable[[dict[str, Any]], Reply], conn: Any) -> None:
    """The server's process: sends its URL, serves until told to stop."""
    server = MessagesServer(handler).start()
    try:
        conn.send(server.url)
        conn.recv()
    finally:
        server.stop()


@contextlib.contextmanager
def serving(handler: Callable[[dict[str, Any]], Reply]) -> Iterator[tuple[str, int]]:
    """The URL and process id of a Messages API server answering with ``handler``, in a
    process of its own (a server thread here would share the interpreter lock with what
    is timed), stopped on the way out."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(handler, child), daemon=True
    )
    process.start()
    assert process.pid is not None
    try:
        yield str(parent.recv()), process.pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


@contextlib.contextmanager
def served() -> Iterator[str]:
    """The URL of a server of ``reply`` (``serving``)."""
    with serving(reply) as (url, _):
        yield url


async def measure(url: str, calls: int, rounds: int) -> None:
    client = make_client(LLMSettings(api_key="bench", base_url=url, max_retries=0))
    params = agent_request()

    async def sdk_stream() -> object:
        async with client.messages.stream(**params) as stream:
            return await stream.get_final_message()

    async def folded() -> object:
        return await stream_reply(client, **params)

    async def not_streamed() -> object:
        return await client.messages.create(**params)

    ways: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("streamed, SDK accumulator", sdk_stream),
        ("streamed, stream_reply", folded),
        ("not streamed", not_streamed),
    ]
    walls: dict[str, list[float]] = {name: [] for name, _ in ways}
    cpus: dict[str, list[float]] = {name: [] for name, _ in ways}
    for _ in range(rounds):
        for name, call in ways:
            for _ in range(20):
                await call()
            cpu = time.process_time()
            for _ in range(calls):
                began = time.perf_counter()
                await call()
                walls[name].append(time.perf_counter() - began)
            cpus[name].append((time.process_time() - cpu) / calls)
    for name, _ in ways:
        wall = statistics.median(walls[name]) * 1000
        cpu = statistics.median(cpus[name]) * 1000
        print(f"  {name:28s} wall p50 {wall:5.2f} ms   CPU {cpu:5.2f} ms per call")
    await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with served() as url:
        print(f"model_call: {args.rounds} rounds of {args.calls} calls per way")
        asyncio.run(measure(url, args.calls, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
