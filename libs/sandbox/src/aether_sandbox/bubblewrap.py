"""The bubblewrap backend: a fresh set of namespaces per command.

Inside: the system directories (``/usr``, ``/bin``, ``/lib*``, ``/etc`` with its password
hashes and host keys masked), the Python runtime the service runs on, the directories on
``PATH`` and any operator-named path, all read-only; a fresh ``/proc`` of a new PID
namespace (so no other process, and no other process's environment, is visible); a
minimal ``/dev``; a private ``/tmp`` (a size-capped tmpfs holding ``HOME``); and the
request's ``workdir``, the only place a write reaches the host (with its ``home``, when
it asks for one, bound as ``HOME``). New user, PID, IPC, UTS
and (unless the operator chose ``host``) network namespaces; no further user namespaces
inside; a new session (no terminal injection); killed when its parent dies; the
system-call filter of ``seccomp.py`` (unless the operator turned it off); inside, before
the command starts, the Landlock ruleset of ``landlock.py``, built from the same lists as
the mounts (where the kernel has Landlock, unless the operator turned it off). The end of the
command's first process ends the PID namespace, which takes every process it left behind
with it, however it detached itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from aether_sandbox import landlock, seccomp
from aether_sandbox.base import Launch, Request, SandboxUnavailable
from aether_sandbox.settings import SandboxSettings

log = logging.getLogger("aether.sandbox")

TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Credentials that can sit in /etc of an image; a command never needs them.
MASKED_ETC = (
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "security/opasswd",
    "ssh/ssh_host_rsa_key",
    "ssh/ssh_host_ecdsa_key",
    "ssh/ssh_host_ed25519_key",
    "ssh/ssh_host_dsa_key",
)
PRIVATE_TMP = Path("/tmp")  # noqa: S108 - a fresh tmpfs inside the sandbox, not the host's
HOME = PRIVATE_TMP / "home"
HINT = (
    "bubblewrap needs unprivileged user namespaces and the right to mount a fresh /proc "
    "(in a container: a seccomp profile allowing unshare, and an unmasked /proc); see "
    "docs/security.md, or set AETHER_SANDBOX=unconfined to run commands without "
    "confinement"
)


def runtime_paths() -> list[Path]:
    """The Python installation (and virtual environment) this service runs on."""
    found: list[Path] = []
    for raw in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        path = Path(raw)
        if path.is_dir() and path not in found and path != Path("/"):
            found.append(path)
    return found


def kernel_at_least(major: int, minor: int) -> bool:
    """Whether the running kernel's release is ``major.minor`` or later."""
    try:
        found = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


def system_directories() -> list[Path]:
    """The top-level system directories (``/bin``, ``/lib``...) that are directories
    here, not links into ``/usr``: each is shown read-only."""
    found = []
    for name in TOP_LEVEL:
        host = Path("/") / name
        if not host.is_symlink() and host.is_dir():
            found.append(host)
    return found


def path_directories(path_value: str, exclude: Path) -> list[Path]:
    """Absolute directories of ``PATH`` (not ``/``, the home directory or the workdir)."""
    home = Path.home() if "HOME" in os.environ else None
    found: list[Path] = []
    for part in path_value.split(os.pathsep):
        path = Path(part)
        if not part or not path.is_absolute() or path in (Path("/"), home):
            continue
        if path == exclude or exclude in path.parents or not path.is_dir():
            continue
        if path not in found:
            found.append(path)
    return found


def _within(path: Path, shown: list[Path], real: list[Path]) -> bool:
    """Whether ``path`` lies, by name and once resolved, inside trees already shown."""

    def inside(candidate: Path, roots: list[Path]) -> bool:
        return any(candidate == root or root in candidate.parents for root in roots)

    return inside(path, shown) and inside(Path(os.path.realpath(path)), real)


