"""The egress allow-list: commands reach what the operator listed, through the proxy, and
nothing else, however they try.

Two real HTTP servers on the host: one listed in the sandbox's allow-list, one not. Every
command goes through the real tool layer (``ToolBox.call("run_command", …)``) in a real
bubblewrap; the sandbox's network namespace is empty, its init relays ``127.0.0.1:3128``
to the runner's allow-listing proxy, and the command finds that in ``HTTP(S)_PROXY``.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_sandbox import SandboxSettings, open_sandbox

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"
)


STATUS = re.compile(r"^\[(exit code|timed out|stopped) ", re.MULTILINE)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"served {self.path} by {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[int, int]]:
    """(allowed port, denied port): two real HTTP servers on the host's loopback."""
    running = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler) for _ in range(2)]
    for server in running:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield running[0].server_address[1], running[1].server_address[1]
    for server in running:
        server.shutdown()
        server.server_close()


@dataclass
class Box:
    tools: ToolBox
    allowed: int
    denied: int

    async def python(self, code: str) -> str:
        result = await self.tools.call(
            "run_command", {"command": f"python -c {shlex.quote(code)}", "timeout_seconds": 30}
        )
        # What it printed, after the "[status]" line (the command's text comes before).
        status = STATUS.search(result.content)
        assert status, result.content
        return result.content[status.start() :]


@pytest.fixture
def box(servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # The runner's own proxy settings (it may need one to reach the model) never reach a
    # command: the sandbox's own proxy does.
    monkeypatch.setenv("HTTPS_PROXY", "http://runner-proxy.invalid:8080")
    parent = Path.home() / ".cache" / "aether-escape-tests"
    parent.mkdir(parents=True, exist_ok=True)
    worktree = Path(tempfile.mkdtemp(dir=parent))
    allowed, denied = servers
    sandbox = open_sandbox(SandboxSettings(egress=(f"127.0.0.1:{allowed}",)))
    tools = ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=30, output_chars=8000, check_paths=False),
        sandbox=sandbox,
    )
    yield Box(tools, allowed, denied)
    tools.close()
    shutil.rmtree(worktree, ignore_errors=True)


FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    print('BODY', urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print('REFUSED', e.code, e.read().decode())\n"
    "except OSError as e:\n"
    "    print('FAILED', e)\n"
)


async def test_an_allowed_server_answers_through_the_proxy(box: Box) -> None:
    out = await box.python(FETCH.replace("sys.argv[1]", f"'http://127.0.0.1:{box.allowed}/ok'"))
    assert f"BODY served /ok by {box.allowed}" in out


async def test_a_tunnel_to_an_allowed_server_is_opened(box: Box) -> None:
    # What HTTPS does: CONNECT, then its own bytes through the tunnel.
    code = (
        "import http.client, os\n"
        "proxy = os.environ['HTTPS_PROXY'].removeprefix('http://')\n"
        "host, port = proxy.split(':')\n"
        "c = http.client.HTTPConnection(host, int(port), timeout=10)\n"
        f"c.set_tunnel('127.0.0.1', {box.allowed})\n"
        "c.request('GET', '/tunnelled')\n"
        "print('TUNNEL', c.getresponse().read().decode())\n"
    )
    assert f"TUNNEL served /tunnelled by {box.allowed}" in await box.python(code)


async def test_a_server_not_on_the_list_is_refused_clearly(box: Box) -> None:
    out = await box.python(FETCH.replace("sys.argv[1]", f"'http://127.0.0.1:{box.denied}/no'"))
    assert "REFUSED 403" in out and f"127.0.0.1:{box.denied} is not on" in out
    assert "AETHER_SANDBOX_EGRESS" in out and "served" not in out
    code = (
        "import http.client\n"
        "c = http.client.HTTPConnection('127.0.0.1', 3128, timeout=10)\n"
        f"c.set_tunnel('127.0.0.1', {box.denied})\n"
        "try:\n"
        "    c.request('GET', '/')\n"
        "    print('TUNNEL', c.getresponse().read())\n"
        "except OSError as e:\n"
        "    print('REFUSED', e)\n"
    )
    out = await box.python(code)
    assert "REFUSED Tunnel connection failed: 403" in out and "TUNNEL" not in out


