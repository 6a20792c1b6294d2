"""Limits for a whole program that another library starts, not ``execute``: an agent CLI
(Claude Code, which the Claude Agent SDK starts from the path it is given) and everything
it starts, for as long as it runs.

A JS runtime (Node, Bun) reserves far more address space than it uses, so ``RLIMIT_AS``,
which bounds a command's memory where there is no cgroup, is never set here. Memory is
the cgroup's ``memory.max`` (no swap), processes and threads its ``pids.max``, CPU time
its total, watched: what a cgroup counts is the whole tree, whatever user a process
runs as. Without a cgroup the rlimits that such a runtime tolerates stand in, each per
process: ``RLIMIT_DATA`` (its writable private memory: the runtime's reserved, unused
address space is not counted), ``RLIMIT_CPU`` and ``RLIMIT_NPROC``, which counts every
process and thread of the runner's user (the sandbox runs as that user) and so is set to
what that user runs at the start plus the program's allowance; ``describe`` says which
apply. ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and ``RLIMIT_CORE`` are set either way.

The caller starts the program behind ``prefix()`` (it joins the cgroup, then sets the
rlimits and execs the program), runs ``watch`` while the program runs, and ``end``
once it has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aether_sandbox.cgroups import Cgroup
from aether_sandbox.disk import DiskWatch
from aether_sandbox.execute import PRLIMIT_NAMES, _remove, _size, rlimits
from aether_sandbox.settings import Limits

PRLIMIT_NAMES_DATA = {**PRLIMIT_NAMES, resource.RLIMIT_DATA: "data"}
# Sets the rlimits given as KIND=SOFT:HARD, then execs the rest (no ``prlimit`` here).
SET_RLIMITS = (
    "import os, resource, sys\n"
    "end = sys.argv.index('--')\n"
    "for spec in sys.argv[1:end]:\n"
    "    kind, _, pair = spec.partition('=')\n"
    "    soft, _, hard = pair.partition(':')\n"
    "    resource.setrlimit(int(kind), (int(soft), int(hard)))\n"
    "os.execvp(sys.argv[end + 1], sys.argv[end + 1:])\n"
)


def user_tasks(uid: int) -> int:
    """The processes and threads running as ``uid`` (what ``RLIMIT_NPROC`` counts)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == uid:
                count += sum(1 for _ in (entry / "task").iterdir())
    return count


@dataclass
class ProgramLimits:
    """The limits of one program's run: its cgroup (``None`` without one), the rlimits
    set before it starts, and ``stopped``: which limit it went past, once it has."""

    limits: Limits
    cgroup: Cgroup | None
    rlimits: dict[int, tuple[int, int]]
    stopped: str | None = None
    disk: DiskWatch | None = None
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def create(
        cls, limits: Limits, configured: str = "", home: Path | None = None
    ) -> ProgramLimits:
        """A cgroup with ``limits`` where one can be made, and the rlimits to go with it;
        ``home``: a tree only the program writes, watched against the disk limit (not
        the worktree, which the agent's commands write too, each under its own watch)."""
        cgroup = Cgroup.create(limits, configured)
        # Without a cgroup: memory per process by its data segment, which a JS runtime
        # starts under (not its address space), and processes over the runner's user,
        # which RLIMIT_NPROC counts (not for root, which it does not bind).
        nproc = None
        if limits.processes is not None and os.geteuid() != 0:
            nproc = user_tasks(os.getuid()) + limits.processes
        granted = rlimits(limits, cgroup, memory=resource.RLIMIT_DATA, processes=nproc)
        disk = DiskWatch((home,), limits, "its home") if home is not None else None
        return cls(limits, cgroup, granted, disk=disk)

    def describe(self) -> dict[str, str]:
        """How each limit is enforced (for the logs and the attempt's progress)."""
        enforced = self.cgroup.enforces if self.cgroup is not None else set()
        if "memory" in enforced:
            memory = "cgroup"
        elif resource.RLIMIT_DATA in self.rlimits:
            memory = "RLIMIT_DATA per process (no cgroup)"
        else:
            memory = "none"
        if "processes" in enforced:
            processes = "cgroup"
        elif resource.RLIMIT_NPROC in self.rlimits:
            processes = "RLIMIT_NPROC over the runner's user (no cgroup)"
        elif self.limits.processes is not None:
            processes = "not enforced (root without a writable cgroup)"
        else:
            processes = "none"
        cpu = "cgroup total and RLIMIT_CPU" if "cpu" in enforced else "RLIMIT_CPU per process"
        return {"memory": memory, "processes": processes, "cpu": cpu, "file_size": "RLIMIT_FSIZE"}

    def prefix(self) -> list[str]:
        """The argument vector to start the program behind: it joins the cgroup, sets
        the rlimits and execs what follows."""
        prlimit = shutil.which("prlimit")
        if prlimit is not None:
            options = [
                f"--{PRLIMIT_NAMES_DATA[kind]}={soft}:{hard}"
                for kind, (soft, hard) in self.rlimits.items()
            ]
            limited = [prlimit, *options, "--"]
        else:
            specs = [f"{int(kind)}={soft}:{hard}" for kind, (soft, hard) in self.rlimits.items()]
            limited = [sys.executable, "-c", SET_RLIMITS, *specs, "--"]
        if self.cgroup is None:
            return limited
        join = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; '
        return ["/bin/sh", "-c", join + 'exec "$@"', "sh", *self.cgroup.procs, "--", *limited]

    def over(self) -> str | None:
        """Which limit the program went past, by its cgroup's counts, or ``None``."""
        group, limits = self.cgroup, self.limits
        if group is None:
            return None
        if group.oom_kills() > 0:
            return f"it ran out of memory (limit {_size(limits.memory_bytes)})"
        if group.refused_forks() > 0:
            return f"it tried to run more than {limits.processes} processes and threads"
        used = group.cpu_seconds()
        if limits.cpu_seconds is not None and used is not None and used > limits.cpu_seconds:
            return f"it used more than {limits.cpu_seconds} s of CPU time"
        return None

    async def watch(self, on_stop: Callable[[str], None] | None = None) -> None:
        """Until ``end``: every 0.25 s, check the limits; past one, kill everything in
        the cgroup, keep the reason in ``stopped`` and call ``on_stop`` with it."""
        while not self._ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), 0.25)
                return
            reason = self.over()
            if reason is None and self.disk is not None:
                reason = await asyncio.to_thread(self.disk.over)
            if reason is not None:
                self.stopped = reason
                if self.cgroup is not None:
                    self.cgroup.kill()
                if on_stop is not None:
                    on_stop(reason)
                return

    async def end(self) -> None:
        """After the program's end: what limit it went past on its way out (read before
        the cgroup goes), then kill whatever is left in the cgroup and remove it."""
        self._ended.set()
        if self.stopped is None:
            self.stopped = self.over()
        if self.cgroup is not None:
            self.cgroup.kill()
            if not self.cgroup.remove_if_empty():
                await asyncio.to_thread(_remove, self.cgroup)


def program_enforcement(limits: Limits, configured: str = "") -> dict[str, str]:
    """How a program's limits are enforced on this machine (for the start-up log)."""
    probe = ProgramLimits.create(limits, configured)
    if probe.cgroup is not None:
        probe.cgroup.remove()
    return probe.describe()
