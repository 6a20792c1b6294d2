"""``aether demo``, the README's first command, run as a newcomer runs it: a fresh home,
no model key, embedded NATS and PostgreSQL. It must finish a whole mission, print the
result branch and its diff stat, keep the credential off the terminal, and leave no
process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from dulwich.repo import Repo

pytestmark = pytest.mark.e2e


def test_demo_runs_a_whole_mission_on_the_offline_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHER_", "ANTHROPIC_"))}
    env.pop("DATABASE_URL", None)
    env.pop("NATS_URL", None)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    home = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "aether.cli", "demo", "--home", str(home)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "plan approved" in out
    assert "result branch: " in out
    branch_line = next(line for line in out.splitlines() if line.startswith("result branch: "))
    branch, sha = branch_line.removeprefix("result branch: ").split(" @ ")
    repo = Repo(str(home / "sample-repo"))
    assert repo.refs[f"refs/heads/{branch}".encode()].decode() == sha
    # The board's credential is named by its file, never printed.
    token = (home / "stack" / "admin-token").read_text().strip()
    assert token and token not in out and token not in done.stderr
    assert str(home / "stack" / "admin-token") in out
    # The board's address is said to stop with the demo, next to it and at the end: it
    # was printed as if it stayed.
    board = next(line for line in out.splitlines() if "/board/missions/" in line)
    assert "live on the board while the demo runs, which stops it at the end: http" in board
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith("the demo's stack stops now, and its board with it; for a stack that stays up")
    )
    # Nothing the demo started outlives it.
    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(home) in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []
