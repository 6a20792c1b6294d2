"""What the metered model endpoint costs a sandboxed CLI agent: one model call's round trip
from a tool inside a bubblewrap sandbox with no network (the sandbox's loopback, a unix
socket, the runner's endpoint, which checks the attempt's key, sends the call on with the
real one and counts its usage) next to the same call made directly from the host, against
a local Messages API server.

    uv run python bench/model_relay.py [--calls 200]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.model_endpoint import Meter, ModelEndpoint
from aether_agent_runner.runtimes.relay import INSIDE_URL, inside_argv
from aether_events import Usage
from aether_llm import Reply, load_prices, text_block
from aether_llm.messages_server import MessagesServer
from aether_sandbox import Request, SandboxSettings, execute, open_sandbox

# Makes the calls over one keep-alive connection each run and prints the median in ms.
CALLER = r"""
import http.client, json, os, statistics, sys, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["ANTHROPIC_BASE_URL"])
body = json.dumps({"model": "claude-sonnet-5-5", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "hi"}]})
headers = {"x-api-key": os.environ.get("ANTHROPIC_API_KEY", "k"),
           "anthropic-version": "2023-06-01",
           "content-type": "application/json"}
times = []
for _ in range(int(sys.argv[1])):
    began = time.perf_counter()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request("POST", "/v1/messages", body, headers)
    connection.getresponse().read()
    connection.close()
    times.append(time.perf_counter() - began)
print(f"{statistics.median(times) * 1000:.3f}")
"""


class _Quiet:
    """An observer that publishes nothing (the bench times the endpoint, not the bus)."""

    async def model_called(self, turn: int, usage: Usage) -> None:
        return None

    async def progressed(self, progress: object, *, always: bool = False) -> None:
        return None


async def through_relay(url: str, calls: int) -> float:
    sandbox = open_sandbox(SandboxSettings())
    meter = Meter(Limits(max_turns=calls + 1), _Quiet(), load_prices())
    endpoint = ModelEndpoint(url, "k", meter, frozenset({"claude-sonnet-5-5"}))
    with tempfile.TemporaryDirectory(prefix="aether-relay-bench-") as scratch:
        root = Path(scratch)
        work = root / "work"
        work.mkdir()
        socket_path = root / "model.sock"
        argv = [sys.executable, "-c", CALLER, str(calls)]
        async with endpoint.serving(socket_path):
            ran = await execute(
                sandbox,
                Request(
                    argv=inside_argv(socket_path, INSIDE_URL, argv),
                    workdir=work,
                    cwd=work,
                    env={"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": endpoint.placeholder},
                    read_only=(root,),
                ),
            )
    if ran.exit_code != 0 or meter.turns != calls:
        raise SystemExit(f"the sandboxed caller failed: {ran.output}")
    return float(ran.output.strip().splitlines()[-1])


def direct(url: str, calls: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CALLER, str(calls)],
        env={"ANTHROPIC_BASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    calls = parser.parse_args().calls
    server = MessagesServer(lambda request: Reply([text_block("ok")], "end_turn", 5, 1)).start()
    try:
        host = direct(server.url, calls)
        relayed = asyncio.run(through_relay(server.url, calls))
    finally:
        server.stop()
    print(f"model call round trip, median of {calls} (new connection each):")
    print(f"  from the host, direct          {host:8.3f} ms")
    print(f"  from the sandbox, metered      {relayed:8.3f} ms")
    print(f"  added by the endpoint          {relayed - host:8.3f} ms")


if __name__ == "__main__":
    main()
