"""A cgroup per command, where the runner may create one: exact memory, process and CPU
accounting for everything the command starts, whatever user it runs as.

cgroup v2 is used when the runner's own cgroup (or ``AETHER_SANDBOX_CGROUP``) has the
``pids`` and ``memory`` controllers delegated and writable; otherwise the v1 ``pids``,
``memory`` and ``cpuacct`` hierarchies when they are mounted writable. Without either, the
limits fall back to rlimits (see ``limits.py``) and the sandbox says so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from dataclasses import dataclass, field

from aether_sandbox.settings import Limits

V1_CONTROLLERS = ("pids", "memory", "cpuacct")


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in _read("/proc/self/mountinfo").splitlines():
            fields = line.split()
            if "-" not in fields:
                continue
            rest = fields[fields.index("-") + 1 :]
            if len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                found.append((fields[4], rest[0], set(rest[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (``""`` for v2) -> the runner's cgroup path in that hierarchy."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in _read("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def v2_parent(configured: str = "") -> str | None:
    """A v2 directory whose children get ``pids`` and ``memory``, or ``None``."""
    candidates = [configured] if configured else []
    own = _own_paths().get("")
    for mount, kind, _ in _mounts():
        if kind == "cgroup2" and own is not None and not configured:
            candidates.append(os.path.join(mount, own.lstrip("/")))
    for candidate in candidates:
        control = os.path.join(candidate, "cgroup.subtree_control")
        try:
            enabled = set(_read(control).split())
            if not {"pids", "memory"} <= enabled:
                # Works only where the cgroup holds no process itself (delegated parents).
                _write(control, "+pids +memory")
                enabled = set(_read(control).split())
        except OSError:
            continue
        if {"pids", "memory"} <= enabled and os.access(candidate, os.W_OK):
            return candidate
    return None


def v1_parents() -> dict[str, str]:
    """Writable v1 hierarchies: controller -> the runner's directory in it."""
    own = _own_paths()
    parents: dict[str, str] = {}
    for mount, kind, options in _mounts():
        if kind != "cgroup":
            continue
        for controller in V1_CONTROLLERS:
            if controller in options and controller in own:
                directory = os.path.join(mount, own[controller].lstrip("/"))
                if os.access(directory, os.W_OK) and os.path.isdir(directory):
                    parents[controller] = directory
    return parents


