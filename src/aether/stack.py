"""Running the whole system locally: embedded infrastructure plus the five services,
each its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import httpx

from aether import http as aether_http
from aether import supervise
from aether.credentials import (
    EVENT_ID_SECRET_ENV,
    EVENT_ID_SECRET_FILE,
    EVENT_ID_SECRET_PREVIOUS,
    given_event_id_secret,
    load_or_create_admin_token,
    load_or_create_secret,
    write_private,
)
from aether.infra import EmbeddedNats, EmbeddedPostgres, free_port, port_is_free
from aether.prestart import SHARED_ENV, Prestarter
from aether.service_env import settings_for
from aether_runtime.bus_auth import (
    ADMIN_USER,
    Callout,
    Secret,
    User,
    issuer_public_key,
    new_issuer_seed,
    password_env,
    render_authorization,
    service_users,
    system_user_name,
    system_user_names,
    system_users,
)
from aether_runtime.event_ids import RUNNER
from aether_runtime.listen import EXIT_PORT_TAKEN
from aether_runtime.roles import ROLES
from aether_runtime.runner_secrets import runner_secret

# The scheduler's user of the NATS system account (``bus_auth.system_users``).
SYSTEM_USER = system_user_name(ROLES["scheduler"])
# How often a service whose freely chosen port was taken at start-up moves to another.
PORT_MOVES = 3

SERVICES: dict[str, tuple[str, int]] = {
    "git-broker": ("aether_git_broker", 8104),
    "planner": ("aether_planner", 8102),
    "scheduler": ("aether_scheduler", 8101),
    "agent-runner": ("aether_agent_runner", 8103),
    "gateway": ("aether_gateway", 8100),
}
# The services that publish events of their own, whose ids are keyed with the event id
# secret (decision 0031): all but the agent runner, which must not hold it.
EVENT_ID_SERVICES = frozenset(name for name in SERVICES if name != RUNNER)


class ChildProcess(Protocol):
    """What the stack needs of a service's process: a ``subprocess.Popen``, or a child of
    the prestarter (``aether.prestart.Forked``)."""

    pid: int
    returncode: int | None
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: ChildProcess
    pump: threading.Thread | None = None
    # Where this process's lines begin in its log file (the file is kept across restarts).
    log_offset: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Stack:
    """NATS, PostgreSQL and the five services.

    ``home`` holds NATS and PostgreSQL data, worktrees and logs. ``NATS_URL`` and
    ``DATABASE_URL`` in ``env`` (or the environment) replace the embedded servers.

    The embedded servers are locked down: NATS with one user per service and the
    permissions of its role (``aether_runtime.bus_auth``), PostgreSQL with passwords and a
    non-superuser role for the gateway. Their configuration and passwords live under
    ``home/credentials`` (readable by the owner only). Each service is handed only its own
    settings (``aether.service_env``). ``nats_url`` carries the stack's administrator
    credentials, for clients of the stack (the command line, tests); the services get
    ``nats_server_url`` and their own user.
    ``random_ports`` gives every service a free port (tests, benchmarks). The gateway's
    bootstrap admin token is ``AETHER_ADMIN_TOKEN`` when set, else one kept in ``home``;
    clients send ``auth_headers``.
    """

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    random_ports: bool = False
    echo_logs: IO[str] | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    admin_token: str = ""
    # Interpreter options put before ``-m <module>`` for some services (a benchmark runs
    # one under ``-m cProfile -o <file>``); those services start as their own interpreter.
    python_options: dict[str, list[str]] = field(default_factory=dict)
    # Where the services are forked from (``aether.prestart``): ``True``, a prestarter
    # of the stack's own, stopped with it (``_own_prestarter``); a ``Prestarter`` to
    # share (``aether.prestart.shared()``: a process that runs many stacks); ``False``,
    # none: each service starts as ``python -m <module>``, as in its container.
    prestart: Prestarter | bool = True
    # The embedded NATS server's HTTP monitoring port (``/connz``, ``/varz``: what each
    # connection sent and received); 0, the default: none. Benchmarks count messages.
    nats_monitor_port: int = 0
    # Which event id secret to start with when the operator's (``AETHER_EVENT_ID_SECRET``)
    # is another than the one the home keeps: "" refuses (``load_event_id_secret``),
    # "home" takes the home's, "environment" the operator's, kept from then on.
    event_id_source: str = ""

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        self._nats: EmbeddedNats | None = None
        self._port_moves: dict[str, int] = {}
        self._postgres: EmbeddedPostgres | None = None
        self._prestarter: Prestarter | None = None
        self.nats_url = self.env.get("NATS_URL") or os.environ.get("NATS_URL", "")
        self.nats_server_url = self.nats_url
        # Per service: its NATS user's password (only when the stack runs its own NATS).
        self.nats_passwords: dict[str, str] = {}
        # What attempt credentials need (``aether_runtime.attempt_auth``): the issuer's
        # seed and the master of the runners' secrets (the scheduler's; the runner gets
        # only the secret of its name); with NATS_URL, the operator's.
        self.attempt_issuer_seed = self._given("AETHER_ATTEMPT_ISSUER_SEED")
        self.runner_master_secret = self._given("AETHER_RUNNER_MASTER_SECRET")
        # The secret the services' event ids are keyed with (every service that publishes
        # events holds it, no runner: decision 0031): the operator's or the home's, kept
        # under the home (``load_event_id_secret``, at the start).
        self.event_id_secret = ""
        # What that start did with the operator's secret, for ``aether up`` to say.
        self.event_id_secret_note = ""
        # The runner's name, which its secret is derived for.
        self.runner_name = self._given("AETHER_RUNNER_NAME") or socket.gethostname()
        self.database_url = self.env.get("DATABASE_URL") or os.environ.get("DATABASE_URL", "")
        self.admin_token = (
            self.admin_token
            or self.env.get("AETHER_ADMIN_TOKEN")
            or os.environ.get("AETHER_ADMIN_TOKEN", "")
        )
        self.ports = {
            name: (free_port() if self.random_ports else default)
            for name, (_, default) in SERVICES.items()
        }

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a client of this stack's gateway sends to be let in (as its admin)."""
        return {"authorization": f"Bearer {self.admin_token}"}

    @property
    def worktrees_dir(self) -> Path:
        return self.home / "worktrees"

    def start_infrastructure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self.prestarter()  # its imports overlap the servers' start
        if not self.admin_token:
            self.admin_token = load_or_create_admin_token(self.home)
        self.load_event_id_secret()
        if not self.nats_url:
            config = self.write_nats_config()
            self._nats = EmbeddedNats(
                self.home / "nats", config=config, monitor_port=self.nats_monitor_port
            ).start(self.home / "logs" / "nats.log")
            self.nats_server_url = self._nats.url
            admin = self.nats_passwords.pop(ADMIN_USER)
            self.nats_url = self._nats.url.replace("nats://", f"nats://{ADMIN_USER}:{admin}@")
        if not self.database_url:
            self._postgres = EmbeddedPostgres(self.home / "postgres").start()
            secrets = self.credentials_dir / "postgres"
            self.database_url = self._postgres.provision(
                "aether",
                load_or_create_secret(secrets / "aether.password"),
                load_or_create_secret(secrets / "postgres.password"),
            )

    @property
    def credentials_dir(self) -> Path:
        return self.home / "credentials"

    def load_event_id_secret(self) -> str:
        """The secret the services' event ids are keyed with, kept under the home
        (``credentials/event-id.secret``, readable by its owner only) and taken again at
        every start: a new one would change the ids of steps repeated across the restart,
        which the stream would then store twice.

        The operator's (``AETHER_EVENT_ID_SECRET`` or ``_FILE``) is kept there the first
        time, so a later start without it goes on with it; without one the home's is taken,
        made the first time. An operator's secret other than the one the home keeps is
        refused (``StackError``) unless ``event_id_source`` says which to take:
        "home", or "environment" (kept from then on; the one it replaces is kept beside it
        in ``event-id.secret.previous``)."""
        if self.event_id_secret:
            return self.event_id_secret
        kept_path = self.credentials_dir / EVENT_ID_SECRET_FILE
        env = {**os.environ, **self.env}
        try:
            given = given_event_id_secret(env)
        except OSError as error:
            raise supervise.StackError(
                f"{EVENT_ID_SECRET_ENV}_FILE cannot be read: {error}",
                f"name a readable file, or unset {EVENT_ID_SECRET_ENV}_FILE to use the "
                "secret this home keeps",
            ) from None
        self.credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.credentials_dir.chmod(0o700)
        kept = ""
        with contextlib.suppress(FileNotFoundError):
            kept = kept_path.read_text(encoding="utf-8").strip()
        if not given:
            self.event_id_secret = load_or_create_secret(kept_path)
        elif not kept or kept == given:
            if not kept:
                write_private(kept_path, given + "\n")
                self.event_id_secret_note = (
                    f"the home keeps the given {EVENT_ID_SECRET_ENV} from now on ({kept_path})"
                )
            self.event_id_secret = given
        elif self.event_id_source == "home":
            self.event_id_secret = kept
            self.event_id_secret_note = (
                f"{EVENT_ID_SECRET_ENV} left aside: the services key their event ids with "
                f"the home's ({kept_path})"
            )
        elif self.event_id_source == "environment":
            previous = self.credentials_dir / EVENT_ID_SECRET_PREVIOUS
            write_private(previous, kept + "\n")
            write_private(kept_path, given + "\n")
            self.event_id_secret = given
            self.event_id_secret_note = (
                f"the home keeps the given {EVENT_ID_SECRET_ENV} from now on ({kept_path}; "
                f"the one it replaces is in {previous}): the services' event ids change "
                "with it"
            )
        else:
            raise supervise.StackError(
                f"{EVENT_ID_SECRET_ENV} is another secret than the one this home keeps "
                f"({kept_path}): the services key their events' ids with it, so a step "
                "repeated across this start would get another id and be stored twice (a "
                "step of a mission taken again); nothing was started",
                "start with the home's (unset it, or `aether up --event-id-secret home`), "
                "or make the environment's the home's from now on (`aether up "
                "--event-id-secret environment`; the home's is kept in "
                f"{EVENT_ID_SECRET_PREVIOUS})",
            )
        return self.event_id_secret

    def write_nats_config(self) -> Path:
        """Write the NATS server's configuration (a user per service, with its role's
        permissions, and the stack's administrator) and load or make the passwords."""
        self.credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.credentials_dir.chmod(0o700)
        secrets = self.credentials_dir / "nats"
        self.nats_passwords = {
            name: load_or_create_secret(secrets / f"{name}.password")
            for name in (ADMIN_USER, *SERVICES, *system_user_names())
        }
        users = [User(name=ADMIN_USER, password=Secret(self.nats_passwords[ADMIN_USER]))]
        users += service_users({name: Secret(self.nats_passwords[name]) for name in SERVICES})
        # Attempt credentials: the scheduler signs them with this account key (its public
        # key is the callout's issuer); each runner proves its name with the secret
        # derived for it from the master (``runner_secrets``).
        seed = self.credentials_dir / "nats" / "attempt-issuer.seed"
        if not seed.exists():
            write_private(seed, new_issuer_seed() + "\n")
        self.attempt_issuer_seed = seed.read_text(encoding="utf-8").strip()
        self.runner_master_secret = load_or_create_secret(secrets / "runner-master.secret")
        # The secret every runner shared before runners had names: no longer used.
        (secrets / "attempt.secret").unlink(missing_ok=True)
        callout = Callout(Secret(issuer_public_key(self.attempt_issuer_seed)))
        path = self.credentials_dir / "nats.conf"
        write_private(
            path,
            "# Written by aether up at every start.\n"
            + render_authorization(users, callout, system_users(self.nats_passwords_as_secrets())),
        )
        return path

    def nats_passwords_as_secrets(self) -> dict[str, Secret]:
        return {name: Secret(password) for name, password in self.nats_passwords.items()}

    def service_env(self, name: str) -> dict[str, str]:
        """The whole environment of service ``name``: its own settings from the operator's
        environment and ``env``, and what the stack gives it, nothing of the others'."""
        env = {
            **settings_for(name, os.environ, self.env),
            "NATS_URL": self.nats_server_url,
            "PORT": str(self.ports[name]),
            "PYTHONUNBUFFERED": "1",
            # One process of each service, started again only once it exited: what a
            # killed one held is handed back as its successor starts.
            "AETHER_ONE_PROCESS": "1",
        }
        password = self.nats_passwords.get(name) or self._given(password_env(name))
        if password:
            # Its own user: the stack's NATS, or another one (NATS_URL) whose password for
            # this service the operator gives as NATS_PASSWORD_<SERVICE>, as compose does.
            env["NATS_USER"] = name
            env["NATS_PASSWORD"] = password
        if self.event_id_secret and name in EVENT_ID_SERVICES:
            # Every service that publishes events keys their ids with it; never a runner.
            env["AETHER_EVENT_ID_SECRET"] = self.event_id_secret
            # The stack's choice, not a file the operator named (which may hold another).
            env.pop("AETHER_EVENT_ID_SECRET_FILE", None)
        if self.runner_master_secret and name == "scheduler":
            # It grants the runners' credentials, each only for the runner's own name.
            env["AETHER_RUNNER_MASTER_SECRET"] = self.runner_master_secret
        if self.runner_master_secret and name == "agent-runner":
            # The secret of its own name only: not the master, which would let it act as
            # any runner.
            env["AETHER_RUNNER_NAME"] = self.runner_name
            env["AETHER_RUNNER_SECRET"] = self.runner_secret(self.runner_name)
        if self.attempt_issuer_seed and name == "scheduler":
            env["AETHER_ATTEMPT_ISSUER_SEED"] = self.attempt_issuer_seed
        if name == "scheduler":
            # Its user of the system account: it cuts an ended attempt's connection.
            system = self.nats_passwords.get(SYSTEM_USER) or self._given(password_env(SYSTEM_USER))
            if system:
                env["AETHER_SYSTEM_NATS_PASSWORD"] = system
        if name == "scheduler":
            # It chooses the tasks' models, and so must know whether a key is set.
            env["AETHER_MODEL_OFFLINE"] = "0" if self._given("ANTHROPIC_API_KEY") else "1"
        if name in ("git-broker", "agent-runner"):
            env["AETHER_WORKTREES_DIR"] = str(self.worktrees_dir)
        if name == "git-broker":
            env["AETHER_GIT_READ_TOKEN"] = self.git_read_token
        broker = f"http://127.0.0.1:{self.ports['git-broker']}"
        if name == "gateway":
            # Diffs and default branches come from the broker, with a read-only token.
            env["AETHER_GATEWAY_BROKER_URL"] = broker
            env["AETHER_GATEWAY_BROKER_TOKEN"] = self.git_read_token
        if name == "planner":
            # So do the files it plans from: it never opens a repository itself.
            env["AETHER_PLANNER_BROKER_URL"] = broker
            env["AETHER_PLANNER_BROKER_TOKEN"] = self.git_read_token
        if name == "gateway":
            env["DATABASE_URL"] = self.database_url
            env["AETHER_ADMIN_TOKEN"] = self.admin_token
            env["AETHER_GATEWAY_PUBLIC_URL"] = self.gateway_url
        return env

    def runner_secret(self, name: str) -> str:
        """The secret of the runner called ``name`` (``aether_runtime.runner_secrets``)."""
        return runner_secret(self.runner_master_secret, name)

    @property
    def git_read_token(self) -> str:
        """The token of the git broker's read API, which only the gateway and the planner
        are handed."""
        return load_or_create_secret(self.credentials_dir / "git-read.token")

    def _given(self, name: str) -> str:
        """A setting from ``env``, else the operator's environment, else empty."""
        return self.env[name] if name in self.env else os.environ.get(name, "")

    def start_service(self, name: str) -> ServiceProcess:
        module, _ = SERVICES[name]
        log = self.home / "logs" / f"{name}.log"
        log_offset = log.stat().st_size if log.exists() else 0
        process: ChildProcess
        prestarter = self.prestarter()
        # With nothing to echo them to, the service writes its lines to its log file
        # itself: copied here, each line woke a thread of this process for a read, a
        # write and a flush (a chained task's thirty-odd lines, CPU the services share).
        direct = self.echo_logs is None
        output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if direct else None
        try:
            if prestarter is not None and name not in self.python_options:
                process = prestarter.spawn(module, self.service_env(name), output=output)
            else:
                process = subprocess.Popen(
                    [sys.executable, *self.python_options.get(name, []), "-m", module],
                    env=self.service_env(name),
                    stdout=subprocess.PIPE if output is None else output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        finally:
            if output is not None:
                os.close(output)
        service = ServiceProcess(name, self.ports[name], process, log_offset=log_offset)
        self.processes[name] = service
        if not direct:
            service.pump = threading.Thread(
                target=self._pump, args=(service,), name=f"log-{name}", daemon=True
            )
            service.pump.start()
        return service

    def prestarter(self) -> Prestarter | None:
        """The prestarter the services are forked from (started here when it is the
        stack's own), or ``None`` when they start as their own interpreters."""
        if isinstance(self.prestart, Prestarter):
            return self.prestart
        if self.prestart and (self._prestarter is None or not self._prestarter.alive):
            self._prestarter = self._own_prestarter()
        return self._prestarter

    def _own_prestarter(self) -> Prestarter:
        """Forked for this stack by the shared prestarter ``AETHER_PRESTART_SHARED``
        names, when one of this user's answers there (a parallel test run's: every stack
        it starts, ``aether up``'s included, then skips the imports); else started here,
        named after the stack's home."""
        shared = os.environ.get(SHARED_ENV)
        if shared:
            with contextlib.suppress(OSError):
                return Prestarter.joining(Path(shared))
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return Prestarter(serves=str(self.home), log=logs / "prestart.log")

    def moved_port(self, name: str) -> bool:
        """Start ``name`` again on another free port when it died at start-up because its
        port was taken between choosing it and binding it; only for ports this stack chose
        freely (``random_ports``), at most ``PORT_MOVES`` times per service."""
        service = self.processes[name]
        if not self.random_ports or self._port_moves.get(name, 0) >= PORT_MOVES:
            return False
        if service.pump is not None:
            service.pump.join(2.0)
        if service.process.returncode != EXIT_PORT_TAKEN:
            with (
                contextlib.suppress(OSError),
                (self.home / "logs" / f"{name}.log").open("rb") as log,
            ):
                log.seek(service.log_offset)
                if b"address already in use" not in log.read().lower() and port_is_free(
                    service.port
                ):
                    return False
        self._port_moves[name] = self._port_moves.get(name, 0) + 1
        self.ports[name] = free_port()
        self.start_service(name)
        return True

    def _pump(self, service: ServiceProcess) -> None:
        """Copy a service's log lines to its log file (and to ``echo_logs``)."""
        assert service.process.stdout is not None
        with (self.home / "logs" / f"{service.name}.log").open("ab") as log_file:
            for line in service.process.stdout:
                log_file.write(line)
                log_file.flush()
                if self.echo_logs is not None:
                    with contextlib.suppress(ValueError):
                        self.echo_logs.write(line.decode("utf-8", errors="replace"))
                        self.echo_logs.flush()

    def wait_ready(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with aether_http.client(timeout=1.0) as http:  # one client for the whole wait
            for name in names or list(self.processes):
                self._wait_ready(name, http, deadline, timeout)

    def _wait_ready(self, name: str, http: httpx.Client, deadline: float, timeout: float) -> None:
        service = self.processes[name]
        while True:
            if service.process.poll() is not None:
                if self.moved_port(name):
                    service = self.processes[name]
                    continue
                raise RuntimeError(
                    f"{name} exited with {service.process.returncode}; "
                    f"see {self.home / 'logs' / (name + '.log')}"
                )
            # Ready only when the answer comes from the process started here, not from
            # another program that holds the port.
            if supervise.ready_pid(service.url, http) == (200, service.pid):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout}s")
            time.sleep(0.05)

    def start(self, timeout: float = 90.0) -> Stack:
        self.start_infrastructure()
        for name in SERVICES:
            self.start_service(name)
        self.wait_ready(timeout=timeout)
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one service (crash testing)."""
        kill_group(self.processes[name].process)
        del self.processes[name]

    def restart_nats(self) -> None:
        """SIGKILL the embedded NATS server (when it still runs) and start it again on the
        same configuration, port and store: crash testing, and ``aether up`` bringing back
        a server that died. Only for a server this stack started."""
        if self._nats is None:
            raise RuntimeError("NATS is not this stack's own (NATS_URL was given)")
        self._nats.kill()
        self._nats.start(self.home / "logs" / "nats.log")

    def restart_postgres(self) -> None:
        """Start the embedded PostgreSQL again, after its postmaster ended, on the same
        data directory, socket and port (``EmbeddedPostgres.restart``): ``aether up``
        bringing back a server that died. Only for a server this stack started."""
        if self._postgres is None:
            raise RuntimeError("PostgreSQL is not this stack's own (DATABASE_URL was given)")
        self._postgres.restart()

    def stop_service(self, name: str, timeout: float = 15.0) -> None:
        self.stop_services([name], timeout)

    def stop_services(self, names: list[str], timeout: float = 15.0) -> None:
        """Stop the services ``names`` together: SIGTERM to all at once, each given
        ``timeout`` seconds in parallel."""
        _terminate([self.processes.pop(name) for name in names], timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the services (SIGTERM to all at once, each given ``timeout`` seconds, in
        parallel: one at a time cost a shutdown each), then NATS and PostgreSQL."""
        self.stop_services(list(reversed(list(self.processes))), timeout)
        own, self._prestarter = self._prestarter, None
        if own is not None:
            own.close()  # it exits once the last service it forked has
        nats, self._nats = self._nats, None
        stopping = threading.Thread(target=nats.stop) if nats is not None else None
        if stopping is not None:
            stopping.start()  # NATS stops while PostgreSQL does
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        if stopping is not None:
            stopping.join()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kill_group(process: ChildProcess, timeout: float | None = None) -> None:
    """SIGKILL the process group a service's ``process`` leads, and wait for the process
    (at most ``timeout`` seconds, when given)."""
    with contextlib.suppress(ProcessLookupError):  # it had died already
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)


def _terminate(services: list[ServiceProcess], timeout: float) -> None:
    """SIGTERM the process group of each of ``services`` still running, then wait for
    each until ``timeout`` seconds after the signals; SIGKILL what is left then."""
    running = [service for service in services if service.process.poll() is None]
    for service in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in running:
        try:
            service.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()
