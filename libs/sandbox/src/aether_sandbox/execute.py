"""Starting a sandboxed command with its limits, watching it, and ending all of it.

The limits are in place before the command starts, so it and everything it starts inherit
them. bubblewrap is started held (``Launch.held``): once it has made the namespaces and
mounts, and before it starts the command, its first process waits on a pipe while this
process writes that process's pid into the command's cgroup and sets its rlimits
(``prlimit(2)``); one byte on the pipe then lets it go. That costs no process of its own,
and the sandbox's setup is not charged to the command's cgroup. A backend that cannot be
held (``unconfined``) is started behind a small ``/bin/sh`` that moves itself into the
cgroup and execs ``prlimit`` with the rlimits, which execs the command: two small execs,
where setting them in the child between fork and exec (the fallback when ``prlimit`` is
missing) costs a full fork of the service's process.
While it runs, a watch stops it at the wall-clock limit, past the output cap, past the
CPU time of its cgroup, or once it has written more than the disk cap into its workdir.
Whatever the outcome, its process group and cgroup are killed before this returns; with
bubblewrap that is the whole PID namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from aether_sandbox import seccomp
from aether_sandbox.base import Launch, Request, Sandbox
from aether_sandbox.bubblewrap import Bubblewrap
from aether_sandbox.cgroups import Cgroup
from aether_sandbox.disk import DiskWatch
from aether_sandbox.settings import MIB, Limits
from aether_sandbox.stop import StopOrder


@dataclass(frozen=True)
class Outcome:
    """``exit_code`` is ``None`` when the command was stopped before it exited;
    ``stopped`` says which limit stopped it (or which it went past on its way out)."""

    exit_code: int | None
    timed_out: bool
    output: str
    seconds: float
    sandbox: str
    stopped: str | None = None


# keyctl(2) (no C library wrapper) and its operation joining a new session keyring.
_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
_KEYCTL_JOIN_SESSION_KEYRING = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def _own_session_keyring() -> None:
    """In bubblewrap's process before exec: a new, empty session keyring. A user
    namespace does not change the session keyring, and without this the command could
    search and read every key in the service's own (one its login or service manager
    gave it). Without keys in the kernel there are none to read; any other failure
    fails the start (``Popen`` raises), rather than running the command with them."""
    if _KEYCTL is None:
        return
    if _LIBC.syscall(_KEYCTL, ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), None) == -1:
        number = ctypes.get_errno()
        if number not in (errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(number, f"cannot join a new session keyring: {os.strerror(number)}")


# Joins every cgroup.procs file named before "--", then execs the rest.
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
PRLIMIT_NAMES = {
    resource.RLIMIT_CORE: "core",
    resource.RLIMIT_NOFILE: "nofile",
    resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_CPU: "cpu",
    resource.RLIMIT_NPROC: "nproc",
    resource.RLIMIT_AS: "as",
}


def rlimits(
    limits: Limits,
    cgroup: Cgroup | None,
    *,
    memory: int = resource.RLIMIT_AS,
    processes: int | Literal["limit"] | None = "limit",
) -> dict[int, tuple[int, int]]:
    """The rlimits of a command (never above what this process may grant). Without a
    cgroup, ``memory`` is the rlimit that bounds its memory (a JS runtime cannot start
    under ``RLIMIT_AS``) and ``processes`` its ``RLIMIT_NPROC`` (``"limit"``: the limit's
    own; ``None``: none)."""
    enforced = cgroup.enforces if cgroup is not None else set()
    wanted: dict[int, tuple[int, int]] = {
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_NOFILE: (limits.open_files, limits.open_files),
    }
    if limits.disk_bytes is not None:
        wanted[resource.RLIMIT_FSIZE] = (limits.disk_bytes, limits.disk_bytes)
    if limits.cpu_seconds is not None:
        wanted[resource.RLIMIT_CPU] = (limits.cpu_seconds, limits.cpu_seconds + 5)
    nproc = limits.processes if processes == "limit" else processes
    if limits.processes is not None and nproc is not None and "processes" not in enforced:
        wanted[resource.RLIMIT_NPROC] = (nproc, nproc)
    if limits.memory_bytes is not None and "memory" not in enforced:
        wanted[memory] = (limits.memory_bytes, limits.memory_bytes)
    granted = {}
    for kind, (soft, hard) in wanted.items():
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        granted[kind] = (soft, hard)
    return granted


def _enter(limits: dict[int, tuple[int, int]], cgroup: Cgroup | None) -> None:
    """In the child before exec (no ``prlimit``): join the cgroup, set the rlimits."""
    if cgroup is not None:
        cgroup.join()
    for kind, pair in limits.items():
        resource.setrlimit(kind, pair)


def _limited(argv: list[str], limits: Limits, cgroup: Cgroup | None) -> list[str] | None:
    """``argv`` behind the cgroup join and ``prlimit``, or ``None`` without ``prlimit``."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return None
    options = [
        f"--{PRLIMIT_NAMES[kind]}={soft}:{hard}"
        for kind, (soft, hard) in rlimits(limits, cgroup).items()
    ]
    wrapped = [prlimit, *options, "--", *argv]
    if cgroup is not None:
        wrapped = ["/bin/sh", "-c", JOIN, "sh", *cgroup.procs, "--", *wrapped]
    return wrapped