@dataclass
class Cgroup:
    """One command's cgroup(s): ``procs`` are joined by the command's first process before
    it starts the command (or written into by the parent while it is held)."""

    version: int
    directories: list[str] = field(default_factory=list)
    procs: list[str] = field(default_factory=list)
    enforces: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, limits: Limits, configured: str = "") -> Cgroup | None:
        """A fresh cgroup with ``limits`` written, or ``None`` where none can be made."""
        # The command sees this name (its cgroup namespace starts at the service's cgroup):
        # nothing in it says anything about the host.
        name = f"aether-sandbox-{secrets.token_hex(8)}"
        parent = v2_parent(configured)
        if parent is not None:
            group = cls(2)
            try:
                group._make_v2(os.path.join(parent, name), limits)
            except OSError:
                group.remove()
                return None
            return group
        parents = v1_parents()
        if "pids" not in parents:
            return None
        group = cls(1)
        try:
            for controller, directory in parents.items():
                group._make_v1(controller, os.path.join(directory, name), limits)
        except OSError:
            group.remove()
            return None
        return group

    def _make_v2(self, directory: str, limits: Limits) -> None:
        os.mkdir(directory)
        self.directories.append(directory)
        if limits.processes is not None:
            _write(os.path.join(directory, "pids.max"), str(limits.processes))
            self.enforces.add("processes")
        if limits.memory_bytes is not None:
            _write(os.path.join(directory, "memory.max"), str(limits.memory_bytes))
            with contextlib.suppress(OSError):
                _write(os.path.join(directory, "memory.swap.max"), "0")
            self.enforces.add("memory")
        if os.path.exists(os.path.join(directory, "cpu.stat")):
            self.enforces.add("cpu")
        self.procs.append(os.path.join(directory, "cgroup.procs"))

    def _make_v1(self, controller: str, directory: str, limits: Limits) -> None:
        os.mkdir(directory)
        self.directories.append(directory)
        if controller == "pids" and limits.processes is not None:
            _write(os.path.join(directory, "pids.max"), str(limits.processes))
            self.enforces.add("processes")
        elif controller == "memory" and limits.memory_bytes is not None:
            _write(os.path.join(directory, "memory.limit_in_bytes"), str(limits.memory_bytes))
            with contextlib.suppress(OSError):
                swap = os.path.join(directory, "memory.memsw.limit_in_bytes")
                _write(swap, str(limits.memory_bytes))
            self.enforces.add("memory")
        elif controller == "cpuacct":
            self.enforces.add("cpu")
        self.procs.append(os.path.join(directory, "cgroup.procs"))

    def join(self) -> None:
        """Move the calling process in (from the child, between fork and exec)."""
        for procs in self.procs:
            handle = os.open(procs, os.O_WRONLY)
            try:
                os.write(handle, b"0")
            finally:
                os.close(handle)

    def add(self, pid: int) -> None:
        """Move process ``pid`` in (from the parent, while it is held before its command)."""
        for procs in self.procs:
            handle = os.open(procs, os.O_WRONLY)
            try:
                os.write(handle, str(pid).encode())
            finally:
                os.close(handle)

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by everything in the cgroup."""
        for directory in self.directories:
            with contextlib.suppress(OSError, ValueError):
                if self.version == 2:
                    for line in _read(os.path.join(directory, "cpu.stat")).splitlines():
                        if line.startswith("usage_usec "):
                            return int(line.split()[1]) / 1e6
                elif os.path.exists(os.path.join(directory, "cpuacct.usage")):
                    return int(_read(os.path.join(directory, "cpuacct.usage"))) / 1e9
        return None

    def out_of_memory(self) -> bool:
        """Whether the kernel killed something in the cgroup for want of memory."""
        return self.oom_kills() > 0

    def oom_kills(self) -> int:
        """How many processes the kernel killed in the cgroup for want of memory."""
        for directory in self.directories:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError, ValueError):
                    for line in _read(os.path.join(directory, name)).splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0

    def refused_forks(self) -> int:
        """How many new processes or threads the cgroup's ``pids.max`` refused."""
        for directory in self.directories:
            with contextlib.suppress(OSError, ValueError):
                for line in _read(os.path.join(directory, "pids.events")).splitlines():
                    key, _, value = line.partition(" ")
                    if key == "max":
                        return int(value)
        return 0

    def relimit(self, limits: Limits, memory_reserve: int = 0, process_reserve: int = 0) -> None:
        """Write ``limits`` anew, each raised by what a process kept in the cgroup needs."""
        for directory in self.directories:
            pids = os.path.join(directory, "pids.max")
            if os.path.exists(pids):
                count = limits.processes
                _write(pids, "max" if count is None else str(count + process_reserve))
            memory = limits.memory_bytes
            for name in ("memory.max", "memory.limit_in_bytes"):
                path = os.path.join(directory, name)
                if not os.path.exists(path):
                    continue
                value = str(memory + memory_reserve) if memory is not None else "max"
                if name == "memory.limit_in_bytes":
                    value = "-1" if memory is None else value
                    # memsw must stay at or above the memory limit: raise it first, set it after.
                    swap = os.path.join(directory, "memory.memsw.limit_in_bytes")
                    with contextlib.suppress(OSError):
                        _write(swap, "-1")
                    _write(path, value)
                    with contextlib.suppress(OSError):
                        _write(swap, value)
                else:
                    _write(path, value)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(pid) for pid in _read(procs).split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL everything still in the cgroup."""
        for directory in self.directories:
            kill_file = os.path.join(directory, "cgroup.kill")
            if self.version == 2 and os.path.exists(kill_file):
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
                    return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove_if_empty(self) -> bool:
        """Remove the cgroup now if nothing is left in it (the usual case once the
        command's processes are reaped), without waiting; whether it is gone."""
        if self.pids():
            return False
        self.remove()
        return not self.directories

    def remove(self) -> None:
        """Remove the cgroup directories (a directory still holding a process stays)."""
        for directory in reversed(self.directories):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        self.directories = [d for d in self.directories if os.path.isdir(d)]
