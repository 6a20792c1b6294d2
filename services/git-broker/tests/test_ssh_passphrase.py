"""SSH remotes with a key that has a passphrase, and remotes that fall silent, against a
real OpenSSH server: the passphrase comes from its file through our askpass program and
is in no log, environment or command line; a wrong one is said at start and at the first
remote; a server that says nothing is given up at the remote timeout."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aether_events import BranchPushed, MissionFailed, MissionRequested, RepositoryPrepared
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.adapters.ssh import (
    PASSPHRASE_FILE,
    FixedSshVendor,
    SshAccess,
    keep_alives,
    key_problem,
)
from aether_runtime.settings import EXIT_CONFIG
from tests.sshd import SshServer

from .test_handlers import Recorder, RecordingDelivery, handlers_for, meta
from .test_ssh_remotes import access, deliver_one_task, fails_to_prepare

Git = Callable[..., str]
Commit = Callable[..., str]
PASSPHRASE = "correct horse battery staple"


def authorise(server: SshServer, key: Path, options: str = "") -> None:
    """Let ``key`` log in to ``server`` (with ``authorized_keys`` ``options``)."""
    line = key.with_suffix(".pub").read_text().strip()
    with open(server.root / "authorized_keys", "a") as keys:
        keys.write(f"{options} {line}\n" if options else f"{line}\n")


def new_key(path: Path, passphrase: str) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "broker", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def encrypted(sshd: SshServer, tmp_path: Path) -> tuple[Path, Path]:
    """A key with a passphrase the server accepts, and the file holding the passphrase."""
    key = new_key(tmp_path / "encrypted_key", PASSPHRASE)
    authorise(sshd, key)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    passphrase.chmod(0o600)
    return key, passphrase


async def test_a_key_with_a_passphrase_fetches_and_pushes_over_ssh(
    sshd: SshServer,
    upstream: Path,
    encrypted: tuple[Path, Path],
    worktrees_dir: Path,
    tmp_path: Path,
    git: Git,
    commit: Commit,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, passphrase = encrypted
    caplog.set_level(logging.DEBUG)
    ssh = access(sshd, key=str(key), passphrase_file=str(passphrase))
    assert key_problem(ssh) is None
    recorder, branch, sha = await deliver_one_task(
        sshd.url(upstream), ssh, worktrees_dir, tmp_path, commit
    )
    (pushed,) = recorder.of(BranchPushed)
    assert isinstance(pushed, BranchPushed) and pushed.sha == sha
    assert git(upstream, "rev-parse", branch) == sha
    assert PASSPHRASE not in caplog.text
    assert all(PASSPHRASE not in repr(event) for event in recorder.events)


async def test_a_wrong_passphrase_is_said_at_the_first_remote_without_waiting(
    sshd: SshServer,
    upstream: Path,
    encrypted: tuple[Path, Path],
    worktrees_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, _ = encrypted
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    caplog.set_level(logging.DEBUG)
    began = time.monotonic()
    reason = await fails_to_prepare(
        sshd.url(upstream),
        access(sshd, key=str(key), passphrase_file=str(wrong)),
        worktrees_dir,
        tmp_path,
    )
    assert time.monotonic() - began < 20  # one prompt answered, no waiting for a person
    assert f"refused the broker's key (AETHER_GIT_SSH_KEY, {key}, or the passphrase in " in (
        reason
    ), reason
    assert f"{PASSPHRASE_FILE} does not open it" in reason
    assert "not the passphrase" not in caplog.text + reason


def test_a_key_ssh_cannot_open_is_refused_at_start_saying_why(
    sshd: SshServer, encrypted: tuple[Path, Path], tmp_path: Path
) -> None:
    key, passphrase = encrypted
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    problem = key_problem(access(sshd, key=str(key), passphrase_file=str(wrong)))
    assert problem is not None
    assert f"the passphrase in {PASSPHRASE_FILE} ({wrong}) does not open" in problem
    assert "incorrect passphrase" in problem and "not the passphrase" not in problem
    missing = key_problem(access(sshd, key=str(key)))
    assert missing is not None and f"set {PASSPHRASE_FILE}" in missing
    assert key_problem(access(sshd)) is None  # a key without a passphrase needs none
    # The broker as it starts: it refuses to, with the reason on one line.
    started = subprocess.run(
        [sys.executable, "-m", "aether_git_broker"],
        env={
            "PATH": os.environ["PATH"],
            "AETHER_WORKTREES_DIR": str(tmp_path / "worktrees"),
            "AETHER_GIT_SSH_KEY": str(key),
            "AETHER_GIT_SSH_KNOWN_HOSTS": str(sshd.known_hosts),
            PASSPHRASE_FILE: str(wrong),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == EXIT_CONFIG, started.stderr
    assert f"git-broker: cannot start: the passphrase in {PASSPHRASE_FILE}" in started.stderr
    assert "not the passphrase" not in started.stderr + started.stdout
    assert passphrase.read_text() == PASSPHRASE + "\n"


def test_the_passphrase_is_in_no_environment_or_command_line_of_ssh(
    sshd: SshServer, upstream: Path, encrypted: tuple[Path, Path]
) -> None:
    """ssh caught while it serves a fetch (the server waits for what we want): what
    other processes can read of it, its environment and arguments, hold the passphrase
    file's path at most."""
    key, passphrase = encrypted
    ssh = access(sshd, key=str(key), passphrase_file=str(passphrase), timeout=30)
    vendor = FixedSshVendor(ssh)
    connection = vendor.run_command(
        "127.0.0.1",
        f"git-upload-pack '{upstream}'".encode(),
        username=sshd.user,
        port=sshd.port,
    )
    try:
        assert connection.read(4)  # authenticated: the refs are being advertised
        pid = connection.proc.pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        connection.close()
    assert PASSPHRASE.encode() not in b"\0".join(environ) + cmdline
    names = {entry.split(b"=", 1)[0] for entry in environ if entry}
    assert names == {b"PATH", b"SSH_ASKPASS", b"SSH_ASKPASS_REQUIRE", b"AETHER_ASKPASS_FILE"}
    assert f"AETHER_ASKPASS_FILE={passphrase}".encode() in environ
    assert b"BatchMode=no" in cmdline and b"NumberOfPasswordPrompts=1" in cmdline
    askpass = Path(ssh.environment()["SSH_ASKPASS"])
    assert askpass.stat().st_mode & 0o077 == 0 and askpass.parent.stat().st_mode & 0o077 == 0
    assert PASSPHRASE not in askpass.read_text()


