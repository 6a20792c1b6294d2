"""A stack's home in a directory whose path has a space in it (``~/My Projects``): the
default home is ``./.aether`` in the directory ``aether up`` runs in."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import psycopg
import pytest

from aether import localstack
from aether.commands import _outcome
from aether.infra import EmbeddedPostgres
from aether.stack import Stack
from aether.watch import Board
from aether_events.status import MissionProgress


def test_postgres_starts_with_its_data_in_a_directory_with_a_space(tmp_path: Path) -> None:
    data = tmp_path / "My Projects" / "postgres"
    server = EmbeddedPostgres(data).start()
    try:
        with psycopg.connect(server.url) as connection:
            assert connection.execute("select 1").fetchone() == (1,)
        # The server's own files are where they were asked for.
        assert (data / "PG_VERSION").exists()
    finally:
        server.stop()


def test_the_banner_shows_a_home_with_a_space_as_a_shell_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AETHER_HOME", raising=False)
    monkeypatch.delenv("AETHER_ADMIN_TOKEN", raising=False)
    home = tmp_path / "My Projects" / ".aether"
    stack = cast(Stack, SimpleNamespace(env={}, gateway_url="http://127.0.0.1:8100"))
    banner = localstack._banner(stack, home)
    (line,) = [line for line in banner.splitlines() if "export AETHER_HOME=" in line]
    words = shlex.split(line.split("(other shells: ", 1)[1].rstrip(")"))
    assert words == ["export", f"AETHER_HOME={home}"]


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_the_next_steps_after_a_mission_run_as_printed_in_a_repository_with_a_space(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "My Projects" / "app"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# app\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    base = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-qb", "aether/m-1")
    (repo / "hello.py").write_text("print('hello')\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "hello")
    final = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "main")
    board = Board(
        mission_id="m-1",
        progress=MissionProgress(status="completed"),
        repository=str(repo),
        base_sha=base,
        branch="aether/m-1",
        final_sha=final,
    )
    review, merge = re.findall(r"`([^`]+)`", _outcome(board))
    shown = subprocess.run(review, shell=True, check=True, capture_output=True, text=True)
    assert "hello.py" in shown.stdout
    subprocess.run(merge, shell=True, check=True, capture_output=True)
    assert (repo / "hello.py").exists()
