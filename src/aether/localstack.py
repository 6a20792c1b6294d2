"""``aether up``, ``down``, ``status`` and ``logs``: the local stack as a newcomer sees it.

``up`` prints what it is doing while it starts, says it is ready only once every process
it started answers ``/readyz`` with its own pid, and then stays calm: a short banner, a
line when a service warns, fails or is restarted. Raw JSON logs go to
``<home>/logs/<service>.log`` (``--verbose`` echoes them too).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx

from aether import http as aether_http
from aether import supervise
from aether.credentials import TOKEN_FILE, event_id_fingerprint
from aether.infra import NatsExited, PostgresExited
from aether.locate import hand_back_home, remember_home, remembered_home
from aether.probe import SERVICE_PROBE_FAILURES, Probe, ask_http, ask_nats, ask_postgres
from aether.supervise import StackError

if TYPE_CHECKING:
    # Imported by ``up`` only: the stack pulls in the services' runtime (about 0.7 s of
    # CPU), which ``status``, ``down`` and ``logs`` do without.
    from aether.stack import ServiceProcess, Stack

START_TIMEOUT = 240.0
STABLE_AFTER = 60.0  # a service up this long has its restart backoff reset
NATS = "nats"  # the embedded nats-server's name in the state file and the backoff
POSTGRES = "postgres"  # the embedded PostgreSQL's


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Progress:
    """A line saying what is still starting, refreshed in place on a terminal and every
    ten seconds elsewhere, so a slow first start is never silent."""

    out: IO[str]
    waiting: str = ""
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_plain: float = 0.0

    def __post_init__(self) -> None:
        self.tty = self.out.isatty()
        threading.Thread(target=self._tick, name="progress", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.show()

    def show(self) -> None:
        with self._lock:
            if not self.waiting:
                return
            elapsed = time.monotonic() - self.started
            text = f"  … waiting for {self.waiting} ({_duration(elapsed)})"
            if self.tty:
                self.out.write("\r\x1b[2K" + text)
                self.out.flush()
            elif elapsed - self._last_plain >= 10.0:
                self._last_plain = elapsed
                self.out.write(text + "\n")
                self.out.flush()

    def say(self, line: str) -> None:
        with self._lock:
            self._say(line)

    def done(self, line: str, waiting: str) -> None:
        """Say that a step is done and name what is waited for next, in one go: the line
        refreshed in place (or every ten seconds) never names a finished step as still
        awaited."""
        with self._lock:
            self._say(line)
            self.waiting = waiting

    def _say(self, line: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
        self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self.waiting = ""
            if self.tty:
                self.out.write("\r\x1b[2K")
                self.out.flush()


def without_credentials(url: str) -> str:
    """``url`` without its user and password. The stack's NATS URL carries the bus
    administrator's password, which lives under ``credentials/`` (owner only); the state
    file is readable by anyone who can read the home."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return ""
    if "@" not in parts.netloc:
        return url
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class _Embedded:
    """What the supervisor needs of an embedded server (nats-server, PostgreSQL) to keep
    it running, and how it speaks of it."""

    name: str  # in the state file and the backoff
    label: str
    restart: Callable[[], object]
    failures: tuple[type[Exception], ...]  # a restart that failed, to be tried again
    after_failure: Callable[[], object]
    refused: str  # said of a failed restart, before its error
    alive: Callable[[], bool]
    ended: Callable[[], str]  # how it ended, once not alive
    started: Callable[[float], str]  # the line once started again, given the seconds taken
    kept: str  # what it starts again on, beside its port
    meanwhile: str  # what the person sees while it is down
    # Asks it a real question at an interval (``aether.probe``): a server that runs but
    # does not answer is killed with ``kill`` and started again like one that ended.
    probe: Probe | None = None
    kill: Callable[[], object] = lambda: None
    asked: str = "questions"  # what the probe asks it, for the line that says it hung
    pid: Callable[[], int | None] = lambda: None


