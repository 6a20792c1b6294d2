"""The disk cap against a command that hides what it writes from the watch: a directory
it makes and takes its own read bit off (``chmod 300``: files can still be made in it,
but not listed), then fills. The watch walks the worktree as the runner's user, which in
production is not root (the image runs as uid 10001); as root the walk reads every
directory whatever its mode. So, run as root, the attempt runs in a child process
without the capabilities that let root read what its mode forbids
(``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``), as the runner's own user would be.

Through the real tool layer and a real bubblewrap, as ``test_sandbox.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_sandbox import MIB, Limits, SandboxSettings, open_sandbox
from tests.escape.modes import locked_tree_dir, without_root_over_modes

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"
)

LIMITS = Limits(
    memory_bytes=256 * MIB,
    processes=64,
    cpu_seconds=20,
    output_bytes=4 * MIB,
    disk_bytes=16 * MIB,
    files=2_000,
    tmp_bytes=32 * MIB,
)
# 768 MiB in 64 files of 12 MiB (each under the per-file cap), in a directory the
# runner's user may not list.
HIDDEN_FILLER = (
    "import os\n"
    "os.mkdir('hidden')\n"
    "os.chmod('hidden', 0o300)\n"
    "chunk = b'x' * (1 << 20)\n"
    "for n in range(64):\n"
    "    with open(f'hidden/fill-{n}.bin', 'wb') as f:\n"
    "        for _ in range(12):\n"
    "            f.write(chunk)\n"
    "print('FILLED')\n"
)


async def _fill(worktree: Path) -> str:
    tools = ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=60, output_chars=8000, check_paths=False),
        sandbox=open_sandbox(SandboxSettings(limits=LIMITS)),
        limits=LIMITS,
    )
    try:
        command = f"python -c {shlex.quote(HIDDEN_FILLER)}"
        result = await tools.call("run_command", {"command": command, "timeout_seconds": 60})
        # The status and what it printed, not the command echoed before them.
        return result.content[result.content.index("\n[") :]
    finally:
        tools.close()


def _as_the_runners_user(worktree: Path) -> str:
    """What the command printed, run in this process or, for root, in a child without
    the capabilities that pass over a directory's mode."""
    if os.geteuid() != 0:
        return asyncio.run(_fill(worktree))
    return str(without_root_over_modes("tests.escape.test_disk_watch", str(worktree)))


@pytest.fixture
def worktree() -> Iterator[Path]:
    with locked_tree_dir() as directory:
        yield directory


def test_a_disk_filler_in_a_directory_it_made_unreadable_is_stopped(worktree: Path) -> None:
    out = _as_the_runners_user(worktree)
    assert "FILLED" not in out, out
    assert "into the worktree" in out, out
    hidden = worktree / "hidden"
    os.chmod(hidden, 0o700)
    written = sum(path.stat().st_size for path in hidden.iterdir())
    assert written < 768 * MIB


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_fill(Path(sys.argv[1])))))
