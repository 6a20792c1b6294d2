"""The service's HTTP port, bound before anything else starts.

uvicorn binds its port only after the app's start-up has run; a port taken by another
process then ends in a shutdown that races the consumers still starting, and the process
can linger, neither serving nor gone. Binding first means a taken port ends the process
at once, before it has touched the bus, with ``EXIT_PORT_TAKEN`` and "address already in
use" in its log: what a supervisor (``aether up``, the stack of the tests) looks for to
start the service on another port.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys

log = logging.getLogger("aether.runtime")

# The exit status of a service whose port was taken before it could bind it.
EXIT_PORT_TAKEN = 98


def bind_or_exit(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), or the process exits."""
    sock = socket.socket(family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        log.error("cannot listen on %s:%d: %s", host, port, reason)
        sys.exit(EXIT_PORT_TAKEN if exc.errno == errno.EADDRINUSE else 1)
    sock.set_inheritable(True)
    return sock