def enforcement(sandbox: Sandbox) -> dict[str, str]:
    """How each limit is enforced on this machine (for the start-up log and the docs)."""
    group = Cgroup.create(Limits(), sandbox.settings.cgroup)
    enforced = group.enforces if group is not None else set()
    if group is not None:
        group.remove()
    root = os.geteuid() == 0
    processes = (
        "cgroup"
        if "processes" in enforced
        else ("not enforced (root without a writable cgroup)" if root else "RLIMIT_NPROC")
    )
    return {
        "memory": "cgroup" if "memory" in enforced else "RLIMIT_AS",
        "processes": processes,
        "cpu": "RLIMIT_CPU and the cgroup's total" if "cpu" in enforced else "RLIMIT_CPU",
        "disk": "RLIMIT_FSIZE and a watch over the workdir",
    }


async def execute(
    sandbox: Sandbox,
    request: Request,
    output_chars: int = 16_000,
    on_output: Callable[[bytes], None] | None = None,
) -> Outcome:
    """Run ``request`` in ``sandbox``; stdout and stderr together, the middle cut when long.
    ``on_output``, if given, is handed each piece of output as it arrives (from the event
    loop: it must not block).

    ``FileNotFoundError``/``PermissionError`` when the program (or bubblewrap) cannot start.
    """
    from aether_sandbox.warm import WarmSandbox  # here: the warm sandbox builds on this module

    if on_output is not None or request.stdin is not None or request.home is not None:
        # A whole program fed a file or read as it runs (an agent CLI, not a command of
        # the agent's): a sandbox of its own, never the attempt's kept one. It gets no
        # egress relay (that is the kept sandbox's init): its spec names its network.
        cold = sandbox.cold if isinstance(sandbox, WarmSandbox) else sandbox
        return await execute_cold(cold, request, output_chars, on_output)
    if isinstance(sandbox, WarmSandbox):
        return await sandbox.execute(request, output_chars)
    if isinstance(sandbox, Bubblewrap) and sandbox.settings.egress:
        # Only a kept sandbox's init relays to the egress proxy: one kept for this command.
        once = WarmSandbox(sandbox)
        try:
            return await once.execute(request, output_chars)
        finally:
            once.close()
    return await execute_cold(sandbox, request, output_chars)


