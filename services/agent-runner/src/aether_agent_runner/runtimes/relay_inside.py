"""Runs inside a command runtime's sandbox (standard library only, passed as source with
``python -c``): listens on the sandbox's own loopback, carries every connection to the
unix socket the runner serves (the one way out of an empty network namespace), then
starts the tool and exits with the tool's exit code.

For an ``http`` endpoint the tool's ``ANTHROPIC_BASE_URL`` points at that loopback port.
For an ``https`` one (``connect:HOST:PORT``) the tool keeps its URL and gets
``HTTPS_PROXY`` pointing there: each connection must open with ``CONNECT HOST:PORT``
(that authority alone, answered ``403`` otherwise), and is then a tunnel to the runner's
socket, TLS end to end.

Arguments: the socket's path, the URL with ``{port}`` for the port chosen here (or
``connect:`` and the authority), ``--``, and the tool's argument vector.
"""

import contextlib
import os
import socket
import subprocess
import sys
import threading

TUNNEL = "connect:"
HEAD_LIMIT = 16 * 1024


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _carry(client: socket.socket, path: str, first: bytes = b"") -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
        if first:
            upstream.sendall(first)
    except OSError:
        client.close()
        upstream.close()
        return
    for source, target in ((client, upstream), (upstream, client)):
        threading.Thread(target=_pipe, args=(source, target), daemon=True).start()


def _tunnel(client: socket.socket, path: str, allowed: str) -> None:
    """Answer the connection's ``CONNECT``: a tunnel to ``allowed`` only."""
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk or len(head) > HEAD_LIMIT:
                client.close()
                return
            head += chunk
        request, _, rest = head.partition(b"\r\n\r\n")
        words = request.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(words) != 3 or words[0].upper() != "CONNECT" or words[1].lower() != allowed:
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            client.close()
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    except OSError:
        client.close()
        return
    _carry(client, path, rest)


def _serve(listener: socket.socket, path: str, allowed: str | None) -> None:
    while True:
        client, _ = listener.accept()
        if allowed is None:
            _carry(client, path)
        else:
            threading.Thread(target=_tunnel, args=(client, path, allowed), daemon=True).start()


def main() -> None:
    path, template, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        sys.exit("aether-relay: usage: SOCKET URL -- PROGRAM [ARGUMENT...]")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    env = dict(os.environ)
    allowed = None
    if template.startswith(TUNNEL):
        allowed = template[len(TUNNEL) :].lower()
        for name in ("HTTPS_PROXY", "https_proxy"):
            env[name] = f"http://127.0.0.1:{port}"
        for name in ("NO_PROXY", "no_proxy"):
            env.pop(name, None)
    else:
        env["ANTHROPIC_BASE_URL"] = template.replace("{port}", str(port))
    threading.Thread(target=_serve, args=(listener, path, allowed), daemon=True).start()
    try:
        child = subprocess.Popen(argv, env=env)
    except OSError as error:
        print(f"aether-relay: cannot start {argv[0]!r}: {error.strerror}", flush=True)
        sys.exit(127)
    code = child.wait()
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