def test_with_a_passphrase_ssh_asks_nothing_else_and_keeps_its_fixed_way() -> None:
    plain = SshAccess(key="/keys/id", known_hosts="/keys/known")
    locked = SshAccess(key="/keys/id", known_hosts="/keys/known", passphrase_file="/keys/pass")

    def options(access: SshAccess) -> set[str]:
        argv = access.argv("git.example", b"git-upload-pack 'x'", username="git", port=None)
        return {argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"}

    assert "BatchMode=yes" in options(plain) and "BatchMode=no" in options(locked)
    for fixed in (
        "NumberOfPasswordPrompts=1",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "StrictHostKeyChecking=yes",
        "IdentityAgent=none",
        "IdentitiesOnly=yes",
    ):
        assert fixed in options(locked)
    assert plain.environment() == {"PATH": os.environ.get("PATH", os.defpath)}
    assert "/keys/pass" not in str(plain.argv("h", b"c", username=None, port=None))


@pytest.mark.parametrize("timeout", [1.0, 5.0, 30.0, 300.0, 3600.0])
def test_keep_alives_give_up_about_at_the_remote_timeout(timeout: float) -> None:
    interval, count = keep_alives(timeout)
    assert 1 <= interval <= 15
    assert timeout <= interval * count < timeout + interval + 1
    argv = SshAccess(key="/k", known_hosts="/h", timeout=timeout).argv(
        "h", b"c", username=None, port=None
    )
    assert f"ServerAliveInterval={interval}" in argv and f"ServerAliveCountMax={count}" in argv


async def test_a_silent_ssh_server_is_given_up_at_the_remote_timeout_and_the_broker_goes_on(
    sshd: SshServer,
    upstream: Path,
    repo: Path,
    worktrees_dir: Path,
    tmp_path: Path,
) -> None:
    """The server authenticates the broker, then says nothing (its command reads and
    never answers, keep-alives answered all along): the fetch is cut at the timeout,
    not when the server gives up (30 s here), and the next mission is served."""
    key = new_key(tmp_path / "silent_key", "")
    authorise(sshd, key, 'command="exec timeout 30 cat >/dev/null"')
    limit = 2.0
    recorder = Recorder()
    handlers = handlers_for(
        worktrees_dir,
        recorder,
        remotes=Remotes(
            str(tmp_path / "data"), timeout=limit, ssh=access(sshd, key=str(key), timeout=limit)
        ),
    )
    began = time.monotonic()
    await asyncio.wait_for(
        handlers.handle(
            MissionRequested(
                **meta(), repository=sshd.url(upstream), requirement="r", base_branch="trunk"
            ),
            RecordingDelivery(),
        ),
        timeout=60,
    )
    elapsed = time.monotonic() - began
    (failed,) = recorder.of(MissionFailed)
    assert isinstance(failed, MissionFailed)
    assert f"[127.0.0.1]:{sshd.port} said nothing for 2 s" in failed.reason, failed.reason
    assert "AETHER_GIT_REMOTE_TIMEOUT_SECONDS" in failed.reason
    assert limit <= elapsed < limit + 10, elapsed
    # The same broker goes on with the next mission.
    await handlers.handle(
        MissionRequested(
            **{**meta(), "mission_id": "m-next", "correlation_id": "m-next"},
            repository=str(repo),
            requirement="r",
        ),
        RecordingDelivery(),
    )
    assert recorder.of(RepositoryPrepared), recorder.events
