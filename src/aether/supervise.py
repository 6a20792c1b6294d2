"""Supervising the local stack that ``aether up`` runs: one stack per home, ports that are
really ours, children that never outlive it.

- **One stack per home.** ``up`` holds an exclusive ``flock`` on ``<home>/up.lock`` for its
  whole life. The kernel drops the lock when the process dies however it dies, so a lock
  file left behind is never mistaken for a running stack.
- **The home says what runs.** ``<home>/stack.json`` records the ``up`` process, the
  gateway URL, the ports and every child (pid and start time, so a recycled pid is never
  taken for ours). ``aether status``/``down``/``logs`` and the rest of the command line
  read it.
- **Ready means ours.** Ports are checked free before anything starts, and a service is
  ready only when its ``/readyz`` answers 200 *with the pid we started*; another program
  answering on the port is an error, not readiness.
- **Nothing outlives ``up``.** SIGINT, SIGTERM and SIGHUP (terminal closed) stop
  everything. For SIGKILL, ``up`` starts a small reaper in its own session that holds the
  read end of a pipe: when ``up`` dies the pipe closes and the reaper stops whatever the
  state file still lists as running (services, NATS, PostgreSQL).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from aether import http as aether_http
from aether.infra import free_port, port_is_free

STATE_FILE = "stack.json"
LOCK_FILE = "up.lock"
DEFAULT_PORT_BASE = 8100
# Offsets from the port base, in the order the services have always had.
PORT_OFFSETS = {"gateway": 0, "scheduler": 1, "planner": 2, "agent-runner": 3, "git-broker": 4}


class StackError(Exception):
    """Something the person running the stack must know about, said in one line, with
    what to do about it in ``hint``."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  {self.hint}" if self.hint else text


# --- the home: lock and state ------------------------------------------------------------