def scratch_env(source: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``source`` with ``HOME``, ``TMPDIR`` and ``XDG_CACHE_HOME`` inside the private
    ``/tmp``, and the directories to make there for them."""
    env = dict(source)
    directories = []
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME"):
        value = env.get(name)
        if value is None or PRIVATE_TMP not in Path(value).parents:
            env[name] = str(HOME if name == "HOME" else PRIVATE_TMP)
        if Path(env[name]) != PRIVATE_TMP:
            directories.append(env[name])
    return env, directories


class Bubblewrap:
    name = "bubblewrap"
    confined = True

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        found = shutil.which(settings.bwrap)
        if found is None:
            raise SandboxUnavailable(
                f"bubblewrap is not installed (no {settings.bwrap!r} on PATH): install the "
                "'bubblewrap' package, or set AETHER_SANDBOX=unconfined to run commands "
                "without confinement"
            )
        self.executable = found
        self.options = _options(found)
        # The kernel's Landlock ABI each sandbox's ruleset is built for; ``None`` when
        # the layer is off, or missing and not required.
        self.landlock: int | None = None
        self.landlock_missing: str | None = None
        if settings.landlock != "off":
            abi = landlock.kernel_abi()
            self.landlock_missing = landlock.missing(abi)
            if self.landlock_missing is None:
                self.landlock = abi
            elif settings.landlock == "required":
                raise SandboxUnavailable(
                    f"{self.landlock_missing}, and AETHER_SANDBOX_LANDLOCK=required: no "
                    "command is run without the Landlock layer (set it to auto to run "
                    "them with bubblewrap and seccomp alone)"
                )
        # Commands may trace their own processes (strace, gdb) only where nothing else
        # can be reached so: a PID namespace of their own (always), the Landlock layer
        # (no process outside the command's domain), a kernel that re-checks the filter
        # after a tracer's change (4.8; Landlock's 5.19 is well past it).
        self.tracing = self.landlock is not None and kernel_at_least(4, 8)
        # The system-call filter every sandbox loads; ``None`` only when turned off.
        self.seccomp: bytes | None = None
        if settings.seccomp:
            if "--seccomp" not in self.options:
                raise SandboxUnavailable(
                    f"this bubblewrap ({found}) takes no --seccomp filter: install a newer "
                    "one, or set AETHER_SANDBOX_SECCOMP=off to run commands without one"
                )
            try:
                self.seccomp = seccomp.program(tracing=self.tracing)
            except seccomp.UnsupportedArchitecture as error:
                raise SandboxUnavailable(
                    f"{error}; commands are not run without it: set "
                    "AETHER_SANDBOX_SECCOMP=off to run them with bubblewrap alone"
                ) from None

    def launch(self, request: Request) -> Launch:
        env, directories = scratch_env(request.env)
        if request.home is not None:
            env["HOME"] = str(HOME)  # bound there from the host (``mounts``)
            directories = [d for d in directories if d != str(HOME)]
        args = [*self.namespaces(), *self.mounts(request)]
        for directory in directories:
            args += ["--dir", directory]
        args += ["--chdir", str(request.cwd), "--"]
        argv = [*args, *self.confinement(request, env, "exec"), *request.argv]
        if not {"--info-fd", "--block-fd"} <= self.options:
            return Launch(argv, env, request.cwd, seccomp=self.seccomp)

        def held(info: int, gate: int) -> list[str]:
            # bubblewrap writes the sandbox's first process to --info-fd once it is cloned,
            # and that process reads --block-fd after the mounts, before it starts anything.
            return [argv[0], "--info-fd", str(info), "--block-fd", str(gate), *argv[1:]]

        return Launch(argv, env, request.cwd, held, self.seccomp)

    def namespaces(self, *extra: str) -> list[str]:
        """bubblewrap and its namespace options (``extra`` among them)."""
        args = [
            self.executable,
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            *(["--disable-userns"] if "--disable-userns" in self.options else []),
            # A runner started as root would otherwise hand its commands every capability
            # in the sandbox's user namespace (ptrace of their neighbours included).
            "--cap-drop",
            "ALL",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            # Read (and loaded, last before the command starts) from a descriptor each
            # start provides: ``seccomp.passed``.
            *(["--seccomp", seccomp.FD_PLACEHOLDER] if self.seccomp is not None else []),
            *extra,
        ]
        if self.settings.network != "host":
            args.append("--unshare-net")
        return args

    def readable(self, request: Request) -> list[Path]:
        """The host paths ``request``'s sandbox shows read-only (where they exist) beyond
        the system directories, each at its own path."""
        return [
            *runtime_paths(),
            *path_directories(request.env.get("PATH", ""), request.workdir),
            *self.settings.read_only,
            *request.read_only,
        ]

    def writable(self, request: Request) -> list[tuple[Path, Path]]:
        """The host trees ``request``'s sandbox may write, each with where it shows."""
        shown = [(request.workdir, request.workdir)]
        if request.home is not None:
            shown.append((request.home, HOME))
        return shown

    def landlock_policy(self, request: Request) -> landlock.Policy:
        """The Landlock ruleset of ``request``'s sandbox, from the lists its mounts come
        from: what is shown read-only is read, what is bound writable (and the private
        ``/tmp``) written, ``/dev`` used; TCP only to the sandbox's own relays."""
        system = [Path("/usr"), Path("/etc"), *system_directories()]
        shown = [*(directory for directory, _ in request.shown_only)]
        shown += [target for _, target in request.shown_as]
        return landlock.Policy(
            read=tuple(dict.fromkeys([*system, Path("/proc"), *self.readable(request), *shown])),
            write=(PRIVATE_TMP, *(inside for _, inside in self.writable(request))),
            lone_loopback=self.settings.network != "host",
        )

    def confinement(self, request: Request, env: dict[str, str], mode: str) -> list[str]:
        """What starts ``request``'s program inside the sandbox, before its own argument
        vector: the Landlock layer's ``confine.py`` in ``mode`` (nothing without it)."""
        if self.landlock is None:
            return []
        return landlock.wrapper(self.landlock_policy(request), self.landlock, env, mode=mode)

    def mounts(self, request: Request) -> list[str]:
        """The file system of ``request``'s sandbox, ending with a read-only root."""
        workdir = request.workdir
        args = ["--ro-bind", "/usr", "/usr"]
        # What the sandbox shows as on the host: by name (``shown``) and by real path
        # (``real``). A readable path that is both already is, and needs no mount of its own.
        shown, real = [Path("/usr"), Path("/etc")], [Path("/usr"), Path("/etc")]
        for name in TOP_LEVEL:
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), str(host)]
                shown.append(host)
            elif host.is_dir():
                args += ["--ro-bind", str(host), str(host)]
                shown.append(host)
                real.append(host)
        args += ["--ro-bind", "/etc", "/etc"]
        for name in MASKED_ETC:
            if (Path("/etc") / name).is_file():
                args += ["--ro-bind", "/dev/null", f"/etc/{name}"]
        # The kernel's settings under /proc/sys check only that the writer's user is root
        # (not its capabilities), and bubblewrap's own cover skips them: a runner run as
        # root would otherwise let a command set kernel.core_pattern, a program the kernel
        # then starts as the host's root. Read-only, they stay readable.
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev"]
        if "--size" in self.options:
            args += ["--size", str(request.limits.tmp_bytes)]
        args += ["--tmpfs", str(PRIVATE_TMP)]
        readable = self.readable(request)
        # Outer trees first: a path inside one then needs no mount of its own.
        for path in sorted(dict.fromkeys(readable), key=lambda path: len(path.parts)):
            if path == workdir or workdir in path.parents or _within(path, shown, real):
                continue
            args += ["--ro-bind-try", str(path), str(path)]
            if os.path.realpath(path) == str(path):
                shown.append(path)
                real.append(path)
        for source, target in self.writable(request):
            args += ["--bind", str(source), str(target)]
        for path in request.protect:
            if path.is_symlink() or not path.exists():
                continue
            if path.is_dir():
                args += ["--tmpfs", str(path), "--remount-ro", str(path)]
            else:
                args += ["--ro-bind", str(path), str(path)]
        # A directory shown in part is an empty tmpfs over it (whatever shows it already)
        # with its listed entries bound in, read-only once the files shown as others are in.
        for directory, entries in request.shown_only:
            args += ["--tmpfs", str(directory)]
            for entry in entries:
                args += ["--ro-bind-try", str(directory / entry), str(directory / entry)]
        for source, target in request.shown_as:
            args += ["--ro-bind", str(source), str(target)]
        for directory, _ in request.shown_only:
            args += ["--remount-ro", str(directory)]
        # The root itself (a tmpfs holding the mount points) is read-only too: a path the
        # sandbox does not show cannot be created either.
        return [*args, "--remount-ro", "/"]

    def probe(self) -> None:
        """Start one sandbox; ``SandboxUnavailable`` (with bubblewrap's words) if it fails."""
        with tempfile.TemporaryDirectory(prefix="aether-sandbox-probe-") as directory:
            root = Path(directory)
            launch = self.launch(
                Request(["/bin/sh", "-c", "exit 0"], root, root, {"PATH": os.defpath})
            )
            try:
                with seccomp.passed(launch.argv, launch.seccomp) as (argv, fds):
                    done = subprocess.run(
                        argv,
                        env=launch.env,
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=30,
                        check=False,
                        pass_fds=fds,
                    )
            except (OSError, subprocess.TimeoutExpired) as error:
                raise SandboxUnavailable(f"bubblewrap could not start: {error}; {HINT}") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            detail = said[-1] if said else f"exit code {done.returncode}"
            raise SandboxUnavailable(f"bubblewrap cannot start a sandbox here ({detail}); {HINT}")


