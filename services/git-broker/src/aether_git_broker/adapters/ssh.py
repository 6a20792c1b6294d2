"""SSH remotes: ``ssh`` run one fixed way, with the operator's key and known hosts only.

dulwich reaches ``ssh://`` and ``user@host:path`` remotes through the ``ssh`` program.
Left to its defaults that program would read the broker user's ``~/.ssh/config`` (where a
``ProxyCommand`` or ``LocalCommand`` runs a program), offer every key an agent holds,
accept or remember host keys as that configuration says and inherit the broker's whole
environment. Here it gets none of that: ``-F /dev/null``, the one key an operator named
(``AETHER_GIT_SSH_KEY``), host keys checked strictly against the one known hosts file an
operator named (``AETHER_GIT_SSH_KNOWN_HOSTS``: an unknown or changed host key is refused,
never learnt), no agent, no forwarding, no password or keyboard prompts, and an
environment of ``PATH`` alone. Without both settings an SSH remote is refused before any
connection, with the names of the settings.

A key with a passphrase is opened by ``ssh`` itself: the passphrase stays in the
operator's file (``AETHER_GIT_SSH_KEY_PASSPHRASE_FILE``) and reaches ``ssh`` through a
pipe from a small ``SSH_ASKPASS`` program of ours (``SSH_ASKPASS_REQUIRE=force``, OpenSSH
8.4 or later), which answers only ssh's question for the key's passphrase. The broker
never reads it, no environment or command line holds it, and no decrypted key exists
outside the short-lived ``ssh`` process. ``BatchMode`` has to be off for ssh to ask at all;
every other question it could ask is turned off one by one (host keys checked strictly,
no password or keyboard prompts, one passphrase prompt).

The remote's silence is bounded: a read or write ``ssh`` has not answered for the
remote timeout kills ``ssh`` and everything it started (its own process group), as an
HTTP request silent that long fails; keep-alives are set to give up about as soon.

The host and user reaching ``ssh`` were already checked (``sources``: a host name, no
leading ``-``); they are checked again here, and given after ``--``, so nothing in a
repository reference is ever read as an option.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dulwich.client import SSHVendor, SubprocessWrapper
from dulwich.errors import GitProtocolError

# What keeps a path from reaching ssh's option parser as one path: white space splits
# it, quotes and ``%`` (ssh's own tokens) change it.
_UNSAFE_PATH = re.compile(r"[\s\"'%\\]")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?)$")
_USER = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
_SCP_LIKE = re.compile(r"^(?P<user>[^@/\s]+)@(?P<host>[^:/\s]+):")
# Keep-alives at most this far apart; as many as fill the remote timeout.
ALIVE_INTERVAL_SECONDS = 15
PASSPHRASE_FILE = "AETHER_GIT_SSH_KEY_PASSPHRASE_FILE"  # noqa: S105 - a setting's name


def keep_alives(timeout: float) -> tuple[int, int]:
    """``ServerAliveInterval`` and ``ServerAliveCountMax`` giving up on a server that
    answers none of them after about ``timeout`` seconds (at least one interval)."""
    interval = max(1, min(ALIVE_INTERVAL_SECONDS, math.ceil(timeout / 3)))
    return interval, max(1, math.ceil(timeout / interval))


class SshRefused(GitProtocolError):
    """``ssh`` cannot be run for this remote as configured; the message says why."""


class SshTimedOut(GitProtocolError):
    """The remote said nothing for the remote timeout, so ``ssh`` was stopped."""


def unsafe_path_problem(name: str, path: str) -> str | None:
    """Why ``path`` (the value of setting ``name``) cannot be handed to ``ssh``, if so."""
    if not os.path.isabs(path):
        return f"{name} must be an absolute path, not {path!r}"
    if _UNSAFE_PATH.search(path):
        return (
            f"{name} ({path!r}) holds white space, a quote, a backslash or '%', which ssh "
            "would not read as one path"
        )
    if not os.path.isfile(path):
        return f"{name} names no file: {path}"
    return None


def parse_ports(value: str) -> tuple[tuple[str, int], ...]:
    """``host=port`` pairs, separated by commas: the port of an SSH remote whose URL
    names none (``user@host:path`` cannot)."""
    pairs: list[tuple[str, int]] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, equals, port = entry.partition("=")
        host = host.strip().lower()
        if not equals or not _HOST.match(host) or host.startswith("-"):
            raise ValueError(f"{entry!r} is not host=port")
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"{entry!r} is not host=port") from None
        if not 0 < number < 65536:
            raise ValueError(f"{entry!r}: the port must be 1-65535")
        pairs.append((host, number))
    return tuple(pairs)


def is_ssh(url: str) -> bool:
    """Whether ``url`` (already read by ``sources``) is reached through ``ssh``."""
    if "://" in url:
        return url.split("://", 1)[0].lower() == "ssh"
    return not url.startswith("/") and _SCP_LIKE.match(url) is not None


def endpoint(url: str, ports: Iterable[tuple[str, int]] = ()) -> tuple[str, int]:
    """The host and port ``ssh`` connects to for ``url``."""
    if "://" in url:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    else:
        match = _SCP_LIKE.match(url)
        host, port = (match["host"] if match else ""), None
    return host, port or dict(ports).get(host.lower(), 22)


@dataclass(frozen=True)
class SshAccess:
    """How the broker reaches SSH remotes: its private key (and the file holding its
    passphrase, if it has one), its known hosts file, the ports of hosts whose URLs name
    none, and how long a remote may stay silent."""

    key: str | None = None
    known_hosts: str | None = None
    ports: tuple[tuple[str, int], ...] = field(default=())
    timeout: float = 300.0
    passphrase_file: str | None = None
    # Where our askpass program is written (the broker's data directory), before the
    # temporary directory: one of them must let programs run (not mounted ``noexec``).
    askpass_dir: str | None = None

    def problem(self) -> str | None:
        """Why no SSH remote can be used with these settings, if so."""
        missing = [
            name
            for name, value in (
                ("AETHER_GIT_SSH_KEY", self.key),
                ("AETHER_GIT_SSH_KNOWN_HOSTS", self.known_hosts),
            )
            if not value
        ]
        if missing:
            return (
                "this broker has no SSH access configured (set "
                + " and ".join(missing)
                + ": a private key, and a known hosts file holding the server's host key)"
            )
        return None

    def askpass_places(self) -> tuple[str, ...]:
        """The directories our askpass program may be written in, in order: the broker's
        own (a fixed place in it, ``ASKPASS_SUBDIRECTORY``), then the temporary
        directory (a fresh private directory in it, as anyone may write there)."""
        own = [os.path.join(self.askpass_dir, ASKPASS_SUBDIRECTORY)] if self.askpass_dir else []
        return (*own, tempfile.gettempdir())

    def port_for(self, host: str, port: int | None) -> int | None:
        if port is not None:
            return port
        return dict(self.ports).get(host.lower())

    def argv(
        self,
        host: str,
        command: bytes,
        *,
        username: str | None,
        port: int | None,
        protocol_version: int | None = None,
    ) -> list[str]:
        """The whole ``ssh`` command line for running ``command`` on ``host``."""
        problem = self.problem()
        if problem is not None:
            raise SshRefused(problem)
        if host.startswith("-") or not _HOST.match(host):
            raise SshRefused(f"{host!r} is not a host name")
        if username is not None and not _USER.match(username):
            raise SshRefused(f"{username!r} is not a user name")
        connect = max(1, math.ceil(min(self.timeout, 60.0)))
        interval, count = keep_alives(self.timeout)
        # ssh asks for a passphrase only outside batch mode; then every other question
        # is turned off below (host keys, passwords, keyboard prompts) and the one
        # passphrase prompt goes to our askpass program (``environment``).
        batch = "no" if self.passphrase_file else "yes"
        args = [
            "ssh",
            "-F", "/dev/null",  # no user or system configuration: only what follows
            "-x", "-a", "-T",  # no X11 or agent forwarding, no terminal
            "-o", f"BatchMode={batch}",
            "-o", "NumberOfPasswordPrompts=1",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "CheckHostIP=no",
            "-o", f"IdentityFile={self.key}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PubkeyAuthentication=yes",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", "HostbasedAuthentication=no",
            "-o", "GSSAPIAuthentication=no",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", "ClearAllForwardings=yes",
            "-o", "PermitLocalCommand=no",
            "-o", "ProxyCommand=none",
            "-o", "ProxyJump=none",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-o", "AddKeysToAgent=no",
            "-o", "RequestTTY=no",
            "-o", f"ConnectTimeout={connect}",
            "-o", f"ServerAliveInterval={interval}",
            "-o", f"ServerAliveCountMax={count}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if protocol_version:
            args += ["-o", f"SetEnv GIT_PROTOCOL=version={protocol_version}"]
        chosen = self.port_for(host, port)
        if chosen is not None:
            args += ["-p", str(chosen)]
        if username is not None:
            args += ["-l", username]
        return [*args, "--", host, command.decode("utf-8", "surrogateescape")]

    def environment(self) -> dict[str, str]:
        """What ``ssh`` inherits: ``PATH`` (to find nothing but itself) and, for a key with
        a passphrase, where our askpass program and the passphrase's *file* are; never
        the passphrase."""
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        if self.passphrase_file:
            env.update(
                SSH_ASKPASS=askpass_program(self.askpass_places()),
                SSH_ASKPASS_REQUIRE="force",
                AETHER_ASKPASS_FILE=self.passphrase_file,
            )
        return env


def key_problem(access: SshAccess, timeout: float = 30.0) -> str | None:
    """Why ``ssh`` cannot use the configured key (an encrypted key without its
    passphrase, a passphrase that does not open it, not a private key), if so. Checked
    once at start: ``ssh-keygen -y`` reads the passphrase from the file as its standard
    input, so it passes through no command line or environment."""
    if not access.key:
        return None
    if access.passphrase_file:
        try:
            askpass_program(access.askpass_places())
        except AskpassUnusable as error:
            return str(error)
    program = shutil.which("ssh-keygen")
    if program is None:
        return None  # ssh itself will say what is wrong, at the first remote
    source = access.passphrase_file or os.devnull
    try:
        with open(source, "rb") as stdin:
            done = subprocess.run(  # a fixed argument vector, no shell
                [program, "-y", "-f", access.key],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={"PATH": os.environ.get("PATH", os.defpath)},
                timeout=timeout,
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot check AETHER_GIT_SSH_KEY ({access.key}): {error}"
    if done.returncode == 0:
        return None
    said = done.stderr.decode("utf-8", "replace").replace("Enter passphrase:", "").strip()
    if access.passphrase_file:
        return (
            f"the passphrase in {PASSPHRASE_FILE} ({access.passphrase_file}) does not open "
            f"AETHER_GIT_SSH_KEY ({access.key}): {said}"
        )
    return (
        f"AETHER_GIT_SSH_KEY ({access.key}) cannot be read without a passphrase (set "
        f"{PASSPHRASE_FILE} to a file holding it): {said}"
    )


# The askpass program: it answers ssh's question for the key's passphrase (and nothing
# else) with the first line of the file ``AETHER_ASKPASS_FILE`` names, using only shell
# built-ins, so the passphrase is in no process's arguments. It holds nothing secret.
_ASKPASS = """#!/bin/sh
case "$1" in
  "Enter passphrase for key '"*) ;;
  *) exit 1 ;;
