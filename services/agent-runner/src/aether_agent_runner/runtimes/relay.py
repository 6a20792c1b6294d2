"""The model endpoint, and nothing else, for a tool in a sandbox without a network.

The runner serves a unix socket in a directory the sandbox can read; every connection to
it is carried to the host and port of the runner's own model endpoint (whatever the tool
sends: TLS passes through untouched). Inside, ``relay_inside`` listens on the sandbox's
loopback. For an ``http`` endpoint the tool's ``ANTHROPIC_BASE_URL`` points there. For an
``https`` one the tool keeps its URL, since TLS checks the name it dialled, and reaches it
through ``HTTPS_PROXY``: the inside relay answers ``CONNECT`` to that host and port alone
and tunnels it. The sandbox's network namespace stays empty: no other address is
reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

INSIDE_SOURCE = Path(__file__).with_name("relay_inside.py")
# What the inside relay is given for an https endpoint: a tunnel to this authority alone.
TUNNEL = "connect:"
STDIO_SOURCE = Path(__file__).with_name("stdio_inside.py")


class RelayRefused(Exception):
    """The model endpoint cannot be relayed (the message says why and what to do)."""


def endpoint(base_url: str) -> tuple[str, int, str]:
    """The host and port the relay connects to, and what the inside relay is given: the
    URL the tool is given (``{port}`` standing for the loopback port the inside relay
    picks), or for https ``TUNNEL`` and the authority the tool may ``CONNECT`` to."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RelayRefused(f"the model endpoint {base_url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    if parts.scheme == "https":
        return host, port, TUNNEL + authority(host, port)
    return host, port, f"http://127.0.0.1:{{port}}{parts.path.rstrip('/')}"


def authority(host: str, port: int) -> str:
    """``host:port`` as a ``CONNECT`` request names it (an IPv6 address in brackets)."""
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracketed = False
    return f"[{host}]:{port}" if bracketed else f"{host.lower()}:{port}"


def inside_argv(socket_path: Path, url: str, argv: list[str]) -> list[str]:
    """The sandbox's argument vector: the inside relay, which then starts ``argv``."""
    source = INSIDE_SOURCE.read_text()
    return [sys.executable, "-I", "-c", source, str(socket_path), url, "--", *argv]


def stdio_argv(socket_path: Path, argv: list[str]) -> list[str]:
    """The sandbox's argument vector for an agent whose standard input and output are a
    connection to ``socket_path`` (``stdio_inside``)."""
    source = STDIO_SOURCE.read_text()
    return [sys.executable, "-I", "-c", source, str(socket_path), "--", *argv]


@contextlib.asynccontextmanager
async def relayed(base_url: str, argv: list[str], scratch: Path) -> AsyncIterator[list[str]]:
    """``argv`` behind the model relay: started in a sandbox without a network, it reaches
    ``base_url`` through a socket served in ``scratch`` (a directory the sandbox reads)
    while in use. Raises ``RelayRefused``, before serving anything, for an endpoint the
    relay cannot carry."""
    host, port, url = endpoint(base_url)
    socket_path = scratch / "model.sock"
    async with serving(socket_path, host, port):
        yield inside_argv(socket_path, url, argv)


@contextlib.asynccontextmanager
async def serving(socket_path: Path, host: str, port: int) -> AsyncIterator[None]:
    """Serve ``socket_path``, carrying each connection to ``host:port``, while in use."""
    tasks: set[asyncio.Task[None]] = set()

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                end.close()

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(carry(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_unix_server(accepted, path=str(socket_path))
    try:
        yield
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
