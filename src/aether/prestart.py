"""Starting services from an interpreter that has already imported them.

A service process spends most of its start-up importing its code and what it builds on
(FastStream, nats-py, Litestar, msgspec, psycopg, dulwich, the anthropic SDK): 0.5 to
1 s of CPU each, the same work in every one of the five and again at every restart.
``aether up`` and the tests start services from a *prestarter* instead: one process
(``python -m aether.prestart``) imports every service's code once, runs the
``prestart()`` an entry module defines (start-up work that holds nothing of one start:
the gateway builds its routes), freezes what it holds out of the garbage collector's
sight (so the children share those pages rather than copy them on the first
collection), and forks a child per request. The child is then exactly what
``python -m <module>`` would have been, minus the imports:

- its environment is the one the request gives, nothing of the prestarter's (which
  starts with an empty one) or of another service's: it comes to the child through a
  pipe the prestarter passes on unread, so the prestarter never holds a service's
  credentials and no child inherits another's;
- it runs in its own session (as ``start_new_session=True`` does: made before its pid is
  answered, so its group can be signalled at once), in the requested
  directory, with the requested file as its stdout and stderr and ``/dev/null`` as
  stdin; it inherits no other descriptor;
- its module runs as ``__main__`` through ``runpy``, as ``-m`` does, and the interpreter
  exits the usual way (``atexit`` handlers, thread joins, flushes).

The prestarter reaps its children and reports each exit status over its socket, so a
:class:`Forked` handle waits, polls and signals like a ``subprocess.Popen``. When the
process that started it goes, the prestarter's socket closes and it exits; the children
it forked stay with their own sessions (whoever started them stops them, as before).

Several processes that each run many stacks (the workers of a parallel test run) can
share the imports too: a :class:`SharedPrestarter` listens on a socket, imports what it
preloads when the first process connects, and forks for each connection a prestarter of
that process's own, which serves it exactly as above. Only processes of the same user
are served.

Container images keep starting their one service with ``python -m``; a stack run with
interpreter options (a profiler) starts those services the plain way too
(``aether.stack``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# What the prestarter imports before it forks anything: every service's entry module
# (and so its code and libraries) and the SDK the planner and runner load on first use.
PRELOAD = (
    "aether_git_broker.__main__",
    "aether_planner.__main__",
    "aether_scheduler.__main__",
    "aether_agent_runner.__main__",
    "aether_gateway.__main__",
    "anthropic",
)
# The services' own packages: in a child, the metrics the others' define are dropped.
SERVICE_PACKAGES = frozenset(m.split(".")[0] for m in PRELOAD if m.endswith(".__main__"))
# What a preloaded module may define for the prestarter to call once it is imported.
PRESTART_HOOK = "prestart"
# The descriptor of the prestarter's end of its channel, in its otherwise empty
# environment (its command line stays ``python -m aether.prestart``: what ``ps`` and the
# stack's messages show for every service it forked).
CHANNEL_ENV = "AETHER_PRESTART_CHANNEL"
# The descriptor of a shared prestarter's listening socket (``SharedPrestarter``).
LISTENER_ENV = "AETHER_PRESTART_LISTENER"
# Where a process finds the shared prestarter it should fork its own from (``shared()``).
SHARED_ENV = "AETHER_PRESTART_SHARED"
MESSAGE_LIMIT = 1 << 20  # a request: a module name and a directory; an answer
PR_SET_NAME = 15  # prctl(2)


class PrestartError(RuntimeError):
    """The prestarter is gone, or could not fork the child asked for."""


# --- the prestarter's side ---------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    module: str
    cwd: str
    output: int  # the descriptor the child writes its stdout and stderr to
    environment: int  # the pipe the child reads its environment from


def _serve(channel: socket.socket) -> _Request | None:
    """Fork a child per request until the channel closes. Returns the request in a child
    (which then runs its module), ``None`` in the prestarter once the channel has closed
    and every child it forked has exited (it reaps them to the last)."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready = _wait_readable(channel, wake_read)
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
            _report_exits(channel)
        if channel.fileno() not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(channel, MESSAGE_LIMIT, 2)
        except ConnectionError:
            data, fds = b"", []
        if not data:
            _reap_all()
            return None
        request = json.loads(data)
        session_read, session_write = os.pipe()
        try:
            pid = os.fork()
        except OSError as error:
            pid = -1
            _send(channel, {"id": request["id"], "error": str(error)})
        if pid == 0:
            # Its own session before anything else, and said so: the pid is answered
            # only then, so whoever signals the child's group (``killpg``) right after
            # the answer finds it, as after ``Popen(start_new_session=True)``.
            os.setsid()
            os.close(session_read)
            os.close(session_write)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            channel.close()
            os.close(wake_read)
            os.close(wake_write)
            return _Request(request["module"], request["cwd"], *fds)
        os.close(session_write)
        with os.fdopen(session_read, "rb") as session:
            session.read()  # EOF: the child has its session (or has died)
        for fd in fds:
            os.close(fd)
        if pid > 0:
            _send(channel, {"id": request["id"], "pid": pid})


