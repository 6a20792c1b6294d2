"""What ``aether up`` says when a service exits: the most telling line of its log."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from aether.localstack import Supervisor


def supervisor_of(home: Path) -> Supervisor:
    stack: Any = SimpleNamespace(home=home)
    return Supervisor(stack=stack, stopping=threading.Event(), out=io.StringIO())


def line(level: str, msg: str, **extra: object) -> str:
    record = {"ts": "2026-12-05T15:00:00.000+00:00", "level": level, "service": "agent-runner"}
    return json.dumps({**record, "logger": "aether.runtime", "msg": msg, **extra})


def test_a_watchdogs_exit_is_told_by_its_critical_line(tmp_path: Path) -> None:
    """The watchdog writes the stacks, then its critical line, then the process exits
    with 70: ``up`` shows that line as a person reads it, not as JSON."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "agent-runner.log").write_text(
        "\n".join(
            [
                line("info", "ready", port=8103),
                line("error", "handler failed; recording the failed step"),
                "Thread 0x00007f (most recent call first):",
                '  File "/app/handlers.py", line 12 in prepare',
                line("critical", "event loop stuck for 61 s (limit 60 s)", exit_code=70),
            ]
        )
        + "\n"
    )
    said = supervisor_of(tmp_path)._last_error("agent-runner")
    assert "critical" in said
    assert "event loop stuck for 61 s" in said
    assert "exit_code=70" in said
    assert "{" not in said


def test_otherwise_the_last_error_is_told(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "agent-runner.log").write_text(
        "\n".join(
            [
                line("error", "could not connect to the bus"),
                line("warning", "retrying"),
                "Traceback (most recent call last):",
            ]
        )
        + "\n"
    )
    said = supervisor_of(tmp_path)._last_error("agent-runner")
    assert "could not connect to the bus" in said


class DeadPostgres:
    """An embedded PostgreSQL whose postmaster was killed, as ``Supervisor`` sees it."""

    pid = 4242
    returncode = -9

    def running(self) -> bool:
        return False

    def last_error(self) -> str:
        return "2026-12-05 20:02:00 UTC [2] PANIC:  could not write to file"


def test_a_dead_postgresql_is_told_and_started_again_with_backoff(tmp_path: Path) -> None:
    from aether.infra import PostgresExited

    starts: list[float] = []

    def restart_postgres() -> None:
        starts.append(1.0)
        raise PostgresExited("postgres exited with code 1: FATAL:  shared memory in use")

    stack: Any = SimpleNamespace(
        home=tmp_path, _postgres=DeadPostgres(), restart_postgres=restart_postgres
    )
    supervisor = Supervisor(stack=stack, stopping=threading.Event(), out=io.StringIO())
    supervisor._watch_postgres(100.0)
    said = supervisor.out.getvalue()  # type: ignore[attr-defined]
    assert "! PostgreSQL exited with code -9:\n    2026-12-05" in said
    assert "PANIC:  could not write to file" in said
    assert "starting it again in 1s" in said and "(restart 1)" in said
    supervisor._watch_postgres(100.5)  # not due yet: nothing is started
    assert starts == []
    supervisor._watch_postgres(101.0)
    assert starts == [1.0]
    said = supervisor.out.getvalue()  # type: ignore[attr-defined]
    assert "! PostgreSQL could not start again: postgres exited with code 1" in said
    assert "starting it again in 2s" in said and "(restart 2)" in said


def test_a_postgresql_given_by_url_is_not_watched(tmp_path: Path) -> None:
    stack: Any = SimpleNamespace(home=tmp_path, _postgres=None)
    supervisor = Supervisor(stack=stack, stopping=threading.Event(), out=io.StringIO())
    supervisor._watch_postgres(100.0)
    assert supervisor.due == {} and supervisor.out.getvalue() == ""  # type: ignore[attr-defined]


class Said:
    """What the supervisor prints, waited on line by line."""

    def __init__(self) -> None:
        self.text = ""
        self._seen = threading.Condition()

    def write(self, text: str) -> int:
        with self._seen:
            self.text += text
            self._seen.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        with self._seen:
            found = self._seen.wait_for(lambda: text in self.text, timeout)
        assert found, f"{text!r} never said; said:\n{self.text}"


