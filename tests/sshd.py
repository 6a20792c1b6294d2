"""A real OpenSSH server on 127.0.0.1, for tests of missions on SSH remotes.

Made whole for each test session: its own host key, its own ``sshd_config`` (public keys
only, no PAM, the authorised keys in the session's directory), on a free port, logging in
only the user the tests run as (an unprivileged ``sshd`` can log in no one else). It
serves repositories as any SSH host does: the client runs ``git-upload-pack '<path>'`` or
``git-receive-pack '<path>'`` through the user's shell.

Without ``sshd`` the tests are skipped, except on CI (``CI=true``), where ``.ci/run``
installs it (Debian's ``openssh-server``) and its absence is a failure.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aether.infra import free_port

ON_CI = os.environ.get("CI", "").lower() in ("1", "true")
SEARCH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])


def sshd_program() -> str | None:
    """The ``sshd`` found (it must be started by its absolute path), if any."""
    found = shutil.which("sshd", path=SEARCH)
    return os.path.abspath(found) if found else None


def require_sshd() -> str:
    """``sshd``'s path; skips the test without it, or fails it on CI."""
    program = sshd_program()
    if program is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        reason = "OpenSSH (sshd, ssh, ssh-keygen) is not installed (Debian: openssh-server)"
        if ON_CI:
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)
    return program


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair at ``path`` (and ``path.pub``), without a passphrase."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


@dataclass
class SshServer:
    """A running ``sshd``: where it listens, the user it logs in, the key it accepts and
    a known hosts file holding its host key."""

    port: int
    user: str
    root: Path
    client_key: Path
    known_hosts: Path
    host_key: Path
    log: list[str] = field(default_factory=list)

    @property
    def host_key_line(self) -> str:
        """The known hosts line for this server."""
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}"

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PermitUserEnvironment no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
AcceptEnv GIT_PROTOCOL
LogLevel INFO
"""


@contextlib.contextmanager
def ssh_server(root: Path) -> Iterator[SshServer]:
    """``sshd`` on a free port of 127.0.0.1, its files under ``root``."""
    program = require_sshd()
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_key", "test host")
    client_key = keygen(root / "client_key", "aether broker")
    (root / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    user = getpass.getuser()
    if os.geteuid() == 0:
        # Run as root, sshd wants its privilege separation directory (made by the
        # service's start script, which these tests do not run).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    last_error = ""
    for _ in range(5):  # a free port may be taken before sshd binds it
        port = free_port()
        config = root / "sshd_config"
        config.write_text(_CONFIG.format(port=port, host_key=host_key, root=root, user=user))
        process = subprocess.Popen(
            [program, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        server = SshServer(
            port=port,
            user=user,
            root=root,
            client_key=client_key,
            known_hosts=root / "known_hosts",
            host_key=host_key,
        )
        listening = threading.Event()

        def drain(
            process: subprocess.Popen[str], server: SshServer, ready: threading.Event
        ) -> None:
            assert process.stderr is not None
            for line in process.stderr:
                server.log.append(line.rstrip())
                if "Server listening on" in line:
                    ready.set()
            ready.set()  # ended: whoever waits looks at the process

        threading.Thread(target=drain, args=(process, server, listening), daemon=True).start()
        listening.wait(timeout=30)
        if process.poll() is None and listening.is_set():
            server.known_hosts.write_text(server.host_key_line + "\n")
            try:
                yield server
            finally:
                process.terminate()
                process.wait(timeout=10)
            return
        process.kill()
        process.wait(timeout=10)
        last_error = "\n".join(server.log[-5:])
    raise RuntimeError(f"sshd did not start: {last_error}")