@dataclass
class Supervisor:
    """Starts the stack's processes, checks they are the ones answering, restarts a
    service that crashes (with backoff), and stops everything on request."""

    stack: Stack
    stopping: threading.Event
    out: IO[str]
    started_at: float = field(default_factory=time.time)
    restarts: dict[str, int] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    # While NATS and PostgreSQL start: a stop then cuts PostgreSQL's start short.
    starting_servers: bool = False
    interrupted: bool = False

    def interrupt(self) -> None:
        """A stop was asked for (from the signal handler): the start's loops see
        ``stopping``; PostgreSQL's start (the first set-up's ``initdb``, up to a minute,
        ``pg_ctl start`` waiting for the server, the role and database being made: each
        may be stuck) checks nothing, so it is killed, and the start fails at once."""
        if self.starting_servers:
            from aether.infra import stop_postgres_set_up

            data_dir = self.stack.home / "postgres"
            self.interrupted = stop_postgres_set_up(data_dir) or self.interrupted

    def log_path(self, name: str) -> Path:
        return self.stack.home / "logs" / f"{name}.log"

    def record(self) -> None:
        """Write what runs now to the home, for ``status``, ``down``, the CLI and the
        reaper."""
        processes: dict[str, Any] = {}
        nats = self.stack._nats
        if nats is not None and nats.process is not None:
            record = supervise.process_record(nats.process.pid, nats.port)
            processes[NATS] = {**record, "restarts": self.restarts.get(NATS, 0)}
        postmaster = supervise.postgres_postmaster(self.stack.home / "postgres")
        if self.stack._postgres is not None and postmaster is not None:
            record = supervise.process_record(postmaster)
            processes[POSTGRES] = {**record, "restarts": self.restarts.get(POSTGRES, 0)}
        for name, service in self.stack.processes.items():
            record = supervise.process_record(service.process.pid, service.port)
            processes[name] = {**record, "group": True, "restarts": self.restarts.get(name, 0)}
        supervise.write_state(
            self.stack.home,
            {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "home": str(self.stack.home),
                "gateway_url": self.stack.gateway_url,
                "nats_url": without_credentials(self.stack.nats_url),
                "ports": self.stack.ports,
                "processes": processes,
                # Which event id secret the services key their ids with (not the secret:
                # ``aether restore`` compares it with a backup's).
                "event_id_key": (
                    event_id_fingerprint(self.stack.event_id_secret)
                    if self.stack.event_id_secret
                    else None
                ),
            },
        )

    def start(self, progress: Progress) -> None:
        """Start infrastructure and services; return once all are ready, or raise."""
        from aether.stack import SERVICES

        first = not (self.stack.home / "postgres" / "PG_VERSION").exists()
        progress.waiting = "NATS and PostgreSQL" + (
            " (the first start sets up the database: up to a minute)" if first else ""
        )
        began = time.monotonic()
        self.starting_servers = True
        try:
            self._check_stop()
            self.stack.start_infrastructure()
        finally:
            self.starting_servers = False
        self.record()
        # Named before the services start: forking them (the prestarter's imports first)
        # can take seconds, and the line must not say NATS and PostgreSQL meanwhile.
        progress.done(
            f"  ✓ NATS and PostgreSQL ({time.monotonic() - began:.1f}s)", ", ".join(SERVICES)
        )
        self._check_stop()
        for name in SERVICES:
            self.stack.start_service(name)
            self.since[name] = time.monotonic()
        self.record()
        pending = list(SERVICES)
        deadline = time.monotonic() + START_TIMEOUT
        # One client for the whole wait.
        with aether_http.client(timeout=1.0) as http:
            while pending:
                self._check_stop()
                progress.waiting = ", ".join(pending)
                for name in list(pending):
                    if self._ready(name, http):
                        pending.remove(name)
                        self._service_probe(name).heard()  # its readiness was an answer
                        elapsed = time.monotonic() - began
                        port = self.stack.ports[name]
                        progress.say(f"  ✓ {name:<13} :{port}  ({elapsed:.1f}s)")
                if time.monotonic() > deadline:
                    home = shlex.quote(str(self.stack.home))
                    raise StackError(
                        f"{', '.join(pending)} not ready after {START_TIMEOUT:.0f}s",
                        f"see `aether logs {pending[0]} --home {home}`",
                    )
                if pending:
                    self.stopping.wait(0.05)
        progress.close()

    def _check_stop(self) -> None:
        if self.stopping.is_set():
            raise StackError("stopped while starting")

    def _ready(self, name: str, http: httpx.Client) -> bool:
        service = self.stack.processes[name]
        if service.process.poll() is not None:
            if self.stack.moved_port(name):
                self.since[name] = time.monotonic()
                self.record()
                return False
            raise StackError(
                f"{name} exited with code {service.process.returncode} while starting"
                + self._last_error(name),
                f"full log: `aether logs {name} --home {shlex.quote(str(self.stack.home))}`",
            )
        answer = supervise.ready_pid(service.url, http)
        if answer is None:
            return False
        status, pid = answer
        if pid is not None and pid != service.process.pid:
            raise StackError(
                f"port {service.port} answers for another process (pid {pid}), not the "
                f"{name} this stack started (pid {service.process.pid})",
                "choose other ports with --port-base",
            )
        return status == 200 and pid == service.process.pid

    def _last_error(self, name: str) -> str:
        """The most telling line of a service's log: its last error (or the watchdog's
        critical line on a stuck event loop), else its last line."""
        lines = supervise.tail(self.log_path(name), 40)
        for line in reversed(lines):
            summary = supervise.summarise(line)
            if summary and ("error" in summary or "Error" in summary or " critical " in summary):
                return f":\n    {summary}"
        return f":\n    {lines[-1]}" if lines else ""

    def watch(self) -> None:
        """Until asked to stop: restart the embedded nats-server and PostgreSQL and
        services that crashed or stopped answering ``/healthz``, with backoff, and say
        so."""
        while not self.stopping.wait(0.5):
            now = time.monotonic()
            self._watch_nats(now)
            self._watch_postgres(now)
            for name, service in list(self.stack.processes.items()):
                probe = self._service_probe(name)
                if name in self.due:
                    if now >= self.due[name]:
                        del self.due[name]
                        self.stack.start_service(name)
                        probe.reset()
                        self.since[name] = now
                        self.record()
                    continue
                if service.process.poll() is None:
                    if probe.check(now):
                        self._service_hung(name, service, probe, now)
                    elif now - self.since.get(name, now) > STABLE_AFTER:
                        self.restarts[name] = 0
                    continue
                code = service.process.returncode
                self._service_down(name, f"exited with code {code}{self._last_error(name)}", now)

    def _service_probe(self, name: str) -> Probe:
        """The probe asking the service ``name`` its ``/healthz`` on its port of the
        moment; it counts only once the service has answered, or ``START_TIMEOUT`` after
        its start (one still starting is not hung)."""
        probe = self.probes.get(name)
        if probe is None:

            def ask(timeout: float) -> None:
                ask_http(f"{self.stack.processes[name].url}/healthz", timeout)

            probe = self.probes[name] = Probe(
                ask, grace=START_TIMEOUT, limit=SERVICE_PROBE_FAILURES
            )
        return probe

    def _service_hung(self, name: str, service: ServiceProcess, probe: Probe, now: float) -> None:
        """A service that runs but left its last health checks unanswered (stopped, or
        its event loop stuck where its own watchdog cannot end it): its process group
        killed (SIGKILL) and, after the backoff, started again like one that ended."""
        from aether.stack import kill_group

        what = probe.verdict(service.pid, "health checks")
        kill_group(service.process, timeout=10.0)
        probe.reset()
        self._service_down(name, what, now)

    def _service_down(self, name: str, what: str, now: float) -> None:
        count, delay = self._back_off(name, now)
        print(
            f"! {name} {what}\n  restarting it in {delay:.0f}s (restart {count})",
            file=self.out,
            flush=True,
        )

    def _back_off(self, name: str, now: float) -> tuple[int, float]:
        """Count a restart of ``name`` and make it due after its backoff (1, 2, 4 … 30 s);
        returns the count and the delay."""
        count = self.restarts.get(name, 0) + 1
        self.restarts[name] = count
        delay = min(30.0, 2.0 ** (count - 1))
        self.due[name] = now + delay
        return count, delay

    def _watch_nats(self, now: float) -> None:
        """Start the stack's own nats-server again when it died, with backoff: on the same
        configuration, store and port, so every service's client (which reconnects for
        ever) finds it again and goes on where it was (docs/recovery.md)."""
        nats = self.stack._nats
        if nats is None:  # NATS_URL: someone else's server, supervised by them
            return

        def exited() -> str:
            # Asked only once it is not alive: it was started, and it ended.
            process = nats.process
            assert process is not None
            code = process.returncode
            assert code is not None
            return f"exited with code {code}" + self._last_nats_error(code)

        self._watch_embedded(
            now,
            _Embedded(
                name=NATS,
                label="nats-server",
                restart=self.stack.restart_nats,
                failures=(NatsExited, TimeoutError, OSError),
                # One that started but never answered must not linger.
                after_failure=nats.kill,
                refused="could not start it again",
                alive=lambda: nats.process is None or nats.process.poll() is None,
                ended=exited,
                started=lambda seconds: (
                    f"  nats-server started again on port {nats.port}"
                    f" ({seconds:.1f}s); the services reconnect to it"
                ),
                kept="store",
                meanwhile="missions wait meanwhile",
                probe=self._probe(NATS, lambda timeout: ask_nats(self.stack.nats_url, timeout)),
                kill=nats.kill,
                asked="pings",
                pid=lambda: nats.process.pid if nats.process is not None else None,
            ),
        )

    def _last_nats_error(self, code: int) -> str:
        """nats-server's last error or fatal line when it ended on its own (a killed
        server's log ends on whatever it said last, which explains nothing)."""
        if code < 0:
            return ""
        for line in reversed(supervise.tail(self.log_path(NATS), 40)):
            if "[ERR]" in line or "[FTL]" in line:
                return f":\n    {line.strip()}"
        return ""

    def _watch_postgres(self, now: float) -> None:
        """Start the stack's own PostgreSQL again when its postmaster ended, with backoff:
        on the same data directory, socket and port, so the gateway's connection pools
        (which keep trying) find it again; every mission is in the data directory and
        the streams (docs/recovery.md). Stopped by ``aether down``, it is not watched
        any more: the watch ends before the stack stops."""
        postgres = self.stack._postgres
        if postgres is None:  # DATABASE_URL: someone else's server, supervised by them
            return

        def ended() -> str:
            code = postgres.returncode
            logged = postgres.last_error()
            said = "ended" if code is None else f"exited with code {code}"
            return said + (f":\n    {logged}" if logged else "")

        self._watch_embedded(
            now,
            _Embedded(
                name=POSTGRES,
                label="PostgreSQL",
                restart=self.stack.restart_postgres,
                failures=(PostgresExited, TimeoutError, OSError),
                after_failure=lambda: None,
                refused="could not start again",
                alive=postgres.running,
                ended=ended,
                started=lambda seconds: (
                    f"  PostgreSQL started again (pid {postgres.pid}, the same socket and port,"
                    f" {seconds:.1f}s); the gateway reconnects to it"
                ),
                kept="data directory",
                meanwhile="the gateway answers 503 meanwhile",
                probe=self._probe(
                    POSTGRES, lambda timeout: ask_postgres(self.stack.database_url, timeout)
                ),
                kill=lambda: postgres.kill(),
                asked="queries",
                pid=lambda: postgres.pid,
            ),
        )

    def _watch_embedded(self, now: float, server: _Embedded) -> None:
        """One pass over an embedded server: start it again once its backoff is over, or
        notice that it ended and schedule that; a server up long enough has its backoff
        reset."""
        name = server.name
        if name in self.due:
            if now < self.due[name]:
                return
            del self.due[name]
            began = time.monotonic()
            try:
                server.restart()
            except server.failures as error:
                server.after_failure()
                self._embedded_down(server, f"{server.refused}: {error}", time.monotonic())
                return
            self.since[name] = time.monotonic()
            if server.probe is not None:
                server.probe.reset()
            self.record()
            print(server.started(time.monotonic() - began), file=self.out, flush=True)
            return
        if server.alive():
            if server.probe is not None and server.probe.check(now):
                self._hung(server, now)
                return
            if now - self.since.get(name, now) > STABLE_AFTER:
                self.restarts[name] = 0
            return
        self._embedded_down(server, server.ended(), now)

    def _hung(self, server: _Embedded, now: float) -> None:
        """A server that runs but left its probe's last questions unanswered: killed
        (SIGKILL) and, after the backoff, started again like one that ended."""
        probe = server.probe
        assert probe is not None
        what = probe.verdict(server.pid(), server.asked)
        server.kill()
        probe.reset()
        self._embedded_down(server, what, now)

    def _probe(self, name: str, ask: Callable[[float], object]) -> Probe:
        """The probe of the embedded server ``name``, made at its first use."""
        probe = self.probes.get(name)
        if probe is None:
            probe = self.probes[name] = Probe(ask)
        return probe

    def _embedded_down(self, server: _Embedded, what: str, now: float) -> None:
        count, delay = self._back_off(server.name, now)
        print(
            f"! {server.label} {what}\n  starting it again in {delay:.0f}s on the same"
            f" {server.kept} and port (restart {count}); {server.meanwhile}",
            file=self.out,
            flush=True,
        )

    def stop(self) -> None:
        self.stack.stop()