def read_state(home: Path) -> dict[str, Any] | None:
    """What ``up`` last wrote about the stack of ``home`` (running or not)."""
    try:
        state: dict[str, Any] = json.loads((home / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state


def write_state(home: Path, state: dict[str, Any]) -> None:
    """Replace the state file in one step, so a reader never sees half of it."""
    temporary = home / f".{STATE_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    temporary.replace(home / STATE_FILE)


def lock_held(home: Path) -> bool:
    """Whether a live ``up`` holds the lock of ``home``."""
    path = home / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


def running_state(home: Path) -> dict[str, Any] | None:
    """The state of the stack running on ``home``, or None when none runs."""
    return read_state(home) if lock_held(home) else None


@dataclass
class HomeLock:
    """The exclusive right to run a stack on ``home``, held until ``release`` or death."""

    home: Path
    fd: int | None = None

    def acquire(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackError(
                f"a stack is already running on {self.home}{_describe_holder(self.home)}",
                f"stop it with `aether down --home {shlex.quote(str(self.home))}`, or use"
                " another --home",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _describe_holder(home: Path) -> str:
    state = read_state(home) or {}
    parts = []
    if state.get("pid"):
        parts.append(f"aether up pid {state['pid']}")
    if state.get("gateway_url"):
        parts.append(f"gateway {state['gateway_url']}")
    return f" ({', '.join(parts)})" if parts else ""


# --- ports ------------------------------------------------------------------------------


def plan_ports(
    services: Iterable[str], base: int | None = None, overrides: dict[str, int] | None = None
) -> dict[str, int]:
    """Each service's port: ``base`` plus its offset (8100… by default), or free ports when
    ``base`` is 0; ``overrides`` win."""
    ports: dict[str, int] = {}
    for name in services:
        if overrides and name in overrides:
            ports[name] = overrides[name]
        elif base == 0:
            ports[name] = free_port()
        else:
            ports[name] = (DEFAULT_PORT_BASE if base is None else base) + PORT_OFFSETS[name]
    return ports


def port_owner(port: int) -> str:
    """Who listens on ``port`` (as far as this user may see), for error messages."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return ""
                process = psutil.Process(conn.pid)
                command = " ".join(process.cmdline()[:3])
                return f" by pid {conn.pid} ({command})"
    return ""


def check_ports(ports: dict[str, int]) -> None:
    """Fail, naming each service and port, when any port cannot be bound."""
    taken = [
        f"{port} ({name}) is in use{port_owner(port)}"
        for name, port in ports.items()
        if not port_is_free(port)
    ]
    if taken:
        # A fixed suggestion would name the very base that just failed (8200 when 8200 was
        # asked for): offer one whose five ports are free now.
        base = next_free_port_base(min(ports.values()))
        other = f"--port-base {base}` (or --port-base 0" if base else "--port-base 0` ("
        raise StackError(
            "cannot start: port " + "; port ".join(taken),
            f"choose other ports with `aether up {other} for any free ports), "
            "or stop what holds them",
        )


def next_free_port_base(after: int, tries: int = 10) -> int | None:
    """The first of ``after`` + 100, + 200 … whose stack ports are all free now, if any."""
    for base in range(after + 100, after + 100 * (tries + 1), 100):
        ports = [base + offset for offset in PORT_OFFSETS.values()]
        if max(ports) < 65536 and all(port_is_free(port) for port in ports):
            return base
    return None


# --- processes --------------------------------------------------------------------------


def process_record(pid: int, port: int | None = None) -> dict[str, Any]:
    """What identifies a child later: its pid and start time."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        created = 0.0
    return {"pid": pid, "port": port, "created": created}


def alive(record: dict[str, Any]) -> psutil.Process | None:
    """The process ``record`` describes, if it still runs (and is not a recycled pid)."""
    try:
        process = psutil.Process(int(record["pid"]))
        if record.get("created") and abs(process.create_time() - record["created"]) > 1.0:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.Error, KeyError, ValueError, TypeError):
        return None
    return process


def postgres_postmaster(data_dir: Path) -> int | None:
    """The pid of the PostgreSQL server running on ``data_dir``, if one is."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        process = psutil.Process(pid)
        if "postgres" not in process.name() or process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return pid


def prune_postgres_handles(data_dir: Path) -> None:
    """Drop dead processes from pgserver's list of handles on ``data_dir``.

    pgserver stops the server only when the last process holding it lets go; a pid left in
    the list by a killed ``up`` would make every later clean stop leave PostgreSQL running.
    """
    path = data_dir / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError):
        pids = json.loads(path.read_text())
        living = [pid for pid in pids if psutil.pid_exists(pid) and pid != os.getpid()]
        if living != pids:
            path.write_text(json.dumps(living))


def _terminate(records: list[dict[str, Any]], grace: float) -> None:
    """SIGTERM each live process (its whole group when it leads one), then SIGKILL what
    is left after ``grace`` seconds."""
    victims = [(record, process) for record in records if (process := alive(record))]
    for record, process in victims:
        _signal(record, process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for record, process in victims:
        with contextlib.suppress(psutil.Error):
            process.wait(max(0.0, deadline - time.monotonic()))
            continue
        _signal(record, process, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            process.wait(5)


def _signal(record: dict[str, Any], process: psutil.Process, signum: int) -> None:
    with contextlib.suppress(OSError, psutil.Error):
        if record.get("group") and os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)


def reap(home: Path) -> list[str]:
    """Stop whatever the state file of ``home`` lists as still running, and a PostgreSQL
    server still running on its data directory. Returns the names stopped."""
    state = read_state(home) or {}
    records = state.get("processes", {})
    services = {n: r for n, r in records.items() if n not in ("nats", "postgres")}
    stopped = [name for name, record in records.items() if alive(record)]
    _terminate(list(services.values()), grace=15.0)
    if "nats" in records:
        _terminate([records["nats"]], grace=10.0)
    postmaster = postgres_postmaster(home / "postgres")
    if postmaster is not None:
        stopped.append("postgres") if "postgres" not in stopped else None
        # SIGINT is PostgreSQL's fast shutdown: clients are gone, no need to wait on them.
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(postmaster)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except psutil.TimeoutExpired:
                process.send_signal(signal.SIGQUIT)
                process.wait(10)
    prune_postgres_handles(home / "postgres")
    return stopped


def start_reaper(home: Path) -> IO[bytes]:
    """Start the reaper of ``home``; it acts when the returned pipe closes (our death)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aether.supervise", "reap", str(home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a closed terminal's SIGHUP must not reach it
    )
    assert process.stdin is not None
    return process.stdin


def _reaper_main(home: Path) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when every writer (``up``) is gone
    reap(home)


# --- human summaries of service logs ---------------------------------------------------


def summarise(line: str) -> str | None:
    """One short line for a service's JSON log line, or None when it is routine."""
    try:
        record = json.loads(line)
    except ValueError:
        text = line.strip()
        return text or None
    if not isinstance(record, dict):
        return None
    level = str(record.get("level", "info"))
    if level not in ("warning", "error", "critical"):
        return None
    return human_log(record)


def human_log(record: dict[str, Any]) -> str:
    """A JSON log record as ``HH:MM:SS service level message key=value…``."""
    clock = str(record.get("ts", ""))[11:19]
    skip = {"ts", "level", "service", "logger", "msg", "exc", "color_message"}
    extras = " ".join(f"{k}={v}" for k, v in record.items() if k not in skip)
    text = f"{clock} {record.get('service', '?'):<12} {record.get('level', ''):<7} "
    text += str(record.get("msg", ""))
    if extras:
        text += f"  {extras}"
    if record.get("exc"):
        text += "  | " + str(record["exc"]).strip().splitlines()[-1]
    return text


@dataclass
class LogEcho:
    """What ``Stack`` echoes service log lines to: raw with ``verbose``, else only
    warnings and errors, one human line each."""

    out: IO[str]
    verbose: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, line: str) -> int:
        text = line.rstrip("\n") if self.verbose else summarise(line)
        if text:
            with self.lock:
                self.out.write(text + "\n")
        return len(line)

    def flush(self) -> None:
        self.out.flush()


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a file (whole file read: service logs are modest)."""
    try:
        content = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return content[-lines:] if lines > 0 else content


def follow(paths: list[Path], stop: Callable[[], bool], interval: float = 0.3) -> Iterator[str]:
    """New lines appended to ``paths`` from now on, until ``stop()``."""
    offsets = {path: path.stat().st_size if path.exists() else 0 for path in paths}
    partial: dict[Path, bytes] = dict.fromkeys(paths, b"")
    while not stop():
        grew = False
        for path in paths:
            with contextlib.suppress(OSError), path.open("rb") as handle:
                handle.seek(offsets[path])
                chunk = handle.read()
                if not chunk:
                    continue
                grew = True
                offsets[path] += len(chunk)
                data = partial[path] + chunk
                *complete, partial[path] = data.split(b"\n")
                for raw in complete:
                    yield f"{path.stem}\t{raw.decode('utf-8', errors='replace')}"
        if not grew:
            time.sleep(interval)


def ready_pid(url: str, http: httpx.Client | None = None) -> tuple[int, int | None] | None:
    """``/readyz`` of ``url``: its status code and the pid it reports, or None when
    nothing answers. A loop asking again passes its ``http`` client, made once."""
    try:
        if http is None:
            with aether_http.client(timeout=1.0) as own:
                response = own.get(f"{url}/readyz")
        else:
            response = http.get(f"{url}/readyz", timeout=1.0)
    except httpx.HTTPError:
        return None
    try:
        pid = response.json().get("pid")
    except (ValueError, AttributeError):
        pid = None
    return response.status_code, pid if isinstance(pid, int) else None


if __name__ == "__main__":
    if sys.argv[1:2] == ["reap"] and len(sys.argv) == 3:
        _reaper_main(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m aether.supervise reap HOME")
