"""The disk cap over a whole attempt: many commands each under the per-command cap, or
many ``write_file`` calls, must not fill a file system other missions' worktrees share.

Through the real tool layer and a real bubblewrap (as ``test_sandbox.py``), and a whole
attempt of the built-in loop against the local Messages API server (as
``test_files_and_git.py``): the attempt ends, not retryable, naming the cap."""

from __future__ import annotations

import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.registry import runtimes
from aether_events import AgentFailed, EventPublisher, PlannedTask, WorkspaceReady, ensure_streams
from aether_llm import LLMSettings, MessagesServer, Reply, make_client, tool_use_block
from aether_sandbox import MIB, Limits, SandboxSettings, open_sandbox
from tests.escape.test_files_and_git import Linked, linked, meta

__all__ = ["linked"]  # the fixture, used by name

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"
)

LIMITS = Limits(
    memory_bytes=256 * MIB,
    processes=64,
    cpu_seconds=20,
    output_bytes=4 * MIB,
    disk_bytes=16 * MIB,  # each command stays under it
    files=2_000,
    tmp_bytes=32 * MIB,
    attempt_disk_bytes=40 * MIB,
    attempt_files=1_000,
)


def _writer(name: str, mib: int, pause: float = 0.0) -> str:
    code = (
        "import time\n"
        f"with open({name!r}, 'wb') as f:\n"
        f"    for _ in range({mib}):\n"
        "        f.write(b'x' * (1 << 20)); f.flush()\n"
        f"        time.sleep({pause})\n"
        "print('WROTE')\n"
    )
    return f"python -c {shlex.quote(code)}"


def _said(content: str) -> str:
    """What a command's result says after the command echoed at its top."""
    return content[content.index("\n[") :]


def _toolbox(worktree: Path, limits: Limits = LIMITS, since_ns: int | None = None) -> ToolBox:
    return ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=60, output_chars=8000, check_paths=False),
        sandbox=open_sandbox(SandboxSettings(limits=limits)),
        limits=limits,
        disk_since_ns=since_ns,
    )


@needs_bwrap
async def test_an_attempt_resumed_after_its_runner_died_counts_what_it_wrote_before(
    tmp_path: Path,
) -> None:
    from aether_agent_runner.adapters.journal import first_start

    state = tmp_path / "state"
    state.mkdir()
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    (worktree / "checked-out.bin").write_bytes(b"c" * 30 * MIB)  # the broker's, before
    assert first_start(state) is None  # its first start: nothing before it to count
    first = _toolbox(worktree)
    try:  # 3 x 12 MiB: under the attempt's 40
        for n in range(3):
            result = await first.call(
                "run_command", {"command": _writer(f"before-{n}.bin", 12), "timeout_seconds": 60}
            )
            assert not result.is_error, result.content
    finally:
        first.close()  # the runner dies; another resumes the attempt
    since = first_start(state)
    assert since is not None and since == first_start(state)
    second = _toolbox(worktree, since_ns=since)
    try:
        result = await second.call(
            "run_command", {"command": _writer("after.bin", 8), "timeout_seconds": 60}
        )
    finally:
        second.close()
    # Before: the resumed attempt counted from zero and went on to 44 MiB and beyond.
    assert result.is_error and "during this attempt" in result.content, result.content[-400:]
    assert second.over_disk is not None


@needs_bwrap
async def test_many_commands_each_under_the_command_cap_end_at_the_attempt_cap(
    tmp_path: Path,
) -> None:
    tools = _toolbox(tmp_path)
    try:
        results = []
        for n in range(8):  # 8 x 12 MiB: each under 16, together past 40
            result = await tools.call(
                "run_command", {"command": _writer(f"part-{n}.bin", 12), "timeout_seconds": 60}
            )
            results.append(result)
            if result.is_error:
                break
    finally:
        tools.close()
    assert all("WROTE" in _said(r.content) for r in results), results[-1].content
    assert len(results) == 4, [r.content[-300:] for r in results]
    assert results[-1].is_error
    assert "went over its disk cap" in results[-1].content
    assert "during this attempt" in results[-1].content
    assert tools.over_disk is not None


