"""The Claude Code CLI under limits of its own in the sandbox: a cgroup's memory, process
and CPU caps (never ``RLIMIT_AS``, which a JS runtime may not start under), watched; past
one, the CLI and everything it started are killed and the attempt fails naming the limit.

The CLI's own Bash tool is not offered (its programs run through ``run_command``, in
sandboxes of their own), so what tries to go past a limit here is a stand-in for the CLI:
a program the runtime starts exactly as it starts the CLI (the same script, bubblewrap,
cgroup and rlimits), which starts a child that eats memory or forks. The confinement is
of the process tree, whatever the program at its root is.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether_events import AgentCompleted, AgentFailed
from aether_llm import text_block, tool_use_block
from aether_sandbox import MIB, Limits, SandboxSettings
from aether_sandbox.cgroups import Cgroup
from aether_sandbox.program import ProgramLimits

from .test_claude_code import processes_in, turn
from .test_command_runtime import needs_sandbox
from .test_service import signal_on

if importlib.util.find_spec("claude_agent_sdk") is None:
    pytest.skip("claude_agent_sdk is not installed", allow_module_level=True)


def _cgroups_work() -> bool:
    group = Cgroup.create(Limits())
    if group is None:
        return False
    group.remove()
    return {"memory", "processes"} <= group.enforces


needs_cgroups = pytest.mark.skipif(not _cgroups_work(), reason="no cgroup can be made here")

# A stand-in for the CLI: its child eats memory or forks (each bounded, so that without
# the limits it ends by itself, failing the attempt for another reason), and it exits once
# the child has.
STAND_IN = """\
import os, sys, time
mode = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in ("memory", "processes") else "{mode}"
child = os.fork()
if child == 0:
    if mode == "memory":
        hog = []
        for _ in range(24):  # 24 x 16 MiB
            hog.append(bytearray(b"x") * (16 * 1024 * 1024))
    else:
        for _ in range(150):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
            except OSError:
                break
    os._exit(0)
