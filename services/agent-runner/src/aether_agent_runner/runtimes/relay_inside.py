"""Runs inside a command runtime's sandbox (standard library only, passed as source with
``python -c``): listens on the sandbox's own loopback, carries every connection to the
unix socket the runner serves (the one way out of an empty network namespace: the
runner's metered model endpoint), then starts the tool with ``ANTHROPIC_BASE_URL``
pointing at that loopback port and exits with the tool's exit code. Proxy variables are
dropped: there is nothing out there a proxy could reach, and one would take the tool's
calls to the loopback elsewhere.

Arguments: the socket's path, the URL with ``{port}`` for the port chosen here, ``--``,
and the tool's argument vector.
"""

import contextlib
import os
import socket
import subprocess
import sys
import threading

PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _carry(client: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    for source, target in ((client, upstream), (upstream, client)):
        threading.Thread(target=_pipe, args=(source, target), daemon=True).start()


def _serve(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        _carry(client, path)


def main() -> None:
    path, template, separator, *argv = sys.argv[1:]
    if separator != "--" or not argv:
        sys.exit("aether-relay: usage: SOCKET URL -- PROGRAM [ARGUMENT...]")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    env = dict(os.environ)
    for name in PROXIES:
        env.pop(name, None)
        env.pop(name.lower(), None)
    env["ANTHROPIC_BASE_URL"] = template.replace("{port}", str(port))
    threading.Thread(target=_serve, args=(listener, path), daemon=True).start()
    try:
        child = subprocess.Popen(argv, env=env)
    except OSError as error:
        print(f"aether-relay: cannot start {argv[0]!r}: {error.strerror}", flush=True)
        sys.exit(127)
    code = child.wait()
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
