"""The egress allow-list: an HTTP proxy outside the sandbox that connects only where the
operator said commands may go.

A sandbox with an allow-list keeps its empty network namespace. Its init listens on
``127.0.0.1:3128`` inside and copies each connection to this proxy's unix socket, which is
bind-mounted in; the commands get ``HTTP_PROXY``/``HTTPS_PROXY`` pointing there. The proxy
takes ``CONNECT host:port`` (HTTPS and any TLS) and absolute-form ``http://`` requests,
checks the destination against the list, resolves the name itself (the sandbox has no
DNS) and connects, or answers ``403`` naming the refused destination and the setting.

An entry is ``host:port``, ``host`` (ports 80 and 443) or ``*.domain[:port]`` (any name
under the domain); IPv6 literals in brackets. A name matched by a wildcard must resolve to
a public address (so a wildcard cannot be pointed at the machine's own services by DNS);
a name or address the operator listed exactly is trusted as listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("aether.sandbox.egress")

INSIDE_PORT = 3128
INSIDE_SOCKET = Path("/run/aether/egress.sock")
DEFAULT_PORTS = (80, 443)
HEAD_LIMIT = 64 * 1024
HEAD_SECONDS = 30.0
CONNECT_SECONDS = 15.0
SETTING = "AETHER_SANDBOX_EGRESS"


@dataclass(frozen=True)
class Destination:
    """One allow-list entry: ``host`` (lower case; ``*.domain`` for a wildcard) and
    ``ports``."""

    host: str
    ports: tuple[int, ...]

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def matches(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        if self.wildcard:
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host

    @classmethod
    def parse(cls, entry: str) -> Destination:
        """``ValueError`` naming the entry when it is not ``host[:port]``."""
        text = entry.strip().lower()
        host, port = _split(text)
        if not host or any(c.isspace() or c in "/@?#" for c in host) or "*" in host[1:]:
            raise ValueError(f"{SETTING}: {entry!r} is not host[:port] or *.domain[:port]")
        if host.startswith("*") and not host.startswith("*."):
            raise ValueError(f"{SETTING}: {entry!r}: a wildcard is *.domain")
        if port is None:
            return cls(host, DEFAULT_PORTS)
        return cls(host, (port,))


def _split(text: str) -> tuple[str, int | None]:
    """(host, port) of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"{SETTING}: {text!r} is not [address]:port")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{SETTING}: {text!r} has no valid port")
    return host, int(port)


def parse_allow_list(value: str) -> tuple[Destination, ...]:
    """The destinations of a comma- or space-separated list."""
    return tuple(Destination.parse(part) for part in value.replace(",", " ").split())


class EgressProxy:
    """The proxy of one sandbox, on a unix socket in a private directory (``path``)."""

    def __init__(self, allowed: tuple[Destination, ...]) -> None:
        self.allowed = allowed
        self._directory = Path(tempfile.mkdtemp(prefix="aether-egress-"))
        self.path = self._directory / "egress.sock"
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._accepted, path=str(self.path), limit=HEAD_LIMIT
        )

    def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        shutil.rmtree(self._directory, ignore_errors=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEAD_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _answer(writer, 400, "the sandbox's proxy takes CONNECT and http:// requests")
            return
        method, target, version = parts
        if method == "CONNECT":
            host, port = _split(target.lower())
            if port is None:
                await _answer(writer, 400, "CONNECT needs host:port")
                return
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                await _answer(writer, 400, "only absolute http:// URLs (use CONNECT for https)")
                return
            host, port = url.hostname.lower(), url.port or 80
        refusal, address = await self._check(host, port)
        if refusal is not None:
            log.info("egress refused", extra={"destination": f"{host}:{port}", "why": refusal})
            await _answer(writer, 403, refusal)
            return
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                upstream_reader, upstream = await asyncio.open_connection(address, port)
        except (OSError, TimeoutError) as error:
            await _answer(writer, 502, f"{host}:{port} could not be reached: {error}")
            return
        log.info("egress allowed", extra={"destination": f"{host}:{port}"})
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(_origin_form(lines, method, target, version))
            await asyncio.gather(_copy(reader, upstream), _copy(upstream_reader, writer))
        finally:
            upstream.close()

    async def _check(self, host: str, port: int) -> tuple[str | None, str]:
        """(why the destination is refused or ``None``, the address to connect to)."""
        matched = [entry for entry in self.allowed if entry.matches(host, port)]
        if not matched:
            return (
                f"{host}:{port} is not on the sandbox's egress allow-list ({SETTING}); "
                "ask the operator to add it",
                "",
            )
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=1)
        except OSError as error:
            return f"{host} does not resolve: {error}", ""
        address = str(found[0][4][0])
        if all(entry.wildcard for entry in matched) and not ipaddress.ip_address(address).is_global:
            return f"{host} resolves to {address}, not a public address", ""
        return None, address


def _origin_form(lines: list[str], method: str, target: str, version: str) -> bytes:
    """The request as the origin server expects it: its path, no proxy headers, and the
    connection closed after it (one destination per proxy connection)."""
    url = urlsplit(target)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = [
        line
        for line in lines[1:]
        if line
        and line.split(":", 1)[0].strip().lower() not in ("proxy-connection", "connection")
        and not line.lower().startswith("proxy-")
    ]
    return "\r\n".join(
        [f"{method} {path} {version}", *headers, "Connection: close", "", ""]
    ).encode("latin-1")


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = f"aether sandbox: {reason}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
