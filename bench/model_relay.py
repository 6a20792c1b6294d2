"""What the model relay costs a sandboxed CLI agent: one model call's round trip from a
tool inside a bubblewrap sandbox with no network (through the relay: the sandbox's
loopback, a unix socket, the runner, the endpoint) next to the same call made directly
from the host, against a local Messages API server.

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

from aether_agent_runner.runtimes.relay import endpoint, inside_argv, serving
from aether_llm import Reply, text_block
from aether_llm.messages_server import MessagesServer
from aether_sandbox import Request, SandboxSettings, execute, open_sandbox

# Makes the calls over one keep-alive connection each run and prints the median in ms.
CALLER = r"""
import http.client, json, os, statistics, sys, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["ANTHROPIC_BASE_URL"])
body = json.dumps({"model": "claude-sonnet-5-5", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "hi"}]})
headers = {"x-api-key": "k", "anthropic-version": "2023-06-01",
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


async def through_relay(url: str, calls: int) -> float:
    sandbox = open_sandbox(SandboxSettings())
    host, port, inside = endpoint(url)
    with tempfile.TemporaryDirectory(prefix="aether-relay-bench-") as scratch:
        root = Path(scratch)
        work = root / "work"
        work.mkdir()
        socket_path = root / "model.sock"
        argv = [sys.executable, "-c", CALLER, str(calls)]
        async with serving(socket_path, host, port):
            ran = await execute(
                sandbox,
                Request(
                    argv=inside_argv(socket_path, inside, argv),
                    workdir=work,
                    cwd=work,
                    env={"PATH": "/usr/bin:/bin"},
                    read_only=(root,),
                ),
            )
    if ran.exit_code != 0:
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
    print(f"  from the sandbox, via relay    {relayed:8.3f} ms")
    print(f"  ratio relay / direct           {relayed / host:8.2f}")


if __name__ == "__main__":
    main()
