"""A warm sandbox: one bubblewrap kept for an attempt, a fresh process tree per command.

Starting bubblewrap (namespaces, a dozen mounts, a fresh ``/proc``) is most of what a
short command costs in the sandbox. ``WarmSandbox`` starts one, with the attempt's mounts,
ahead of time and keeps it; its first and only process is a tiny init (``init.py``) that
forks each command. Per command, as in a cold sandbox: its own cgroup (joined by the
command's process before it execs, through ``cgroup.procs`` files this process opened) or
its rlimits, a new session, the output cap, the CPU, disk and wall-clock watch; at its end,
however it ended, every process of the namespace but the init is killed, and ``/tmp``,
``/dev/shm`` and System V IPC are emptied, so the next command finds only the worktree
changed. POSIX message queues, which could not be emptied from inside, are refused to the
commands (``RLIMIT_MSGQUEUE`` 0). A command that has to be killed and does not end, an init
that answers anything unexpected or could not clean up, a command with other mounts (a new
entry on ``PATH``) or a second command while one runs: the kept sandbox is thrown away
whole, or that command runs in a cold sandbox of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aether_sandbox import confine, seccomp
from aether_sandbox.base import Launch, Request
from aether_sandbox.bubblewrap import Bubblewrap, scratch_env
from aether_sandbox.cgroups import Cgroup
from aether_sandbox.disk import DiskWatch
from aether_sandbox.egress import INSIDE_PORT, INSIDE_SOCKET, EgressProxy, parse_allow_list
from aether_sandbox.execute import (
    Outcome,
    OutputCollector,
    _Reader,
    _remove,
    _size,
    execute_cold,
    rlimits,
    watch_limits,
)
from aether_sandbox.settings import MIB, Limits

INIT_SOURCE = (Path(__file__).parent / "init.py").read_text()
START_SECONDS = 15.0  # bubblewrap and the init's Python, on a loaded machine
KILL_SECONDS = 5.0  # from "kill" to the init's answer before the sandbox goes whole
INIT_MEMORY = 64 * MIB  # the init's own room in the cgroup, on top of a command's limit


class WarmSandbox:
    """``Sandbox`` for one attempt: commands run in a kept bubblewrap (see the module).

    ``close()`` ends it; the attempt's toolbox calls it. ``started`` counts the sandboxes
    it started (a test and the bench read it)."""

    confined = True

    def __init__(self, sandbox: Bubblewrap) -> None:
        self.cold = sandbox
        self.name = sandbox.name
        self.settings = sandbox.settings
        self.started = 0
        self._held: _Held | None = None
        self._busy = False

    def launch(self, request: Request) -> Launch:
        """A cold launch (for callers that start the process themselves)."""
        return self.cold.launch(request)

    async def execute(self, request: Request, output_chars: int) -> Outcome:
        if self._busy:
            # Commands of one attempt side by side: this one gets a sandbox of its own.
            return await self._aside(request, output_chars)
        self._busy = True
        try:
            held = await self._ready(request)
            if held is None:
                return await execute_cold(self.cold, request, output_chars)
            try:
                outcome = await held.run(request, output_chars)
            finally:
                if not held.usable:
                    self._discard()
            if outcome is None:  # not started: a sandbox of its own
                return await self._aside(request, output_chars)
            return outcome
        finally:
            self._busy = False

    async def _aside(self, request: Request, output_chars: int) -> Outcome:
        """A sandbox for this command alone: kept only for it where it needs the egress
        proxy (which a kept sandbox's init relays), a cold one otherwise."""
        if not self.settings.egress:
            return await execute_cold(self.cold, request, output_chars)
        once = WarmSandbox(self.cold)
        try:
            held = await once._ready(request)
            outcome = await held.run(request, output_chars) if held is not None else None
            if outcome is None:
                return await execute_cold(self.cold, request, output_chars)
            return outcome
        finally:
            once.close()

    async def _ready(self, request: Request) -> _Held | None:
        mounts = self.cold.mounts(request)
        confinement = self.cold.confinement(request, {"PATH": os.defpath}, "pass")
        same = self._held is not None and self._held.mounts == [*mounts, *confinement]
        if self._held is not None and (not same or not self._held.alive()):
            self._discard()
        if self._held is None:
            self._held = await _Held.start(self.cold, request, mounts, confinement)
            if self._held is not None:
                self.started += 1
        return self._held

    def _discard(self) -> None:
        if self._held is not None:
            self._held.kill()
            self._held = None

    def close(self) -> None:
        """End the kept sandbox and everything in it."""
        self._discard()


class _Held:
    """One running bubblewrap with the init inside, the socket to it, and its cgroup."""

    def __init__(
        self,
        cold: Bubblewrap,
        process: subprocess.Popen[bytes],
        control: socket.socket,
        mounts: list[str],
    ) -> None:
        self.cold = cold
        self.process = process
        self.control = control
        self.mounts = mounts
        self.usable = True
        self.cgroup: Cgroup | None = None
        self.limits: Limits | None = None
        self.proxy: EgressProxy | None = None
        self._loop = asyncio.get_running_loop()
        self._replies: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()
        self._loop.add_reader(control.fileno(), self._readable)

    @classmethod
    async def start(
        cls, cold: Bubblewrap, request: Request, mounts: list[str], confinement: list[str]
    ) -> _Held | None:
        """A kept sandbox with ``mounts``, its init ready and in its cgroup; ``None`` where
        it cannot start (the cold path then says why, in bubblewrap's words)."""
        proxy = None
        egress: list[str] = []
        relay: list[str] = []
        if cold.settings.egress:
            proxy = EgressProxy(parse_allow_list(" ".join(cold.settings.egress)))
            await proxy.start()
            egress = ["--ro-bind", str(proxy.path), str(INSIDE_SOCKET)]
            relay = [str(INSIDE_SOCKET)]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            *cold.namespaces("--as-pid-1"),
            *mounts[:-2],  # before the root turns read-only: the proxy's mount point
            *egress,
            *mounts[-2:],
            "--chdir",
            str(request.workdir),
            "--",
            # The Landlock layer builds the commands' ruleset and hands it to the init.
            *confinement,
            sys.executable,
            "-I",
            "-S",
            "-c",
            INIT_SOURCE,
            str(theirs.fileno()),
            *(["--landlock", confine.FD_PLACEHOLDER] if confinement else []),
            *relay,
        ]
        try:
            process = _spawn(argv, theirs.fileno(), cold.seccomp)
        except OSError:
            ours.close()
            if proxy is not None:
                proxy.close()
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        held = cls(cold, process, ours, [*mounts, *confinement])
        held.proxy = proxy
        if not await held._started(request.limits):
            held.kill()
            return None
        return held

    async def _started(self, limits: Limits) -> bool:
        if not _ready(await self._reply(START_SECONDS), "ready"):
            return False
        self.cgroup = Cgroup.create(limits, self.cold.settings.cgroup)
        if self.cgroup is None:
            return True
        procs = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in self.cgroup.procs]
        try:
            socket.send_fds(self.control, [json.dumps({"op": "join"}).encode()], procs)
        except OSError:
            return False
        finally:
            for fd in procs:
                os.close(fd)
        return _ready(await self._reply(START_SECONDS), "joined")

    async def _reply(self, seconds: float) -> dict[str, object] | None:
        try:
            return await asyncio.wait_for(self._replies.get(), seconds)
        except TimeoutError:
            return None

    def _readable(self) -> None:
        try:
            data = self.control.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self.control.fileno())
            self._replies.put_nowait(None)
            return
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        self._replies.put_nowait(reply if isinstance(reply, dict) else None)

    def alive(self) -> bool:
        return self.usable and self.process.poll() is None

    async def run(self, request: Request, output_chars: int) -> Outcome | None:
        """The command's outcome; ``None`` when the sandbox could not take it (it is then
        unusable, and the command has not started)."""
        limits = request.limits
        cgroup = self.cgroup
        env, directories = scratch_env(request.env)
        if self.proxy is not None:
            for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
                env.pop(name, None)
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env[name] = f"http://127.0.0.1:{INSIDE_PORT}"
        began = time.monotonic()
        deadline = began + limits.wall_seconds
        try:
            if cgroup is not None and limits != self.limits:
                # The init lives in the cgroup too: its own room comes on top.
                cgroup.relimit(limits, INIT_MEMORY, 1)
                self.limits = limits
        except OSError:
            self.usable = False
            return None
        granted = rlimits(limits, cgroup)
        # Message queues live in the IPC namespace and cannot be listed from inside: none.
        granted[resource.RLIMIT_MSGQUEUE] = (0, 0)
        message = {
            "op": "run",
            "argv": list(request.argv),
            "env": env,
            "cwd": str(request.cwd),
            "dirs": directories,
            "rlimits": [[kind, soft, hard] for kind, (soft, hard) in granted.items()],
        }
        cpu_before = (cgroup.cpu_seconds() if cgroup is not None else None) or 0.0
        oom_before = cgroup.oom_kills() if cgroup is not None else 0
        read_end, write_end = os.pipe()
        try:
            socket.send_fds(self.control, [json.dumps(message).encode()], [write_end])
        except OSError:
            os.close(read_end)
            self.usable = False
            return None
        finally:
            os.close(write_end)

        def cpu_used() -> float | None:
            used = cgroup.cpu_seconds() if cgroup is not None else None
            return None if used is None else used - cpu_before

        disk = DiskWatch(request.writable, limits, attempt=request.attempt_disk)
        collector = OutputCollector(output_chars)
        output = _Reader(os.fdopen(read_end, "rb"), collector)
        reply: dict[str, object] | None = None
        answered = asyncio.ensure_future(self._replies.get())
        try:
            timed_out, stopped = await watch_limits(
                answered, deadline, limits, cpu_used, disk, collector
            )
            if not answered.done():
                self._kill_command()
                try:
                    await asyncio.wait_for(asyncio.shield(answered), KILL_SECONDS)
                except TimeoutError:
                    self.usable = False
            if answered.done() and not answered.cancelled():
                reply = answered.result()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output.ended), 2.0)
        finally:
            if not answered.done():
                # Cancelled, or no answer: nothing in this sandbox can be trusted to end.
                answered.cancel()
                self.usable = False
            if reply is None or reply.get("clean") is not True:
                self.usable = False
            out_of_memory = cgroup is not None and cgroup.oom_kills() > oom_before
            if not self.usable:
                self.kill()
            output.close()
        number = reply.get("errno") if reply is not None else None
        if isinstance(number, int) and number:
            said = f"{request.argv[0]}: {reply.get('error') if reply else ''} in the sandbox"
            if number == errno.ENOENT:
                raise FileNotFoundError(number, said)
            if number == errno.EACCES:
                raise PermissionError(number, said)
            raise OSError(number, said)
        if reply is None and not timed_out and stopped is None:
            stopped = "its sandbox ended under it"
        killed = timed_out or stopped is not None
        if not killed:
            stopped = disk.over()
        if stopped is None and out_of_memory:
            stopped = f"it ran out of memory (limit {_size(limits.memory_bytes)})"
        code = reply.get("exit") if reply is not None else None
        exit_code = code if isinstance(code, int) else None
        if exit_code is not None and exit_code < 0:
            exit_code = 128 - exit_code  # killed by a signal: as a shell (and bubblewrap) say
        return Outcome(
            exit_code=None if killed else exit_code,
            timed_out=timed_out,
            output=collector.text(),
            seconds=time.monotonic() - began,
            sandbox=self.cold.name,
            stopped=stopped,
        )

    def _kill_command(self) -> None:
        try:
            self.control.send(json.dumps({"op": "kill"}).encode())
        except OSError:
            self.usable = False

    def kill(self) -> None:
        """End the sandbox: bubblewrap goes, its init with it (``--die-with-parent``), and
        with the init the PID namespace and everything in it; then its cgroup."""
        self.usable = False
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            self._loop.remove_reader(self.control.fileno())
        self.control.close()
        if self.process.returncode is None:  # once: a reaped pid may be another's now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()
        self.process.wait()
        if self.cgroup is not None:
            _remove(self.cgroup)
            self.cgroup = None
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None


def _ready(reply: dict[str, object] | None, key: str) -> bool:
    return reply is not None and reply.get(key) is True


def _spawn(argv: list[str], control: int, filter_program: bytes | None) -> subprocess.Popen[bytes]:
    with seccomp.passed(argv, filter_program) as (argv, filter_fds):
        return subprocess.Popen(
            argv,
            env={"PATH": os.defpath},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(control, *filter_fds),
        )