async def test_servers_cannot_be_reached_around_the_proxy(box: Box, nats_url: str) -> None:
    nats = urlparse(nats_url)
    code = (
        "import socket\n"
        f"for host, port in [('127.0.0.1', {box.allowed}), ('127.0.0.1', {box.denied}),\n"
        f"                   ({nats.hostname!r}, {nats.port}), ('10.0.2.2', 80),\n"
        "                   ('1.1.1.1', 443)]:\n"
        "    try:\n"
        "        s = socket.create_connection((host, port), timeout=3)\n"
        "        print('CONNECTED', host, port, s.recv(10))\n"
        "    except OSError as e:\n"
        "        print('BLOCKED', host, port, e.errno)\n"
    )
    out = await box.python(code)
    assert "CONNECTED" not in out and out.count("BLOCKED") == 5


async def test_the_bus_cannot_be_reached_through_the_proxy(box: Box, nats_url: str) -> None:
    nats = urlparse(nats_url)
    code = (
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n"
        f"s.sendall(b'CONNECT {nats.hostname}:{nats.port} HTTP/1.1\\r\\n\\r\\n')\n"
        "print('ANSWER', s.recv(200))\n"
        # A raw NATS greeting to the proxy itself: not an HTTP request, refused.
        "s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n"
        "s.sendall(b'CONNECT {\"verbose\":false}\\r\\nPUB x 1\\r\\n1\\r\\n\\r\\n')\n"
        "print('RAW', s.recv(200))\n"
    )
    out = await box.python(code)
    assert 'ANSWER b"HTTP/1.1 403 Forbidden' in out and "not on the sandbox's egress" in out
    assert 'RAW b"HTTP/1.1 400 Bad Request' in out and "INFO" not in out


async def test_names_do_not_resolve_and_no_resolver_is_reachable(box: Box) -> None:
    resolvers = [
        line.split()[1]
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver")
    ] or ["127.0.0.53"]
    code = (
        "import socket\n"
        "try:\n"
        "    print('RESOLVED', socket.getaddrinfo('pypi.org', 443))\n"
        "except OSError as e:\n"
        "    print('NO DNS', e)\n"
        f"for server in {[*resolvers, '8.8.8.8']!r}:\n"
        "    family = socket.AF_INET6 if ':' in server else socket.AF_INET\n"
        "    u = socket.socket(family, socket.SOCK_DGRAM)\n"
        "    u.settimeout(2)\n"
        "    try:\n"
        "        u.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'\n"
        "                 b'\\x04pypi\\x03org\\x00\\x00\\x01\\x00\\x01', (server, 53))\n"
        "        print('ANSWERED', server, u.recvfrom(512))\n"
        "    except OSError as e:\n"
        "        print('UNREACHABLE', server, e.errno)\n"
    )
    out = await box.python(code)
    assert "NO DNS" in out and "RESOLVED" not in out and "ANSWERED" not in out


async def test_the_command_sees_only_the_sandboxs_proxy(box: Box) -> None:
    code = "import os\nprint('PROXY', os.environ.get('HTTPS_PROXY'), os.environ.get('NO_PROXY'))"
    assert "PROXY http://127.0.0.1:3128 None" in await box.python(code)


async def test_the_model_is_told_where_commands_may_go(box: Box) -> None:
    (tool,) = [tool for tool in box.tools.definitions() if tool["name"] == "run_command"]
    description = tool["description"]
    assert f"127.0.0.1:{box.allowed}" in description and "HTTP(S)_PROXY" in description