os.waitpid(child, 0)
sys.exit(3)
"""


def stand_in(directory: Path, mode: str) -> Path:
    directory.mkdir()
    path = directory / "claude"
    path.write_text(f"#!{sys.executable}\n" + STAND_IN.replace("{mode}", mode))
    path.chmod(0o755)
    return path


def limits_of(pid: int) -> dict[str, str]:
    """``/proc/<pid>/limits``: the soft limit by name."""
    found = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft = line[:26].strip(), line[26:].split()[0]
        found[name] = soft
    return found


@needs_sandbox
@needs_cgroups
async def test_claude_code_runs_a_task_with_its_processes_in_a_cgroup_of_their_own(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """The real CLI works its task in the sandbox under its limits: while it waits on
    the model, it is in a cgroup of its own with the configured memory and process caps,
    with a file size limit and no address-space limit; the task then completes."""
    worktree = task_repo.worktree
    scripted = model(
        {
            "t1": [
                turn(
                    tool_use_block("Write", {"file_path": str(worktree / "x.md"), "content": "x"})
                ),
                turn(text_block("done")),
            ]
        }
    )
    gate = scripted.script.gates[("t1", 1)] = threading.Event()
    arrived = signal_on(scripted, "t1", 1)
    await start_runner(
        scripted,
        runtime="claude-code",
        claude_code_memory_mb=1536,
        claude_code_processes=300,
    )
    await publish(workspace_ready(task_repo, mission_id))
    try:
        await arrived.wait()
        cli = processes_in(worktree)
        assert cli
        for pid in cli:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            # Controller -> path; v2's one hierarchy (``""``) where v1 has no such one.
            groups = {
                controller: line.split(":", 2)[2]
                for line in lines
                for controller in line.split(":")[1].split(",")
            }
            memory = groups.get("memory", groups.get(""))
            pids = groups.get("pids", groups.get(""))
            assert "aether-sandbox-" in memory, lines
            assert "aether-sandbox-" in pids, lines
            limits = limits_of(pid)
            assert limits["Max address space"] == "unlimited"
            assert limits["Max file size"] != "unlimited"
            assert limits["Max core file size"] == "0"
    finally:
        gate.set()
    done = await events.first(AgentCompleted, timeout=120)
    assert done.files_changed == ["x.md"]


@needs_sandbox
@needs_cgroups
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("memory", "it ran out of memory (limit 128 MiB)"),
        ("processes", "it tried to run more than 40 processes and threads"),
    ],
)
async def test_a_cli_that_goes_past_its_limit_is_killed_and_the_attempt_fails_naming_it(
    mode: str,
    reason: str,
    tmp_path: Path,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """A stand-in for the CLI, started as the CLI is, whose child eats memory past the
    CLI's memory cap or forks past its process cap: everything is killed and the attempt
    fails, not to be retried, with the limit named."""
    cli = stand_in(tmp_path / "cli", mode)
    scripted = model({"t1": [turn(text_block("never asked"))]})
    await start_runner(
        scripted,
        runtime="claude-code",
        claude_code_cli=str(cli),
        claude_code_memory_mb=128,
        claude_code_processes=40,
    )
    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed, timeout=120)

    assert failed.reason == f"Claude Code was stopped: {reason}"
    assert not failed.retryable
    assert processes_in(task_repo.worktree) == []


def test_without_a_cgroup_the_cli_starts_under_rlimits_a_js_runtime_tolerates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where no cgroup can be made, the limits fall back to rlimits the CLI starts under
    (memory as RLIMIT_DATA, never RLIMIT_AS), and say so; the real CLI starts behind them."""
    from aether_agent_runner.runtimes.confined_cli import bundled_cli

    monkeypatch.setattr(Cgroup, "create", classmethod(lambda cls, limits, configured="": None))
    limits = ProgramLimits.create(Limits(memory_bytes=4096 * 1024 * 1024, processes=512))
    assert resource.RLIMIT_AS not in limits.rlimits
    assert limits.rlimits[resource.RLIMIT_DATA] == (4096 * 1024 * 1024,) * 2
    how = limits.describe()
    assert how["memory"] == "RLIMIT_DATA per process (no cgroup)"
    if os.geteuid() == 0:
        assert how["processes"] == "not enforced (root without a writable cgroup)"
    else:
        assert how["processes"] == "RLIMIT_NPROC over the runner's user (no cgroup)"
    cli = bundled_cli()
    if cli is None:
        pytest.skip("the Claude Code CLI is not installed")
    done = subprocess.run(
        [*limits.prefix(), cli, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Claude Code" in done.stdout


# A stand-in for a CLI whose own file tools fill the disk: it writes into the worktree
# (its working directory) a mebibyte at a time, far past the attempt's disk cap but under
# every other limit, then leaves a mark in its home (which the clean-up does not touch)
# and waits to be ended.
FILLER = """\
import os, sys, time
with open("fill.bin", "wb") as out:
    for _ in range(300):
        out.write(b"x" * (1 << 20)); out.flush()
        time.sleep(0.03)
open(os.path.join(os.environ["HOME"], "filler.finished"), "w").close()
time.sleep(600)
"""


@needs_sandbox
async def test_a_cli_that_writes_past_the_attempts_disk_cap_is_stopped_while_it_runs(
    tmp_path: Path,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """The attempt's disk cap holds while the CLI runs, not only once it ends: its
    process tree is stopped before it has written all it meant to, the attempt fails,
    not to be retried, naming the cap, and what it wrote is gone from the worktree."""
    directory = tmp_path / "cli"
    directory.mkdir()
    cli = directory / "claude"
    cli.write_text(f"#!{sys.executable}\n" + FILLER)
    cli.chmod(0o755)
    scripted = model({"t1": [turn(text_block("never asked"))]})
    sandbox = SandboxSettings(limits=Limits(attempt_disk_bytes=8 * MIB))
    await start_runner(scripted, runtime="claude-code", claude_code_cli=str(cli), sandbox=sandbox)
    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed, timeout=120)

    assert "went over its disk cap" in failed.reason, failed.reason
    assert "AETHER_SANDBOX_ATTEMPT_DISK_MB" in failed.reason
    assert not failed.retryable
    # Before, the CLI wrote its 300 MiB, and only its end was checked.
    assert list(tmp_path.rglob("filler.finished")) == []
    assert processes_in(task_repo.worktree) == []
    assert not (task_repo.worktree / "fill.bin").exists()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"],
        cwd=task_repo.worktree,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""
