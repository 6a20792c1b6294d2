"""A stack's home in a directory whose path has a space in it (``~/My Projects``): the
default home is ``./.aether`` in the directory ``aether up`` runs in."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import psycopg
import pytest

from aether import localstack
from aether.infra import EmbeddedPostgres
from aether.stack import Stack


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