@needs_bwrap
async def test_the_watch_stops_a_command_that_takes_the_attempt_past_its_cap(
    tmp_path: Path,
) -> None:
    limits = Limits(
        memory_bytes=256 * MIB,
        processes=64,
        cpu_seconds=20,
        output_bytes=4 * MIB,
        disk_bytes=256 * MIB,
        files=2_000,
        tmp_bytes=32 * MIB,
        attempt_disk_bytes=24 * MIB,
    )
    tools = _toolbox(tmp_path, limits)
    try:
        first = await tools.call(
            "run_command", {"command": _writer("a.bin", 16), "timeout_seconds": 60}
        )
        assert not first.is_error, first.content
        # Under this command's own cap (256 MiB), over the attempt's (24) half-way.
        second = await tools.call(
            "run_command", {"command": _writer("b.bin", 120, 0.02), "timeout_seconds": 60}
        )
    finally:
        tools.close()
    assert "WROTE" not in _said(second.content), second.content[-500:]
    assert "stopped" in second.content and "during this attempt" in second.content
    assert (tmp_path / "b.bin").stat().st_size < 100 * MIB
    assert second.is_error


async def test_many_write_file_calls_end_the_attempt_not_retryable(
    linked: Linked, nc: NatsClient
) -> None:
    await ensure_streams(nc.jetstream())
    chunk = "z" * MIB  # under the commit's per-file cap of the test, below
    writes = [
        [tool_use_block("write_file", {"path": f"w{n}.txt", "content": chunk})] for n in range(12)
    ]
    turns = [*writes, [tool_use_block("finish", {"summary": "done"})]]
    asked: list[int] = []

    def script(request: dict[str, Any]) -> Reply:
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        asked.append(turn)
        return Reply(turns[min(turn, len(turns) - 1)], "tool_use", 10, 5)

    server = MessagesServer(script).start()
    publisher = EventPublisher(nc.jetstream())
    sandbox = SandboxSettings(limits=Limits(attempt_disk_bytes=5 * MIB))
    try:
        attempts = Attempts(
            runtimes=runtimes(
                make_client(LLMSettings(api_key="k", base_url=server.url, max_retries=0))
            ),
            settings=AgentSettings(progress_seconds=0.0, sandbox=sandbox),
            runner_id="escape",
            clock=lambda: datetime.now(UTC),
        )
        ready = WorkspaceReady(
            **meta("m-attempt-disk"),
            task=PlannedTask(id="t1", title="fill the disk"),
            attempt=1,
            model="claude-sonnet",
            branch=linked.branch,
            worktree_path=str(linked.worktree),
            base_sha=linked.base,
            git_dir=str(linked.admin),
        )
        result = await attempts.work(ready, publisher.publish)
    finally:
        server.stop()

    assert isinstance(result, AgentFailed), result
    assert result.retryable is False
    assert "went over its disk cap" in result.reason, result.reason
    assert "AETHER_SANDBOX_ATTEMPT_DISK_MB" in result.reason
    assert max(asked) < 8  # ended at the call that went over, not at the end
    assert linked.head() == linked.base  # nothing committed


def test_the_attempt_caps_are_settings_with_defaults() -> None:
    default = SandboxSettings.from_env({})
    assert default.limits.attempt_disk_bytes == 4096 * MIB
    assert default.limits.attempt_files == 100_000
    set_ = SandboxSettings.from_env(
        {"AETHER_SANDBOX_ATTEMPT_DISK_MB": "100", "AETHER_SANDBOX_ATTEMPT_FILES": "off"}
    )
    assert set_.limits.attempt_disk_bytes == 100 * MIB
    assert set_.limits.attempt_files is None
    with pytest.raises(ValueError, match="AETHER_SANDBOX_ATTEMPT_DISK_MB"):
        SandboxSettings.from_env({"AETHER_SANDBOX_ATTEMPT_DISK_MB": "lots"})


async def test_write_file_calls_hidden_by_space_freed_elsewhere_still_end_at_the_cap(
    tmp_path: Path,
) -> None:
    """The file system's counts, which spare a walk after a file tool, show what the
    whole file system lost: space freed elsewhere on it at the same time hid the file
    tools' writes, and the attempt went on past its cap. What the file tools wrote is
    now counted on its own."""
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    ballast = tmp_path / "elsewhere.bin"  # another mission's worktree, say, soon removed
    ballast.write_bytes(b"b" * 96 * MIB)
    limits = Limits(attempt_disk_bytes=5 * MIB)
    tools = ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=60, output_chars=8000, check_paths=False),
        limits=limits,
    )
    chunk = "z" * MIB
    results = []
    try:
        for n in range(12):
            result = await tools.call("write_file", {"path": f"w{n}.txt", "content": chunk})
            results.append(result)
            if n == 0:
                ballast.unlink()  # 96 MiB freed on the same file system
            if result.is_error:
                break
    finally:
        tools.close()
    assert results[-1].is_error, "the file tools wrote 12 MiB past a cap of 5"
    assert "went over its disk cap" in results[-1].content
    assert len(results) <= 7, len(results)
    assert tools.over_disk is not None