_known_options: dict[str, frozenset[str]] = {}


def _options(executable: str) -> frozenset[str]:
    """The options this bubblewrap knows: ``--disable-userns`` (0.8) and ``--size`` (0.7)
    are left out on older ones (Ubuntu 22.04 ships 0.6), which then allow nested user
    namespaces and leave ``/tmp`` bounded only by the memory limit."""
    if executable not in _known_options:
        try:
            shown = subprocess.run(
                [executable, "--help"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            shown = ""
        _known_options[executable] = frozenset(
            word for word in shown.split() if word.startswith("--")
        )
    return _known_options[executable]


_probed: dict[tuple[str, str, bool, str, int | None], str | None] = {}


def open_bubblewrap(settings: SandboxSettings) -> Bubblewrap:
    """A working bubblewrap backend (probed once per process), or ``SandboxUnavailable``."""
    sandbox = Bubblewrap(settings)
    key = (
        sandbox.executable,
        settings.network,
        settings.seccomp,
        settings.landlock,
        sandbox.landlock,
    )
    if key not in _probed:
        if settings.landlock == "off":
            log.warning(
                "sandboxed commands run WITHOUT the Landlock layer (AETHER_SANDBOX_LANDLOCK="
                "off): only bubblewrap's mounts and namespaces hold them to their worktree"
            )
        elif sandbox.landlock_missing is not None:
            log.warning(
                "sandboxed commands run without the Landlock layer: %s (bubblewrap's mounts "
                "and namespaces and the seccomp filter still confine them; "
                "AETHER_SANDBOX_LANDLOCK=required refuses to run them so)",
                sandbox.landlock_missing,
            )
        if not settings.seccomp:
            log.warning(
                "sandboxed commands run WITHOUT a seccomp filter (AETHER_SANDBOX_SECCOMP=off): "
                "io_uring, userfaultfd, bpf, keyctl, ptrace and every other system call "
                "are open to them"
            )
        try:
            sandbox.probe()
            _probed[key] = None
        except SandboxUnavailable as error:
            _probed[key] = str(error)
    reason = _probed[key]
    if reason is not None:
        raise SandboxUnavailable(reason)
    return sandbox
