"""Asking ``aether up``'s embedded servers and services a real question at an interval.

A server that is stopped (SIGSTOP), or accepts connections but never answers, is alive to
``waitpid`` and of no use to the services. ``up`` asks each of its embedded servers a
question the way a client does (PostgreSQL a query on a new connection, nats-server a
``PING`` after ``CONNECT``), and each of its services its ``/healthz`` as Kubernetes'
liveness probe does, under a timeout, in a thread of its own so that the watch of
everything else goes on meanwhile; after ``PROBE_FAILURES`` unanswered questions in a row
the process is taken for hung, and ``up`` kills it and starts it again.

A new connection each time, not one kept open: a stopped postmaster still has its
backends, and a query on an existing connection is answered by one of them.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

PROBE_INTERVAL = 5.0  # between two answered questions
PROBE_RETRY = 1.0  # after an unanswered one: a hang is confirmed in seconds, not minutes
PROBE_TIMEOUT = 5.0  # how long an answer is waited for
PROBE_FAILURES = 3  # unanswered questions in a row that make a server hung
# A service's /healthz is answered by its event loop, which real work on a crowded machine
# may hold for seconds: six in a row (about 35 s, as Kubernetes' liveness probe allows and
# within the loop watchdog's minute) before a service is taken for hung.
SERVICE_PROBE_FAILURES = 6


@dataclass
class _Question:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


@dataclass
class Probe:
    """Asks ``ask(timeout)`` (which raises when the answer is wrong or missing) every
    ``interval`` seconds, one question at a time, and counts the unanswered ones in a
    row. ``check`` is called on every pass of the watch with the time of the pass.

    With a ``grace``, unanswered questions count only once one was answered (or the
    caller said so with ``heard``) or ``grace`` seconds after the first check: a service
    still starting (not listening yet) is not hung, and one that never answers after its
    start is, in the end."""

    ask: Callable[[float], object]
    interval: float = PROBE_INTERVAL
    retry: float = PROBE_RETRY
    timeout: float = PROBE_TIMEOUT
    limit: int = PROBE_FAILURES
    grace: float = 0.0
    answered: bool = False  # since the start (or the last ``reset``)
    failures: int = 0
    last_error: str = ""
    _asking: _Question | None = None
    _next: float | None = None
    _counted_from: float = 0.0

    def check(self, now: float) -> bool:
        """Collect the answer of the question in flight or ask the next one when due;
        whether ``limit`` questions in a row went unanswered."""
        if self._next is None:
            self._next = now + self.interval  # the server was just started or found
            self._counted_from = now + self.grace
        question = self._asking
        if question is not None:
            if question.done.is_set():
                self._asking = None
                if question.error is None:
                    self.failures, self.last_error, self.answered = 0, "", True
                    self._next = now + self.interval
                else:
                    self._failed(question.error, now)
            elif now - question.started >= self.timeout:
                # Given up on: its thread ends when the server answers or is killed.
                self._asking = None
                self._failed(f"no answer within {self.timeout:g}s", now)
        elif now >= self._next:
            self._asking = _Question(started=now)
            threading.Thread(
                target=self._run, args=(self._asking,), name="probe", daemon=True
            ).start()
        return self.failures >= self.limit

    def _failed(self, error: str, now: float) -> None:
        if self.answered or now >= self._counted_from:
            self.failures += 1
        self.last_error = error
        self._next = now + self.retry

    def _run(self, question: _Question) -> None:
        try:
            self.ask(self.timeout)
        except Exception as error:  # any failure is an unanswered question
            question.error = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        finally:
            question.done.set()

    def reset(self) -> None:
        """Forget the failures (the server was started again); the next question comes
        an interval after the next check."""
        self.failures, self.last_error, self.answered = 0, "", False
        self._asking, self._next = None, None

    def heard(self) -> None:
        """The server answered someone else's question (a readiness check): count from
        now on."""
        self.answered = True

    def verdict(self, pid: int | None, asked: str) -> str:
        """What is said of the server or service killed for its unanswered ``asked``."""
        named = f"(pid {pid}) " if pid is not None else ""
        return (
            f"{named}answered none of its last {self.limit} {asked}"
            f" (the last: {self.last_error}); killed it"
        )


def ask_postgres(url: str, timeout: float) -> None:
    """A new connection to the server at ``url`` and ``SELECT 1`` on it, as the gateway
    connects; raises unless it answers. The connection's own timeout bounds a server
    that never accepts it; one that accepts and never answers keeps the asking thread
    until it is killed (``Probe`` has given up on it by then)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, round(timeout)), autocommit=True) as conn:
        row = conn.execute("SELECT 1").fetchone()
    if row != (1,):
        raise RuntimeError(f"SELECT 1 answered {row!r}")


def ask_http(url: str, timeout: float) -> None:
    """``GET url`` on a new connection (a client made for this one question), as a
    liveness probe asks a service's ``/healthz``; raises unless it answers 200 within
    ``timeout``."""
    from aether import http as aether_http

    with aether_http.client(timeout=timeout) as client:
        response = client.get(url)
    if response.status_code != 200:
        raise RuntimeError(f"answered {response.status_code}")


def ask_nats(url: str, timeout: float) -> None:
    """``CONNECT`` (as the user of ``url``) and ``PING`` on a new connection to the
    nats-server at ``url``; raises unless it answers ``PONG`` within ``timeout``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    options: dict[str, object] = {"verbose": False, "pedantic": False, "name": "aether-up-probe"}
    if parts.username:
        options["user"] = unquote(parts.username)
        options["pass"] = unquote(parts.password or "")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        reader = sock.makefile("rb")
        info = reader.readline(1 << 16)
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"no INFO line (got {info[:40]!r})")
        sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        while True:
            line = reader.readline(1 << 16)
            if not line:
                raise RuntimeError("the server closed the connection")
            if line.startswith(b"PONG"):
                return
            if line.startswith(b"-ERR"):
                raise RuntimeError(line.decode(errors="replace").strip())