def test_a_nats_server_that_stops_answering_is_killed_and_started_again(tmp_path: Path) -> None:
    """A nats-server that runs but answers nothing (SIGSTOP: alive to ``waitpid``) is
    taken for hung after three unanswered pings, killed and started again on its port
    and store by the watch of ``aether up``; it then answers."""
    import os
    import signal

    import psutil

    from aether.infra import EmbeddedNats
    from aether.localstack import NATS
    from aether.probe import Probe, ask_nats

    log = tmp_path / "logs" / "nats.log"
    log.parent.mkdir()
    nats = EmbeddedNats(tmp_path / "nats").start(log)

    def restart_nats() -> None:
        nats.kill()
        nats.start(log)

    stack: Any = SimpleNamespace(
        home=tmp_path,
        _nats=nats,
        _postgres=None,
        nats_url=nats.url,
        restart_nats=restart_nats,
        processes={},
    )
    said = Said()
    supervisor = Supervisor(stack=stack, stopping=threading.Event(), out=cast(Any, said))
    supervisor.record = lambda: None  # type: ignore[method-assign]
    # The default's seconds made shorter: the same counting.
    supervisor.probes[NATS] = Probe(
        lambda timeout: ask_nats(nats.url, timeout), interval=0.2, retry=0.2, timeout=1.0
    )
    assert nats.process is not None
    first, port = nats.process.pid, nats.port
    ask_nats(nats.url, 5.0)
    watching = threading.Thread(target=supervisor.watch, daemon=True)
    watching.start()
    try:
        os.kill(first, signal.SIGSTOP)
        said.wait_for(f"! nats-server (pid {first}) answered none of its last 3 pings")
        said.wait_for("nats-server started again on port")
        assert "(the last: " in said.text and "starting it again in 1s" in said.text
        assert nats.process is not None and nats.process.pid != first
        assert nats.port == port
        assert not psutil.pid_exists(first)
        ask_nats(nats.url, 5.0)  # the new server answers
        assert supervisor.restarts[NATS] == 1
    finally:
        supervisor.stopping.set()
        watching.join(10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(first, signal.SIGKILL)
        nats.stop()


def test_a_probe_counts_unanswered_questions_in_a_row() -> None:
    """Three unanswered questions in a row make a server hung; an answer in between
    starts the count again; a question left unanswered past the timeout counts as one."""
    from aether.probe import Probe

    answers: list[Exception | None] = []
    hang = threading.Event()
    asked = threading.Event()

    def ask(timeout: float) -> None:
        asked.set()
        answer = answers.pop(0)
        if answer is None:
            return
        if isinstance(answer, TimeoutError):
            hang.wait(30)
        raise answer

    probe = Probe(ask, interval=5.0, retry=1.0, timeout=2.0, limit=3)

    def question(now: float) -> bool:
        asked.clear()
        hung = probe.check(now)  # asks
        assert asked.wait(5)
        return hung

    def answered(now: float) -> bool:
        for _ in range(500):
            if probe._asking is None or probe._asking.done.is_set():
                break
            threading.Event().wait(0.01)
        return probe.check(now)

    answers[:] = [RuntimeError("refused"), RuntimeError("refused"), None]
    assert not probe.check(0.0)  # first check: the next question an interval on
    assert not question(5.0) and not answered(5.1) and probe.failures == 1
    assert not probe.check(5.5)  # the retry is not due yet
    assert not question(6.1) and not answered(6.2) and probe.failures == 2
    assert not question(7.2) and not answered(7.3) and probe.failures == 0
    answers[:] = [TimeoutError("never"), RuntimeError("a"), RuntimeError("b")]
    assert not question(12.3)
    assert not probe.check(13.0)  # still waiting for the answer
    assert not probe.check(14.3) and probe.failures == 1  # given up on after 2 s
    assert probe.last_error == "no answer within 2s"
    assert not question(15.3) and not answered(15.4)
    assert not question(16.4) and answered(16.5)
    assert probe.last_error == "RuntimeError: b"
    hang.set()


def test_a_service_probe_counts_only_once_the_service_has_answered() -> None:
    """A service's ``/healthz`` asked over HTTP: while nothing listens on its port yet
    (the service still starting) no unanswered question counts within the grace; once
    it has answered, three unanswered in a row make it hung; after a reset (the service
    started again) nothing counts until it answers again or the grace is over, and an
    answer heard elsewhere (its readiness) counts as one."""
    import http.server

    from aether.infra import free_port
    from aether.probe import Probe, ask_http

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    port = free_port()
    probe = Probe(
        lambda timeout: ask_http(f"http://127.0.0.1:{port}/healthz", timeout),
        interval=5.0,
        retry=1.0,
        timeout=5.0,
        grace=60.0,
    )
    clock = [0.0]

    def ask() -> bool:
        """One question asked and its answer collected; whether the service is hung."""
        clock[0] += 5.0
        assert not probe.check(clock[0])  # asks
        question = probe._asking
        assert question is not None and question.done.wait(10)
        clock[0] += 0.1
        return probe.check(clock[0])

    assert not probe.check(clock[0])
    for _ in range(5):  # not listening yet: refused, and not counted
        assert not ask()
    assert probe.failures == 0 and "ConnectError" in probe.last_error
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Healthy)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        assert not ask() and probe.answered and probe.failures == 0
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)
    assert not ask() and not ask() and probe.failures == 2
    assert ask() and probe.failures == 3
    assert probe.verdict(4242, "health checks").startswith(
        "(pid 4242) answered none of its last 3 health checks (the last: ConnectError"
    )
    probe.reset()
    assert not probe.check(clock[0])
    for _ in range(4):  # started again, not answering yet: not counted
        assert not ask()
    assert probe.failures == 0
    clock[0] += 60.0  # the grace is over: a service that never answered is hung too
    assert not ask() and not ask() and ask()
    probe.reset()
    assert not probe.check(clock[0])
    probe.heard()  # its readiness answered: counted at once
    assert not ask() and not ask() and ask()
