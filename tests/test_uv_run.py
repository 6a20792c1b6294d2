"""The README's commands are ``uv run aether …``: what they print is Aether's alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_uv_run_adds_nothing_of_its_own_to_a_command() -> None:
    # A `compile-bytecode = true` in the project's uv settings had uv compile (check) the
    # whole environment at every run: "Bytecode compiled 8877 files in 441ms" on stderr,
    # and about 0.45 s, before every command a newcomer typed.
    command = ["uv", "run", "--locked", "aether", "--help"]
    # The first run may rebuild the workspace's own package (a source file changed since
    # the last sync) and say so; what is asked is that a run on a synced one says nothing.
    subprocess.run(command, cwd=ROOT, capture_output=True, timeout=300, check=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: aether")
    assert result.stderr == ""
