"""The model endpoint, and nothing else, for a tool in a sandbox without a network.

The runner serves its metered model endpoint (``runtimes.model_endpoint``: plain HTTP,
the attempt's own key, each call counted and held to the attempt's limits) on a unix
socket in a directory the sandbox can read. Inside, ``relay_inside`` listens on the
sandbox's loopback, carries every connection to that socket and starts the tool with
``ANTHROPIC_BASE_URL`` pointing there. The sandbox's network namespace stays empty: no
other address is reachable, and the real endpoint's key never enters the sandbox.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from aether_agent_runner.runtimes.model_endpoint import ModelEndpoint

INSIDE_SOURCE = Path(__file__).with_name("relay_inside.py")
STDIO_SOURCE = Path(__file__).with_name("stdio_inside.py")
# What the tool is given as its endpoint: the inside relay fills in its loopback port.
INSIDE_URL = "http://127.0.0.1:{port}"


class RelayRefused(Exception):
    """The model endpoint cannot be relayed (the message says why and what to do)."""


def check_endpoint(base_url: str) -> None:
    """Raise ``RelayRefused`` for a model endpoint the runner cannot call on a tool's
    behalf (not an http or https URL)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RelayRefused(f"the model endpoint {base_url!r} is not an http(s) URL")


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
async def relayed(
    endpoint: ModelEndpoint, argv: list[str], scratch: Path
) -> AsyncIterator[list[str]]:
    """``argv`` behind the metered model endpoint: started in a sandbox without a network,
    it reaches ``endpoint`` through a socket served in ``scratch`` (a directory the sandbox
    reads) while in use. Raises ``RelayRefused``, before serving anything, for an endpoint
    the runner cannot call."""
    check_endpoint(endpoint.base_url)
    socket_path = scratch / "model.sock"
    async with endpoint.serving(socket_path):
        yield inside_argv(socket_path, INSIDE_URL, argv)
