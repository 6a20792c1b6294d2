"""What uvicorn's HTTP layer costs the gateway's process per request, by HTTP parser.

The gateway (and every service's health and metrics endpoints) is served by uvicorn,
which parses HTTP/1.1 with ``httptools`` (C) when it is installed, as it is with the
runtime, and with the pure-Python ``h11`` otherwise. This serves a trivial ASGI app (a
small JSON answer) from a child process with each parser in turn, sends it the same
requests on one kept connection (a POST with a JSON body and the headers a client of
the gateway sends), and prints the server process's CPU per request: what the parser
and uvicorn's protocol add to every request, apart from the app's own work.

    uv run python bench/http_server.py [--requests 4000] [--rounds 2]

A figure, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time

SERVER = """
import sys
import uvicorn

BODY = b'{"status": "accepted", "mission_id": "m-0123456789abcdef"}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[2],
            log_config=None, access_log=False)
"""
HEADERS = {
    "authorization": "Bearer " + "t" * 43,
    "content-type": "application/json",
    "accept": "application/json",
    "idempotency-key": "k" * 32,
    "user-agent": "aether-cli",
}
BODY = json.dumps({"requirement": "Add a greeting " * 10, "repo": "/srv/project"})


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def per_request(parser: str, requests: int) -> float:
    """Microseconds of the server process's CPU per request with ``parser``."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), parser])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port)
                conn.request("GET", "/")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for _ in range(200):  # warm
            conn.request("POST", "/missions", body=BODY, headers=HEADERS)
            conn.getresponse().read()
        began = cpu_seconds(server.pid)
        for _ in range(requests):
            conn.request("POST", "/missions", body=BODY, headers=HEADERS)
            conn.getresponse().read()
        return (cpu_seconds(server.pid) - began) / requests * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    seen: dict[str, list[float]] = {"httptools": [], "h11": []}
    for _ in range(args.rounds):  # alternating, so a change in the machine's speed hits both
        for name, runs in seen.items():
            runs.append(per_request(name, args.requests))
    fast, slow = (statistics.median(seen[name]) for name in ("httptools", "h11"))
    for name, runs in seen.items():
        print(
            f"  {name:9} server CPU per request  median {statistics.median(runs):5.0f} us  "
            f"runs {' '.join(f'{r:.0f}' for r in runs)}"
        )
    print(f"  h11 / httptools: {slow / fast:.2f}x  ({slow - fast:.0f} us a request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