def model_line(env: Mapping[str, str]) -> str:
    """Which model the stack's services will call and what bounds a mission's spend."""
    if not env.get("ANTHROPIC_API_KEY"):
        return "OFFLINE model (no ANTHROPIC_API_KEY): deterministic and not intelligent"
    # The gateway's own reading of the setting, so the banner says what it will apply.
    from aether_gateway.config import GatewaySettings
    from aether_llm.config import DEFAULT_TIERS

    tiers = {t: env.get(f"AETHER_MODEL_{t.upper()}", m) for t, m in DEFAULT_TIERS.items()}
    budget = GatewaySettings.value_of("default_mission_budget_usd", env)
    limit = (
        f"default mission budget ${budget:.2f} (--budget at submit)"
        if budget is not None
        else "NO default mission budget: set --budget at submit"
    )
    others = f"small {tiers['small']}, complex {tiers['complex']}"
    return f"real model: {tiers['standard']} ({others}); {limit}"


def _banner(stack: Stack, home: Path) -> str:
    env_token = bool(stack.env.get("AETHER_ADMIN_TOKEN") or os.environ.get("AETHER_ADMIN_TOKEN"))
    token = (
        "$AETHER_ADMIN_TOKEN (from the environment; export AETHER_TOKEN with it for the CLI)"
        if env_token
        else f"{home / TOKEN_FILE} (the CLI finds it)"
    )
    model = model_line(os.environ)
    default_home = Path(os.environ.get("AETHER_HOME", ".aether")).resolve() == home
    # Quoted as a shell reads it: the default home is under the directory `up` runs in.
    exported = f"export AETHER_HOME={shlex.quote(str(home))}"
    target = "" if default_home else f"   (other shells: {exported})"
    return (
        f"\nAether is up.\n"
        f"  gateway   {stack.gateway_url}\n"
        f"  board     {stack.gateway_url}/board/  (sign in with the token)\n"
        f"  token     {token}\n"
        f"  model     {model}\n"
        f"  logs      {home / 'logs'}  (aether logs [service] -f)\n"
        f"next:\n"
        f'  aether mission submit --repo PATH "what you want done" --watch{target}\n'
        f"Ctrl-C here (or `aether down`) stops everything.\n"
    )