def _wait_readable(channel: socket.socket, wake: int) -> list[int]:
    readable, _, _ = select.select([channel.fileno(), wake], [], [])
    return readable


def _report_exits(channel: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        _send(channel, {"exited": pid, "code": code, "cpu": usage.ru_utime + usage.ru_stime})


def _reap_all() -> None:
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def _send(channel: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the other side is gone: nobody to tell
        channel.send(json.dumps(message).encode())


def _branch(
    owner: socket.socket, listener: socket.socket, modules: Iterable[str]
) -> socket.socket | None:
    """A shared prestarter's loop: for each connection to ``listener`` from a process of
    this user, fork a prestarter that serves that connection (``_serve``), having preloaded
    ``modules`` at the first. Returns the connection in such a forked prestarter; ``None``
    here once ``owner`` (the starting process's channel) has closed and every prestarter
    forked here has exited."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    preloaded = False
    while True:
        readable, _, _ = select.select([owner.fileno(), listener.fileno(), wake_read], [], [])
        if wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
            _reap_exited()
        if owner.fileno() in readable:
            try:
                data = owner.recv(MESSAGE_LIMIT)
            except OSError:
                data = b""
            if not data:
                listener.close()
                _reap_all()
                return None
        if listener.fileno() not in readable:
            continue
        try:
            connection, _ = listener.accept()
        except OSError:
            continue
        if not _same_user(connection):
            connection.close()
            continue
        if not preloaded:
            _preload(modules)
            preloaded = True
        try:
            pid = os.fork()
        except OSError:
            connection.close()  # the process finds its prestarter gone, and starts its own
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write):
                os.close(fd)
            owner.close()
            listener.close()
            return connection
        connection.close()


def _same_user(connection: socket.socket) -> bool:
    """Whether the process at the other end runs as this one's user (``SO_PEERCRED``)."""
    layout = "3i"  # pid, uid, gid
    credentials = connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(layout)
    )
    _, uid, _ = struct.unpack(layout, credentials)
    return bool(uid == os.getuid())


def _reap_exited() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become(request: _Request) -> None:
    """In a freshly forked child: take the request's session, descriptors, directory and
    environment, then run its module as ``__main__``. The environment comes from the
    starting process straight to the child through a pipe the prestarter only passes on:
    the prestarter never holds a service's credentials, so no child forked after another
    inherits that one's."""
    with os.fdopen(request.environment, "rb") as pipe:
        env = json.loads(pipe.read())
    _name_process(request.module)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(request.output, 1)
    os.dup2(request.output, 2)
    for fd in (devnull, request.output):
        if fd > 2:
            os.close(fd)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[0] = request.cwd  # what ``-m`` puts first: the directory it ran in
    sys.argv = [request.module]
    drop_other_services_metrics(request.module)
    runpy.run_module(request.module, run_name="__main__", alter_sys=True)


def drop_other_services_metrics(module: str) -> None:
    """Unregister the metrics the other services' packages defined as they were preloaded,
    so that ``module``'s process exports its own series and the shared libraries', as it
    would started alone, not every service's at zero."""
    if "prometheus_client" not in sys.modules:
        return
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    others = SERVICE_PACKAGES - {module.split(".")[0]}
    for name, loaded in list(sys.modules.items()):
        if loaded is None or name.split(".")[0] not in others:
            continue
        for value in list(vars(loaded).values()):
            if isinstance(value, MetricWrapperBase):
                with contextlib.suppress(KeyError):  # named by two modules: gone already
                    REGISTRY.unregister(value)


def _name_process(module: str) -> None:
    """Name the process after its service (``top``, ``ps -o comm``, ``pgrep``; the kernel
    keeps 15 characters); its command line stays the prestarter's."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, module.removeprefix("aether_").encode()[:15], 0, 0, 0)


def _preload(modules: Iterable[str]) -> None:
    """Import ``modules``, and run the ``prestart()`` of each that has one: what its
    process would otherwise do at every start and that holds nothing of that start (the
    gateway builds its routes), done once here for every child."""
    for name in modules:
        try:
            module = importlib.import_module(name)
            warm = getattr(module, PRESTART_HOOK, None)
            if callable(warm):
                warm()
        except Exception:  # a service that cannot be imported fails in its own child
            print(f"prestart: could not preload {name}", file=sys.stderr)
            traceback.print_exc()
        if name.endswith(".__main__"):
            # What it imported stays; the module itself is run afresh as ``__main__``.
            sys.modules.pop(name, None)
    gc.collect()
    gc.freeze()


def main(argv: list[str]) -> None:
    """``python -m aether.prestart [--for WHAT] [MODULE…]``: ``--for`` only names what it
    serves on its command line (and so on its children's)."""
    if argv[:1] == ["--for"]:
        argv = argv[2:]
    channel = socket.socket(fileno=int(os.environ.pop(CHANNEL_ENV)))
    listening = os.environ.pop(LISTENER_ENV, None)
    if listening is None:
        _preload(argv or PRELOAD)
    else:
        connection = _branch(channel, socket.socket(fileno=int(listening)), argv or PRELOAD)
        if connection is None:
            return
        channel = connection
    request = _serve(channel)
    if request is None:
        return
    try:
        _become(request)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


# --- the starting side -------------------------------------------------------------------


@dataclass(eq=False)
class Forked:
    """A child of the prestarter, handled like a ``subprocess.Popen``."""

    pid: int
    stdout: IO[bytes] | None
    args: list[str]
    returncode: int | None = None
    _exited: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._exited.set()


class Prestarter:
    """The starting side of a prestarter process (module docstring)."""

    def __init__(
        self, serves: str = "", preload: tuple[str, ...] = PRELOAD, log: Path | None = None
    ) -> None:
        """``serves`` goes on the command line of the prestarter and so of every child
        (a stack's home, say: ``ps`` and ``pgrep -f`` then find what a stack runs).
        ``log`` takes what the prestarter itself writes (a module it could not preload);
        without one it writes where this process does, and holds that open while it
        lives (as long as the last service it forked)."""
        output = log.open("ab") if log is not None else None
        channel, process = _launch(("--for", serves) if serves else (), preload, output=output)
        if output is not None:
            output.close()
        self.process: subprocess.Popen[bytes] | None = process
        self._attach(channel)

    @classmethod
    def joining(cls, shared: Path) -> Prestarter:
        """A prestarter of this process's own, forked by the shared prestarter listening at
        ``shared`` (:class:`SharedPrestarter`) rather than started here: it has the shared
        one's imports without paying for them again. ``OSError`` when nothing listens
        there, or when what listens runs as another user (whose prestarter would run its
        own code as this user's services). Its ``process`` is ``None`` (it is not this
        process's child)."""
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            channel.connect(str(shared))
            if not _same_user(channel):
                raise PermissionError(f"the prestarter at {shared} runs as another user")
        except OSError:
            channel.close()
            raise
        joined = cls.__new__(cls)
        joined.process = None
        joined._attach(channel)
        return joined

    def _attach(self, channel: socket.socket) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._next = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition(self._lock)
        self._children: dict[int, Forked] = {}
        self._early_exits: dict[int, int] = {}
        self._gone = False
        threading.Thread(target=self._listen, name="prestart", daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self._gone

    def spawn(
        self, module: str, env: dict[str, str], cwd: str | None = None, output: int | None = None
    ) -> Forked:
        """Fork a child that runs ``module`` as ``python -m`` would, with exactly ``env``;
        its stdout and stderr are the returned handle's ``stdout`` pipe, or ``output`` (a
        descriptor the caller keeps and closes) with no pipe (``stdout`` is ``None``)."""
        read, write = os.pipe() if output is None else (None, output)
        env_read, env_write = os.pipe()

        def close_ours(*fds: int | None) -> None:
            for fd in fds:
                if fd is not None and fd != output:
                    os.close(fd)

        with self._lock:
            if self._gone:
                close_ours(read, write, env_read, env_write)
                raise PrestartError("the prestarter has exited")
            self._next += 1
            number = self._next
            message = {"id": number, "module": module, "cwd": cwd or os.getcwd()}
            try:
                socket.send_fds(self._channel, [json.dumps(message).encode()], [write, env_read])
            except OSError as error:
                close_ours(read, env_write)
                raise PrestartError(f"the prestarter is gone: {error}") from error
            finally:
                close_ours(write, env_read)
            while number not in self._answers and not self._gone:
                self._answered.wait()
            answer = self._answers.pop(number, None)
            if answer is None or "pid" not in answer:
                close_ours(read, env_write)
                why = answer["error"] if answer else "the prestarter has exited"
                raise PrestartError(f"could not start {module}: {why}")
            # Only the child reads this (it waits for it before anything else).
            with contextlib.suppress(BrokenPipeError), os.fdopen(env_write, "wb") as pipe:
                pipe.write(json.dumps(env).encode())
            pid = int(answer["pid"])
            stdout = None if read is None else os.fdopen(read, "rb")
            child = Forked(pid, stdout, [sys.executable, "-m", module])
            if pid in self._early_exits:  # it ended before its answer was read
                child._ended(self._early_exits.pop(pid))
            else:
                self._children[pid] = child
            return child

    def running(self) -> list[Forked]:
        """The children forked here whose exit has not been reported yet."""
        with self._lock:
            return list(self._children.values())

    def _listen(self) -> None:
        while True:
            try:
                data = self._channel.recv(MESSAGE_LIMIT)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self._lock:
                if "exited" in message:
                    pid, code = int(message["exited"]), int(message["code"])
                    _count_cpu(float(message["cpu"]))
                    child = self._children.pop(pid, None)
                    if child is None:
                        self._early_exits[pid] = code
                    else:
                        child._ended(code)
                else:
                    self._answers[int(message["id"])] = message
                    self._answered.notify_all()
        with self._lock:
            self._gone = True
            self._answered.notify_all()
            orphans = list(self._children.values())
            self._children.clear()
        # No one reports these any more: wait for each the way one waits for a stranger.
        for child in orphans:
            threading.Thread(target=_watch_orphan, args=(child,), daemon=True).start()

    def close(self) -> None:
        """Stop taking requests; the prestarter exits once its children have (they keep
        running until whoever started them stops them)."""
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)
        self._channel.close()


def _watch_orphan(child: Forked) -> None:
    import psutil

    try:
        code = psutil.Process(child.pid).wait()
    except psutil.NoSuchProcess:
        code = None
    child._ended(code if isinstance(code, int) else -1)


_exited_cpu = [0.0]
_exited_cpu_lock = threading.Lock()


def _count_cpu(seconds: float) -> None:
    with _exited_cpu_lock:
        _exited_cpu[0] += seconds


def exited_children_cpu() -> float:
    """The CPU seconds used by every child of this process's prestarters that has exited
    (and by what each waited for): what ``RUSAGE_CHILDREN`` would have counted had the
    services been this process's own children."""
    with _exited_cpu_lock:
        return _exited_cpu[0]


class SharedPrestarter:
    """A prestarter shared by several processes (the workers of a parallel test run, each
    running many stacks): it listens on a socket at ``path``, imports ``preload`` when the
    first process connects (so that a run that never starts a service never pays for
    them), and forks a prestarter for each connected process of this user
    (:meth:`Prestarter.joining`). Each process then pays nothing for the imports, where
    a prestarter of its own costs 3 to 4 s of CPU (the model SDK's types half of it)."""

    def __init__(self, path: Path, preload: tuple[str, ...] = PRELOAD) -> None:
        self.path = path
        # Bound here, before the process starts: a process may connect at once (it is then
        # accepted once the shared prestarter runs).
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(path))
        listener.listen(64)
        self._channel, self.process = _launch((), preload, listener=listener)
        listener.close()

    def close(self) -> None:
        """Take no more connections; the process exits once every prestarter it forked has
        (each once its process has closed its channel and its services have exited)."""
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)
        self._channel.close()
        self.path.unlink(missing_ok=True)