async def execute_cold(
    sandbox: Sandbox,
    request: Request,
    output_chars: int = 16_000,
    on_output: Callable[[bytes], None] | None = None,
) -> Outcome:
    """``execute`` in a sandbox of the command's own (bubblewrap started for it)."""
    limits = request.limits
    launch = sandbox.launch(request)
    gate = _Gate() if launch.held is not None else None
    # A held launch needs its cgroup only once bubblewrap is up: it is made meanwhile.
    cgroup = None if gate is not None else Cgroup.create(limits, sandbox.settings.cgroup)
    began = time.monotonic()
    deadline = began + limits.wall_seconds
    disk = DiskWatch(request.writable, limits, attempt=request.attempt_disk)
    collector = OutputCollector(output_chars)
    try:
        if gate is not None and launch.held is not None:
            process = _spawn(
                launch.held(*gate.child_ends),
                launch,
                gate.child_ends,
                _own_session_keyring,
                stdin=request.stdin,
            )
        else:
            granted = rlimits(limits, cgroup)
            argv = _limited(launch.argv, limits, cgroup)
            process = _spawn(
                argv or launch.argv,
                launch,
                (),
                None if argv else lambda: _enter(granted, cgroup),
                stdin=request.stdin,
            )
    except BaseException:
        _end(None, cgroup)
        if gate is not None:
            gate.close()
        raise
    finally:
        if gate is not None:
            gate.close_child_ends()
    assert process.stdout is not None
    output = _Reader(process.stdout, collector, on_output)
    exited = _exit_of(process.pid)
    timed_out = False
    stopped: str | None = None
    try:
        if gate is not None:
            cgroup = Cgroup.create(limits, sandbox.settings.cgroup)
            try:
                async with asyncio.timeout(deadline - time.monotonic()):  # no task, unlike wait_for
                    await gate.release(rlimits(limits, cgroup), cgroup)
            except TimeoutError:
                timed_out = True
        if not timed_out:
            # Until the process exits, not its pipes: a child may hold them.
            timed_out, stopped = await watch_limits(
                exited,
                deadline,
                limits,
                lambda: cgroup.cpu_seconds() if cgroup is not None else None,
                disk,
                collector,
                running=lambda: process.poll() is None,
            )
        # Whatever the command left running (a server, a child holding the pipe) goes now.
        _end(process.pid, cgroup)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(output.ended), 2.0)
    finally:
        _end(process.pid, cgroup)
        if gate is not None:
            gate.close()  # only now: closed unwritten, it would let a held launch go
        output.close()
        await _reap(process, exited)
        # Read before the cgroup goes: its memory.events go with it.
        out_of_memory = cgroup is not None and cgroup.out_of_memory()
        if cgroup is not None and not cgroup.remove_if_empty():
            await asyncio.to_thread(_remove, cgroup)
    killed = timed_out or stopped is not None
    if not killed:
        stopped = disk.over()
        if stopped is None and out_of_memory:
            stopped = f"it ran out of memory (limit {_size(limits.memory_bytes)})"
    return Outcome(
        exit_code=None if killed else process.returncode,
        timed_out=timed_out,
        output=collector.text(),
        seconds=time.monotonic() - began,
        sandbox=sandbox.name,
        stopped=stopped,
    )


