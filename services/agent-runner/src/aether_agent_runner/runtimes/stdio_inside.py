"""Runs inside an ACP runtime's sandbox (standard library only, passed as source with
``python -c``): connects to the unix socket the runner serves and starts the agent with
its standard input and output on pipes carried to and from that connection (a socket as
standard input and output confuses asyncio's pipe transports, which many agents use); its
standard error stays the sandbox's output. Exits with the agent's exit code. Arguments:
the socket's path, ``--``, the agent's argument vector."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
from typing import IO


def _to_agent(connection: socket.socket, stdin: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        while data := connection.recv(65536):
            stdin.write(data)
            stdin.flush()
    with contextlib.suppress(OSError):
        stdin.close()


def _from_agent(stdout: IO[bytes], connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := os.read(stdout.fileno(), 65536):
            connection.sendall(data)
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)


def main() -> None:
    path, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        sys.exit("aether-relay: usage: SOCKET -- PROGRAM [ARGUMENT...]")
    try:
        agent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as error:
        print(f"aether-relay: cannot start {argv[0]!r}: {error.strerror}", file=sys.stderr)
        sys.exit(127)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(path)
    assert agent.stdin is not None
    assert agent.stdout is not None
    threading.Thread(target=_to_agent, args=(connection, agent.stdin), daemon=True).start()
    carry = threading.Thread(target=_from_agent, args=(agent.stdout, connection), daemon=True)
    carry.start()
    code = agent.wait()
    carry.join(5)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
