"""Where the broker's SSH askpass program runs from: ``ssh`` runs it by its path, so it
cannot live on a file system mounted ``noexec`` (a hardened host's ``/tmp``). It is
written in the broker's data directory first, checked to run, and the temporary
directory is tried only after; where neither lets it run, the start says so.

A real ``noexec`` tmpfs is mounted for these tests (skipped where mounting is not
permitted)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether_git_broker.adapters.ssh import ASKPASS_SUBDIRECTORY, SshAccess, key_problem
from aether_git_broker.config import GitBrokerSettings

PASSPHRASE = "a passphrase of the test's"


@pytest.fixture
def noexec(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs mounted ``noexec``."""
    place = tmp_path / "noexec"
    place.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=1m", "tmpfs", str(place)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a noexec tmpfs is not permitted here: {mounted.stderr!r}")
    try:
        yield place
    finally:
        subprocess.run(["umount", "-l", str(place)], check=False)


def locked(tmp_path: Path, data: Path) -> SshAccess:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    return SshAccess(
        key=str(tmp_path / "id"),
        known_hosts=str(tmp_path / "known_hosts"),
        passphrase_file=str(passphrase),
        askpass_dir=str(data),
    )


def asked(program: str, passphrase_file: str | None) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.defpath, "AETHER_ASKPASS_FILE": passphrase_file or os.devnull}
    return subprocess.run(
        [program, "Enter passphrase for key '/keys/id': "],
        env=env,
        capture_output=True,
        check=False,
    )


def test_with_tmp_mounted_noexec_the_askpass_program_runs_from_the_data_directory(
    tmp_path: Path, noexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(noexec))
    data = tmp_path / "data"
    access = locked(tmp_path, data)
    program = access.environment()["SSH_ASKPASS"]
    assert Path(program).parent == data / ASKPASS_SUBDIRECTORY
    assert (data / ASKPASS_SUBDIRECTORY).stat().st_mode & 0o077 == 0
    answer = asked(program, access.passphrase_file)
    assert (answer.returncode, answer.stdout) == (0, (PASSPHRASE + "\n").encode())
    assert PASSPHRASE not in Path(program).read_text()
    # Nothing is left on the noexec file system by the check.
    assert list(noexec.iterdir()) == []


def test_the_broker_writes_its_askpass_program_under_its_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "broker-data"
    settings = GitBrokerSettings.from_env(
        {
            "AETHER_GIT_DATA_DIR": str(data),
            "AETHER_WORKTREES_DIR": str(tmp_path / "worktrees"),
        }
    )
    assert settings.ssh.askpass_places()[0] == str(data / ASKPASS_SUBDIRECTORY)


def test_where_no_directory_lets_it_run_the_start_says_why(
    tmp_path: Path, noexec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(noexec))
    problem = key_problem(locked(tmp_path, noexec / "data"))
    assert problem is not None
    assert "noexec" in problem and "AETHER_GIT_DATA_DIR" in problem and "TMPDIR" in problem
    assert str(noexec) in problem
