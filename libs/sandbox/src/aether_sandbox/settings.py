"""What confines a command, read from the environment (the runner and the broker share it).

``AETHER_SANDBOX`` chooses the backend: ``bubblewrap`` (the default) or ``unconfined``,
which an operator must name explicitly and which everything then shows. The limits apply
to one command and everything it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from aether_sandbox.egress import Destination

MIB = 1024 * 1024

BACKENDS = ("bubblewrap", "unconfined")
NETWORKS = ("none", "host")
LANDLOCK_MODES = ("auto", "required", "off")


@dataclass(frozen=True)
class Limits:
    """Bounds of one command. ``None`` leaves a bound off.

    ``memory_bytes``: the cgroup's memory.max, or RLIMIT_AS without a cgroup.
    ``processes``: the cgroup's pids.max, or RLIMIT_NPROC without one.
    ``cpu_seconds``: CPU time: RLIMIT_CPU per process, and the cgroup's total when it has one.
    ``wall_seconds``: the whole sandbox is killed this long after it started.
    ``output_bytes``: the command is stopped once it has printed this much.
    ``disk_bytes``: bytes written into the writable tree (RLIMIT_FSIZE per file, plus a
    watch over what the command added); ``files``: entries it may create there.
    ``tmp_bytes``: the size of the private ``/tmp`` (a tmpfs).
    ``attempt_disk_bytes``, ``attempt_files``: the same over a whole attempt (all its
    commands and file tools together, counted from its start), so that many commands
    each under ``disk_bytes`` cannot fill a file system other worktrees share.
    """

    memory_bytes: int | None = 2048 * MIB
    processes: int | None = 256
    cpu_seconds: int | None = 600
    wall_seconds: float = 120.0
    output_bytes: int = 64 * MIB
    disk_bytes: int | None = 1024 * MIB
    files: int | None = 20_000
    tmp_bytes: int = 512 * MIB
    open_files: int = 4096
    attempt_disk_bytes: int | None = 4096 * MIB
    attempt_files: int | None = 100_000

    def with_wall(self, seconds: float) -> Limits:
        return replace(self, wall_seconds=seconds)


@dataclass(frozen=True)
class SandboxSettings:
    """``backend``: ``bubblewrap`` or ``unconfined``. ``network``: ``none`` (an empty
    network namespace) or ``host`` (the host's network, no allow-list: an explicit operator
    choice). ``read_only``: more host paths commands may read (the system directories, the
    Python runtime and the directories on ``PATH`` are always readable). ``cgroup``: a
    cgroup v2 directory with the ``pids`` and ``memory`` controllers delegated, under which
    each command gets its own cgroup (found automatically when left empty). ``warm``: an
    attempt's commands run in one kept bubblewrap, each in a fresh process tree
    (``warm.py``), rather than in a bubblewrap of their own. ``egress``: the destinations
    (``host[:port]``, ``*.domain[:port]``) commands may reach through the allow-listing
    proxy (``egress.py``); the network namespace stays empty. ``seccomp``: every
    sandbox loads the system-call filter of ``seccomp.py``; off only when an operator says
    so (``AETHER_SANDBOX_SECCOMP=off``), which the service then warns of. ``landlock``:
    ``auto`` applies the Landlock layer (``landlock.py``) where the kernel has it,
    ``required`` starts no sandbox without it, ``off`` never applies it (warned of)."""

    backend: str = "bubblewrap"
    network: str = "none"
    limits: Limits = field(default_factory=Limits)
    read_only: tuple[Path, ...] = ()
    cgroup: str = ""
    bwrap: str = "bwrap"
    warm: bool = True
    egress: tuple[str, ...] = ()
    seccomp: bool = True
    landlock: str = "auto"

    @property
    def unconfined(self) -> bool:
        return self.backend == "unconfined"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SandboxSettings:
        env = os.environ if env is None else env
        backend = env.get("AETHER_SANDBOX", "").strip().lower() or "bubblewrap"
        if backend not in BACKENDS:
            raise ValueError(
                f"AETHER_SANDBOX must be one of {', '.join(BACKENDS)}, not {backend!r}"
            )
        network = env.get("AETHER_SANDBOX_NETWORK", "").strip().lower() or "none"
        if network not in NETWORKS:
            raise ValueError(
                f"AETHER_SANDBOX_NETWORK must be one of {', '.join(NETWORKS)}, not {network!r}"
            )
        egress = tuple(
            part.strip().lower()
            for part in env.get("AETHER_SANDBOX_EGRESS", "").replace(",", " ").split()
        )
        if egress and backend == "unconfined":
            raise ValueError(
                "AETHER_SANDBOX_EGRESS confines a sandbox's network: it means nothing with "
                "AETHER_SANDBOX=unconfined, whose commands use the host's"
            )
        if egress and network == "host":
            raise ValueError(
                "AETHER_SANDBOX_EGRESS needs the sandbox's own empty network: it cannot be "
                "combined with AETHER_SANDBOX_NETWORK=host"
            )
        for entry in egress:
            Destination.parse(entry)  # ValueError naming a malformed entry
        default = Limits()

        def number(name: str, kind: type[int] | type[float]) -> int | float | None:
            """The variable's value: unset, ``none`` or ``off`` are ``None``; anything
            but a number at least 0 stops the service, naming the variable."""
            raw = env.get(name, "").strip().lower()
            if not raw or raw in ("none", "off"):
                return None
            try:
                value = kind(raw)
            except ValueError:
                value = -1
            if not value >= 0:  # also NaN
                raise ValueError(f"{name}={raw!r} is not valid: expected a number >= 0 or off")
            return value

        def mib(name: str, fallback: int | None) -> int | None:
            if not env.get(name, "").strip():
                return fallback
            value = number(name, float)
            return None if value is None else int(value * MIB)

        def count(name: str, fallback: int | None) -> int | None:
            if not env.get(name, "").strip():
                return fallback
            value = number(name, int)
            return None if value is None else int(value)

        limits = Limits(
            memory_bytes=mib("AETHER_SANDBOX_MEMORY_MB", default.memory_bytes),
            processes=count("AETHER_SANDBOX_PROCESSES", default.processes),
            cpu_seconds=count("AETHER_SANDBOX_CPU_SECONDS", default.cpu_seconds),
            output_bytes=mib("AETHER_SANDBOX_OUTPUT_MB", default.output_bytes)
            or default.output_bytes,
            disk_bytes=mib("AETHER_SANDBOX_DISK_MB", default.disk_bytes),
            files=count("AETHER_SANDBOX_FILES", default.files),
            tmp_bytes=mib("AETHER_SANDBOX_TMP_MB", default.tmp_bytes) or default.tmp_bytes,
            attempt_disk_bytes=mib("AETHER_SANDBOX_ATTEMPT_DISK_MB", default.attempt_disk_bytes),
            attempt_files=count("AETHER_SANDBOX_ATTEMPT_FILES", default.attempt_files),
        )
        read_only = tuple(
            Path(part.strip())
            for part in env.get("AETHER_SANDBOX_READ_ONLY", "").split(os.pathsep)
            if part.strip()
        )
        relative = [str(path) for path in read_only if not path.is_absolute()]
        if relative:
            raise ValueError(
                f"AETHER_SANDBOX_READ_ONLY holds paths that are not absolute: {relative}"
            )
        warm = env.get("AETHER_SANDBOX_WARM", "").strip().lower() or "on"
        if warm not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"AETHER_SANDBOX_WARM={warm!r} is not valid: expected on or off")
        seccomp = env.get("AETHER_SANDBOX_SECCOMP", "").strip().lower() or "on"
        if seccomp not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"AETHER_SANDBOX_SECCOMP={seccomp!r} is not valid: expected on or off")
        landlock = env.get("AETHER_SANDBOX_LANDLOCK", "").strip().lower() or "auto"
        if landlock not in LANDLOCK_MODES:
            raise ValueError(
                f"AETHER_SANDBOX_LANDLOCK={landlock!r} is not valid: expected "
                f"{', '.join(LANDLOCK_MODES)}"
            )
        return cls(
            backend=backend,
            network=network,
            limits=limits,
            read_only=read_only,
            cgroup=env.get("AETHER_SANDBOX_CGROUP", "").strip(),
            bwrap=env.get("AETHER_SANDBOX_BWRAP", "").strip() or "bwrap",
            egress=egress,
            warm=warm not in ("0", "false", "off", "no"),
            seccomp=seccomp not in ("0", "false", "off", "no"),
            landlock=landlock,
        )
