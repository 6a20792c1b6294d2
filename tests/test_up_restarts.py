"""What ``aether up`` says when a service exits: the most telling line of its log."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
