"""Runs a test's scenario where root's power over file modes does not reach: a file
mode the agent set must hold against the runner's (or service's) own user, which is not
root in production. Root (this machine's tests) runs it in a child without the
capabilities that pass over a directory's mode."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aether_sandbox.trees import remove_tree


def without_root_over_modes(module: str, argument: str) -> Any:
    """What ``python -m module argument`` printed last (one JSON line), run with
    ``setpriv`` dropping ``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH``."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    done = subprocess.run(
        [
            setpriv,
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-m",
            module,
            argument,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@contextlib.contextmanager
def locked_tree_dir() -> Iterator[Path]:
    """A directory outside pytest's temporary root (a child without root's power over
    modes must reach it), removed afterwards whatever modes the scenario left in it."""
    parent = Path.home() / ".cache" / "aether-escape-tests"
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield directory
    finally:
        remove_tree(directory)
