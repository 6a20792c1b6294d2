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

The host and user reaching ``ssh`` were already checked (``sources``: a host name, no
leading ``-``); they are checked again here, and given after ``--``, so nothing in a
repository reference is ever read as an option.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
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
# An idle connection is given up after this many unanswered keep-alives, this far apart.
ALIVE_INTERVAL_SECONDS = 15
ALIVE_COUNT = 4


class SshRefused(GitProtocolError):
    """``ssh`` cannot be run for this remote as configured; the message says why."""


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
    """How the broker reaches SSH remotes: its private key, its known hosts file, the
    ports of hosts whose URLs name none, and the timeout for connecting."""

    key: str | None = None
    known_hosts: str | None = None
    ports: tuple[tuple[str, int], ...] = field(default=())
    timeout: float = 300.0

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
        args = [
            "ssh",
            "-F", "/dev/null",  # no user or system configuration: only what follows
            "-x", "-a", "-T",  # no X11 or agent forwarding, no terminal
            "-o", "BatchMode=yes",
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
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL_SECONDS}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
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


def ssh_environment() -> dict[str, str]:
    """What ``ssh`` inherits: ``PATH`` (to find nothing but itself), nothing secret."""
    return {"PATH": os.environ.get("PATH", os.defpath)}


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
            env=ssh_environment(),
            start_new_session=True,
        )
        return SubprocessWrapper(process)


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
        return (
            f"{where} refused the broker's key (AETHER_GIT_SSH_KEY, {access.key}): "
            f"{reason.strip().splitlines()[-1]}"
        )
    return reason