def _spawn(
    argv: list[str],
    launch: Launch,
    pass_fds: tuple[int, ...],
    preexec: Callable[[], None] | None = None,
    *,
    stdin: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the process directly (a vfork where no ``preexec`` is given): the event loop's
    subprocess transport would add a few loop turns and a waiting thread per command, and
    a held launch waits for this process to confine it."""
    with (
        open(stdin, "rb") if stdin is not None else contextlib.nullcontext() as source,
        seccomp.passed(argv, launch.seccomp) as (argv, filter_fds),
    ):
        return subprocess.Popen(
            argv,
            cwd=launch.cwd,
            env=launch.env,
            stdin=subprocess.DEVNULL if source is None else source,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(*pass_fds, *filter_fds),
            preexec_fn=preexec,
        )


class _Reader:
    """Feeds the process's output pipe to the collector from the event loop; ``ended`` is
    done when every writer has closed it."""

    def __init__(
        self,
        pipe: IO[bytes],
        collector: OutputCollector,
        on_output: Callable[[bytes], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_output = on_output
        self._pipe = pipe
        self._fd = pipe.fileno()
        self._collector = collector
        self.ended: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._collector.feed(chunk)
            if self._on_output is not None:
                self._on_output(chunk)
        else:
            self._loop.remove_reader(self._fd)
            if not self.ended.done():
                self.ended.set_result(None)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self._drain()
        self._pipe.close()
        if not self.ended.done():
            self.ended.cancel()

    def _drain(self) -> None:
        """Read what the pipe still holds (the command is killed by now, or done) into the
        collector: output written just before a stop or a limit is kept. Not handed to
        ``on_output``, whose reader may have ended with the command. Bounded, should a
        writer remain."""
        if self.ended.done():
            return
        for _ in range(_DRAIN_READS):
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # nothing more now (BlockingIOError) or gone
                return
            if not chunk:
                return
            self._collector.feed(chunk)


# At most 1 MiB is read after a command ended (the collector keeps only its cap of it).
_DRAIN_READS = 16


async def _reap(process: subprocess.Popen[bytes], exited: asyncio.Future[None]) -> None:
    """Collect the exit status of the process, killed already or gone by itself (woken by
    its pidfd; where there is none, polled at growing intervals)."""
    pause = 0.001
    while process.poll() is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), pause)
        pause = min(pause * 2, 0.05)
    exited.cancel()


class _Gate:
    """The two pipes of a held launch: the backend names its held process on ``info``
    and waits on ``gate``; ``release`` confines that process, then lets it go."""

    def __init__(self) -> None:
        self.info_read, self.info_write = os.pipe()
        self.gate_read, self.gate_write = os.pipe()
        self.child_ends = (self.info_write, self.gate_read)
        self.held: int | None = None
        self.released = False
        self._open = [self.info_read, self.info_write, self.gate_read, self.gate_write]

    async def release(self, granted: dict[int, tuple[int, int]], cgroup: Cgroup | None) -> None:
        self.held = _child_pid(await _read_to_end(self.info_read))
        if self.held is not None:
            # Gone (the backend failed before its command): nothing is left to confine.
            with contextlib.suppress(ProcessLookupError):
                if cgroup is not None:
                    cgroup.add(self.held)
                for kind, pair in granted.items():
                    resource.prlimit(self.held, kind, pair)
        # No reader left: bubblewrap failed in its setup, and its exit code and words say so.
        with contextlib.suppress(BrokenPipeError):
            os.write(self.gate_write, b"\0")
        self.released = True

    def close_child_ends(self) -> None:
        self._close(self.info_write, self.gate_read)

    def close(self) -> None:
        """Close every end; a process still held is killed first (the caller has killed
        the launch's process group, which holds it, already)."""
        if not self.released and self.held is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.held, signal.SIGKILL)
        self._close(*self._open)

    def _close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.remove(fd)
                os.close(fd)


async def _read_to_end(fd: int) -> bytes:
    """Everything written to the pipe ``fd`` until its last writer closes it."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    ended: asyncio.Future[None] = loop.create_future()
    chunks: list[bytes] = []

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            chunks.append(chunk)
        elif not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


def _child_pid(info: bytes) -> int | None:
    """The ``child-pid`` of bubblewrap's ``--info-fd`` JSON (none when it failed first)."""
    try:
        pid = json.loads(info)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def execute_sync(
    sandbox: Sandbox, request: Request, output_chars: int = 16_000, stop: StopOrder | None = None
) -> Outcome:
    """``execute`` for a thread without an event loop (the git broker's verification).

    ``stop``, given from another thread while the command runs (or before it starts),
    kills all of it as the limits do: the outcome has no exit code, ``stopped`` is the
    order's reason and ``output`` what it printed until then."""
    if stop is None:
        return asyncio.run(execute(sandbox, request, output_chars))
    return asyncio.run(_stoppable(sandbox, request, output_chars, stop))


async def _stoppable(
    sandbox: Sandbox, request: Request, output_chars: int, stop: StopOrder
) -> Outcome:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    began = time.monotonic()
    # The command's output collector, registered as it is made (``OutputCollector``): the
    # cancelled ``execute`` returns nothing, and what the command printed until the order
    # is read from it here.
    collectors: list[OutputCollector] = []
    watched = _WATCHED.set(collectors)

    def cancel() -> None:
        # The loop may be closed already when the order comes just after the command.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)

    try:
        with stop.on_stop(cancel):
            return await execute(sandbox, request, output_chars)
    except asyncio.CancelledError:
        if stop.reason is None:
            raise
        task.uncancel()
        # ``execute`` killed and reaped everything on its way out, reading what was left
        # in the output pipe.
        printed = collectors[-1] if collectors else None
        return Outcome(
            exit_code=None,
            timed_out=False,
            output=printed.text() if printed is not None and printed.total else "",
            seconds=time.monotonic() - began,
            sandbox=sandbox.name,
            stopped=stop.reason,
        )
    finally:
        _WATCHED.reset(watched)


async def watch_limits(
    ended: asyncio.Future[Any],
    deadline: float,
    limits: Limits,
    cpu_used: Callable[[], float | None],
    disk: DiskWatch,
    collector: OutputCollector,
    running: Callable[[], bool] | None = None,
) -> tuple[bool, str | None]:
    """Wait until ``ended`` is done (or ``running`` says the command is not), checking the
    limits every 0.1 s; returns (timed out, which limit stopped it)."""
    while running() if running is not None else not ended.done():
        now = time.monotonic()
        if now >= deadline:
            return True, None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ended), min(0.1, deadline - now))
            continue
        if collector.total > limits.output_bytes:
            return False, f"it printed more than {_size(limits.output_bytes)} of output"
        if limits.cpu_seconds is not None:
            used = cpu_used()
            if used is not None and used > limits.cpu_seconds:
                return False, f"it used more than {limits.cpu_seconds} s of CPU time"
        reason = await asyncio.to_thread(disk.over)
        if reason is not None:
            return False, reason
    return False, None