esac
IFS= read -r line < "$AETHER_ASKPASS_FILE" || [ -n "$line" ] || exit 1
printf '%s\n' "$line"
"""
_askpass_lock = threading.Lock()
_askpass: dict[tuple[str, ...], str] = {}


class AskpassUnusable(RuntimeError):
    """No directory our askpass program was written in lets it run; says which and why."""


def askpass_program(places: tuple[str, ...]) -> str:
    """The path of our askpass program: written once per process into a private
    directory (mode 0700) of the first of ``places`` where it then runs (``ssh`` runs it
    by its path, so a directory on a file system mounted ``noexec`` will not do), and
    removed when the process ends. ``AskpassUnusable`` when it runs in none of them."""
    with _askpass_lock:
        known = _askpass.get(places)
        if known is not None and os.path.isfile(known):
            return known
        failures: list[str] = []
        for place in places:
            try:
                path = _write_askpass(place)
            except OSError as error:
                failures.append(f"{place}: cannot write it ({error.strerror or error})")
                continue
            why = _cannot_run(path)
            if why is None:
                _askpass[places] = path
                return path
            if os.path.basename(place) != ASKPASS_SUBDIRECTORY:
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            failures.append(f"{place}: {why}")
        raise AskpassUnusable(
            f"a key with a passphrase ({PASSPHRASE_FILE}) needs the broker's askpass "
            "program, and it cannot run from any directory it was written in ("
            + "; ".join(failures)
            + "): give the broker a data directory (AETHER_GIT_DATA_DIR) or a temporary "
            "directory (TMPDIR) on a file system that lets programs run (not mounted noexec)"
        )


# The broker's own directory for its askpass program, under its data directory: the
# same file for every process (it holds nothing secret), written again at each start.
ASKPASS_SUBDIRECTORY = "ssh-askpass"


def _write_askpass(place: str) -> str:
    if os.path.basename(place) == ASKPASS_SUBDIRECTORY:
        os.makedirs(place, mode=0o700, exist_ok=True)
        os.chmod(place, 0o700)
        descriptor, written = tempfile.mkstemp(prefix=".askpass-", dir=place)
        with os.fdopen(descriptor, "w") as out:
            out.write(_ASKPASS)
        os.chmod(written, 0o700)
        path = os.path.join(place, "askpass")
        os.replace(written, path)  # whole or not at all, for a process running it now
        return path
    directory = tempfile.mkdtemp(prefix="aether-askpass-", dir=place)
    path = os.path.join(directory, "askpass")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(descriptor, "w") as out:
        out.write(_ASKPASS)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that inherited the hook
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)
    return path


def _cannot_run(path: str) -> str | None:
    """Why the program at ``path`` cannot be run, if so: it is run as ssh would run it,
    asked something other than the passphrase (which it refuses, with status 1)."""
    try:
        done = subprocess.run(  # a fixed argument vector, no shell
            [path, "a check that it runs"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", os.defpath), "AETHER_ASKPASS_FILE": os.devnull},
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        if isinstance(error, PermissionError):
            return f"it cannot be run there ({error.strerror}: mounted noexec?)"
        return f"it cannot be run there ({error})"
    if done.returncode != 1:
        return f"it ran but answered with status {done.returncode}"
    return None


class FixedSshVendor(SSHVendor):
    """dulwich's way into ``ssh``, with ``SshAccess``'s command line; whatever key or
    command dulwich would pass from a repository's configuration is ignored."""

    def __init__(self, access: SshAccess) -> None:
        self.access = access

    def run_command(
        self,
        host: str,
        command: bytes,
        username: str | None = None,
        port: int | None = None,
        password: str | None = None,
        key_filename: str | None = None,
        ssh_command: str | None = None,
        protocol_version: int | None = None,
        **_: Any,
    ) -> SubprocessWrapper:
        if password is not None:
            raise SshRefused("an SSH remote takes no password")
        argv = self.access.argv(
            host, command, username=username, port=port, protocol_version=protocol_version
        )
        program = shutil.which("ssh")
        if program is None:
            raise SshRefused("the ssh program is not installed on the broker's machine")
        process = subprocess.Popen(  # a fixed argument vector, no shell
            [program, *argv[1:]],
            bufsize=0,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.access.environment(),
            start_new_session=True,  # its own process group, killed whole at the deadline
        )
        where = host if port in (None, 22) else f"[{host}]:{port}"
        return WatchedSsh(process, self.access.timeout, where)