def _launch(
    options: tuple[str, ...],
    preload: tuple[str, ...],
    output: IO[bytes] | None = None,
    listener: socket.socket | None = None,
) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Start ``python -m aether.prestart`` in a session of its own with an environment of
    nothing but its channel (and ``listener``, for a shared one); returns our end of the
    channel and the process, which is reaped whenever it exits, nobody waiting on it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Unbuffered output, as the stack gives every service, for the children.
    env = {CHANNEL_ENV: str(theirs.fileno()), "PYTHONUNBUFFERED": "1"}
    passed = [theirs.fileno()]
    if listener is not None:
        env[LISTENER_ENV] = str(listener.fileno())
        passed.append(listener.fileno())
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "aether.prestart"),
            *options,
            *(() if preload == PRELOAD else preload),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        pass_fds=passed,
        start_new_session=True,
    )
    theirs.close()
    threading.Thread(target=process.wait, name="prestart-wait", daemon=True).start()
    return ours, process


_shared: Prestarter | None = None
_shared_lock = threading.Lock()


def shared() -> Prestarter:
    """This process's prestarter, for the stacks it runs one after another (tests,
    benchmarks); made on first use and again if it has exited: forked for this process by
    the shared prestarter ``AETHER_PRESTART_SHARED`` names when that one answers, started
    here otherwise."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive:
            _shared = joined_or_own(os.environ.get(SHARED_ENV))
        return _shared


def joined_or_own(shared_path: str | None, preload: tuple[str, ...] = PRELOAD) -> Prestarter:
    """A prestarter forked by the shared prestarter at ``shared_path`` when one answers
    there, else one started here (preloading ``preload``)."""
    if shared_path:
        with contextlib.suppress(OSError):
            return Prestarter.joining(Path(shared_path))
    return Prestarter(preload=preload)


if __name__ == "__main__":
    main(sys.argv[1:])