def up(
    home: Path,
    port_base: int | None = None,
    verbose: bool = False,
    out: IO[str] | None = None,
    event_id_source: str = "",
) -> int:
    """Run the stack on ``home`` until a signal; the exit code says how it went.
    ``event_id_source``: which event id secret to take when the operator's is
    another than the home's ("home" or "environment"; "" refuses, ``Stack``)."""
    from aether.stack import SERVICES, Stack

    out = out or sys.stdout
    home = home.resolve()
    lock = supervise.HomeLock(home)
    stopping = threading.Event()
    supervisor: Supervisor | None = None
    reaper: IO[bytes] | None = None
    previous_home: Path | None = None

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()
        if supervisor is not None:
            supervisor.interrupt()

    previous = {
        signum: signal.signal(signum, on_signal)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        lock.acquire()
        ports = supervise.plan_ports(SERVICES, port_base)
        supervise.check_ports(ports)
        # LogEcho has the two methods the stack's log pump calls (write and flush).
        echo = cast(IO[str], supervise.LogEcho(out, verbose))
        # With --port-base 0 the ports are chosen here, so a service may move to another
        # when something takes its port before it binds it.
        stack = Stack(
            home=home,
            echo_logs=echo,
            random_ports=port_base == 0,
            event_id_source=event_id_source,
        )
        stack.ports = ports
        # Before anything starts: an operator's event id secret the home does not keep is
        # refused here, with nothing started or recorded.
        stack.load_event_id_secret()
        if stack.event_id_secret_note:
            print(stack.event_id_secret_note, file=out, flush=True)
        # Children of an earlier ``up`` on this home whose reaper was killed too.
        leftovers = supervise.reap(home)
        if leftovers:
            print(f"stopped leftovers of an earlier stack: {', '.join(leftovers)}", file=out)
        supervise.prune_postgres_handles(home / "postgres")
        # Who holds the home, before the first start's minute of setting up PostgreSQL:
        # `status` and `down` meanwhile must find this `up`, not the last one's leftovers.
        supervise.write_state(
            home,
            {"pid": os.getpid(), "started_at": time.time(), "home": str(home), "processes": {}},
        )
        previous_home = remembered_home()
        remember_home(home)
        reaper = supervise.start_reaper(home)
        supervisor = Supervisor(stack, stopping, out)
        print(f"starting Aether in {home}", file=out, flush=True)
        progress = Progress(out)
        try:
            supervisor.start(progress)
        finally:
            progress.close()
        print(_banner(stack, home), file=out, flush=True)
        supervisor.watch()
        return 0
    except StackError as error:
        if stopping.is_set() and supervisor is not None:
            return 0
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # e.g. PostgreSQL would not start: say so in a line
        if stopping.is_set() and supervisor is not None and supervisor.interrupted:
            return 0  # a step cut short by the stop asked for (`interrupt`)
        first = (str(error).strip().splitlines() or [""])[0]
        print(
            f"error: could not start the stack: {type(error).__name__}: {first}\n"
            f"  logs: {home / 'logs'}; run with --verbose for every service line",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        if supervisor is not None:
            print("stopping…", file=out, flush=True)
            try:
                supervisor.stop()
            finally:
                # Whatever the orderly stop missed (it raised, or a child ignored it).
                supervise.reap(home)
                supervise.write_state(home, {"pid": None, "home": str(home), "processes": {}})
            print("stopped.", file=out, flush=True)
        if reaper is not None:
            reaper.close()
        lock.release()
        hand_back_home(home, previous_home)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def down(home: Path, timeout: float = 60.0) -> int:
    """Stop the stack running on ``home`` (or what a killed one left behind)."""
    home = home.resolve()
    state = supervise.running_state(home)
    if state is None:
        leftovers = supervise.reap(home)
        if leftovers:
            print(f"no stack was running on {home}; stopped leftovers: {', '.join(leftovers)}")
        else:
            print(f"no stack is running on {home}")
        return 0
    if not state.get("pid"):
        print(f"the stack on {home} is starting and has not recorded its pid yet: try again")
        return 1
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while supervise.lock_held(home):
        if time.monotonic() > deadline:
            # It did not stop in time: kill it; its reaper then stops the children.
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)  # a flock try: checking often costs nothing
    supervise.reap(home)
    print(f"stopped the stack on {home}")
    return 0


def status(home: Path) -> int:
    """Each process of the stack on ``home``: pid, port, health, uptime. Exit 1 when no
    stack runs, 3 when one runs but a process is missing or not ready."""
    home = home.resolve()
    state = supervise.running_state(home)
    if state is None:
        up = f"aether up --home {shlex.quote(str(home))}"
        print(f"no stack is running on {home} (start one with `{up}`)")
        return 1
    now = time.time()
    if not state.get("gateway_url"):
        # The lock is held, but `up` has not started its servers yet (or is older).
        began = state.get("started_at")
        since = f" for {_duration(now - began)}" if began is not None else ""
        print(
            f"stack on {home}: starting{since} (aether up pid {state.get('pid') or '?'}); "
            "its terminal says what it waits for"
        )
        return 3
    print(
        f"stack on {home}: up {_duration(now - state['started_at'])} (aether up pid "
        f"{state['pid']}), gateway {state['gateway_url']}"
    )
    print(f"  {'process':<13} {'pid':>7} {'port':>6}  {'health':<10} uptime  restarts")
    healthy = True
    processes = state.get("processes", {})
    with aether_http.client(timeout=1.0) as http:
        for name, record in processes.items():
            healthy = _status_line(name, record, now, http) and healthy
    # While `up` starts them, the services are not recorded yet: not ready, not absent.
    for name in [NATS, POSTGRES, *supervise.PORT_OFFSETS]:
        if name not in processes:
            print(f"  {name:<13} {'-':>7} {'-':>6}  {'starting':<10} {'-':>6}  0")
            healthy = False
    return 0 if healthy else 3


def _status_line(name: str, record: dict[str, Any], now: float, http: httpx.Client) -> bool:
    """Print the status line of one process of the stack; whether it is healthy."""
    process = supervise.alive(record)
    port = str(record.get("port") or "-")
    if process is None:
        health, uptime = "DOWN", "-"
    elif name in ("nats", "postgres"):
        health, uptime = "running", _duration(now - record["created"])
    else:
        answer = supervise.ready_pid(f"http://127.0.0.1:{record['port']}", http)
        ready = answer is not None and answer == (200, record["pid"])
        health = "ready" if ready else "starting" if answer is None else "NOT READY"
        uptime = _duration(now - record["created"])
    print(
        f"  {name:<13} {record['pid']:>7} {port:>6}  {health:<10} {uptime:>6}  "
        f"{record.get('restarts', 0)}"
    )
    return health in ("ready", "running")


def logs(home: Path, service: str | None, lines: int, follow_: bool, raw: bool) -> int:
    """The last ``lines`` lines of one service's log (or of each), then new ones with
    ``follow_``; JSON records are shown as one human line each unless ``raw``."""
    home = home.resolve()
    directory = home / "logs"
    if service is not None:
        paths = [directory / f"{service}.log"]
        if not paths[0].exists():
            known = sorted(p.stem for p in directory.glob("*.log"))
            print(
                f"error: no log for {service!r} in {directory}"
                + (f" (there are: {', '.join(known)})" if known else ""),
                file=sys.stderr,
            )
            return 1
    else:
        paths = sorted(directory.glob("*.log"))
        if not paths:
            print(f"error: no logs in {directory} (has `aether up` run there?)", file=sys.stderr)
            return 1

    def show(name: str, line: str) -> None:
        text = line
        if not raw:
            try:
                import json

                record = json.loads(line)
                text = supervise.human_log(record) if isinstance(record, dict) else line
            except ValueError:
                text = line if service else f"{name:<12} {line}"
        print(text, flush=True)

    for path in paths:
        for line in supervise.tail(path, lines):
            show(path.stem, line)
    if follow_:
        try:
            for item in supervise.follow(paths, stop=lambda: False):
                name, _, line = item.partition("\t")
                show(name, line)
        except KeyboardInterrupt:
            return 0
    return 0