def _exit_of(pid: int) -> asyncio.Future[None]:
    """A future done when the process exits: its pidfd turns readable then, so a short
    command is not held up by a polling interval. Cancelling it closes the pidfd."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return exited  # no pidfds: the 0.1 s checks see the exit

    def done() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(handle, done)

    def close(_: asyncio.Future[None]) -> None:
        loop.remove_reader(handle)
        os.close(handle)

    exited.add_done_callback(close)
    return exited


def _end(pid: int | None, cgroup: Cgroup | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill()


def _remove(cgroup: Cgroup | None) -> None:
    """Remove the cgroup once its last process is gone (killed ones take a moment)."""
    if cgroup is None:
        return
    pause, waited = 0.001, 0.0
    while cgroup.pids() and waited < 2.0:
        cgroup.kill()
        time.sleep(pause)  # a killed process is usually gone within a millisecond or two
        waited += pause
        pause = min(pause * 2, 0.01)
    cgroup.remove()


def _size(value: int | None) -> str:
    if value is None:
        return "no limit"
    return f"{value / MIB:g} MiB" if value >= MIB else f"{value:,} bytes"


# Where a caller that may cancel a command (``_stoppable``) keeps its output collectors.
_WATCHED: contextvars.ContextVar[list[OutputCollector] | None] = contextvars.ContextVar(
    "aether_sandbox_watched_output", default=None
)


class OutputCollector:
    """Keeps the first quarter and the last three quarters of ``limit`` characters: a
    command's beginning says what ran, its end says how it failed."""

    def __init__(self, limit: int) -> None:
        watched = _WATCHED.get()
        if watched is not None:
            watched.append(self)
        self._head_limit = max(limit // 4, 1)
        self._tail_limit = max(limit - self._head_limit, 1)
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.total = 0

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of output."""
        self.total += len(chunk)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail and self._tail_size - len(self._tail[0]) >= self._tail_limit:
                self._tail_size -= len(self._tail.popleft())

    def text(self) -> str:
        tail = b"".join(self._tail)
        if len(tail) > self._tail_limit:
            tail = tail[-self._tail_limit :]
        omitted = self.total - len(self._head) - len(tail)
        head = self._head.decode("utf-8", errors="replace")
        end = tail.decode("utf-8", errors="replace")
        if omitted > 0:
            return f"{head}\n[… {omitted:,} bytes of output omitted …]\n{end}"
        return head + end or "(no output)"