class WatchedSsh(SubprocessWrapper):
    """``ssh``'s pipes, with a deadline: when a read or a write has waited ``limit``
    seconds, ``ssh``'s process group is killed and the waiting call raises
    ``SshTimedOut``. Only time spent waiting on the remote counts, as with an HTTP
    request's read timeout: the broker's own work between reads does not."""

    def __init__(self, proc: subprocess.Popen[bytes], limit: float, where: str) -> None:
        super().__init__(proc)
        self.limit = limit
        self.where = where
        self.cut = False
        self._waiting_since: float | None = None
        self._closed = threading.Event()
        read, write = self.read, self.write
        self.read = self._watched(read)
        self.write = self._watched(write)
        threading.Thread(target=self._watch, name="ssh-deadline", daemon=True).start()

    def _watched(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any) -> Any:
            self._waiting_since = time.monotonic()
            try:
                result = call(*args)
            except OSError as error:  # a write into the pipe of a killed ssh
                if self.cut:
                    raise self._timed_out() from error
                raise
            finally:
                self._waiting_since = None
            if self.cut and not result:
                raise self._timed_out()
            return result

        return watched

    def _timed_out(self) -> SshTimedOut:
        return SshTimedOut(
            f"{self.where} said nothing for {self.limit:g} s "
            "(AETHER_GIT_REMOTE_TIMEOUT_SECONDS), so the connection was cut"
        )

    def _watch(self) -> None:
        while True:
            since = self._waiting_since
            remaining = self.limit if since is None else since + self.limit - time.monotonic()
            if self._closed.wait(max(0.0, remaining)) or self.proc.poll() is not None:
                return
            since = self._waiting_since
            if since is not None and time.monotonic() - since >= self.limit:
                self.cut = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return

    def close(self, timeout: int | None = 60) -> None:
        self._closed.set()
        super().close(timeout)


def explain(reason: str, url: str, access: SshAccess) -> str:
    """``ssh``'s own words about a failure, said for an operator when they are about the
    host key or the broker's key."""
    host, port = endpoint(url, access.ports)
    where = host if port == 22 else f"[{host}]:{port}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in reason or "host key for" in reason.lower():
        return (
            f"the host key {where} offered is not the one AETHER_GIT_SSH_KNOWN_HOSTS "
            f"({access.known_hosts}) holds for it: refused (if the server's key really "
            "changed, put its new key in that file)"
        )
    if "Host key verification failed" in reason or "host key is known for" in reason:
        return (
            f"the host key of {where} is not in AETHER_GIT_SSH_KNOWN_HOSTS "
            f"({access.known_hosts}): refused (add a line for {where} with the key the "
            "server's operator gives, e.g. checked against `ssh-keyscan` output)"
        )
    if "Permission denied" in reason:
        passphrase = (
            f", or the passphrase in {PASSPHRASE_FILE} does not open it"
            if access.passphrase_file
            else ""
        )
        return (
            f"{where} refused the broker's key (AETHER_GIT_SSH_KEY, {access.key}{passphrase}): "
            f"{reason.strip().splitlines()[-1]}"
        )
    return reason
