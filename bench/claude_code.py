"""How quickly a stop order ends the Claude Code runtime, and what the CLI costs a task.

Runs the Claude Code runtime (the real CLI from the claude-agent-sdk wheel) on a small git
repository against a local scripted Messages API server. For the stop: the model's second
call is held, the runtime is cancelled, and the time until no process is left in the
worktree is measured. For the cost: a two-turn task (one Write, then the answer) is timed
end to end, next to the same task on the built-in loop.

    uv run python bench/claude_code.py [--runs 5]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aether_agent_runner.adapters.conversation import identity
from aether_agent_runner.adapters.git import GitDir
from aether_agent_runner.adapters.journal import Journal, state_dir
from aether_agent_runner.adapters.model import Progress
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes import Job, Runtime
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_agent_runner.runtimes.claude_code import ClaudeCodeRuntime
from aether_events import PlannedTask, Usage, WorkspaceReady
from aether_llm import LLMSettings, MessagesServer, Reply, make_client, text_block, tool_use_block


class Quiet:
    async def model_called(self, turn: int, usage: Usage) -> None:
        return None

    async def progressed(self, progress: Progress) -> None:
        return None


def repository(root: Path) -> tuple[Path, str]:
    root.mkdir(parents=True)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
    for args in (
        ["init", "-q", "-b", "main"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "0"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()
    return root.resolve(), sha


def job(worktree: Path, sha: str) -> Job:
    ready = WorkspaceReady(
        event_id="e1",
        mission_id="m-bench",
        occurred_at=datetime.now(UTC),
        correlation_id="e0",
        task=PlannedTask(id="t1", title="Write a file"),
        attempt=1,
        model="claude-sonnet-5-5",
        branch="main",
        worktree_path=str(worktree),
        base_sha=sha,
    )

    async def changed() -> bool:
        return True

    git = GitDir.clone(worktree, "main")
    return Job(
        ready=ready,
        worktree=worktree,
        git=git,
        limits=Limits(max_turns=10, max_seconds=120),
        journal=Journal(state_dir(git)),
        identity=identity("m-bench", "t1", 1, sha),
        observer=Quiet(),
        toolbox=ToolBox(Workspace(worktree), None),
        has_changes=changed,
    )


def left_in(directory: Path) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    return True
            except OSError:
                continue
    return False


async def stop_seconds(root: Path, url: str, gate: threading.Event, arrived: Any) -> float:
    worktree, sha = repository(root)
    runtime = ClaudeCodeRuntime(base_url=url, api_key="bench")
    work = asyncio.create_task(runtime.run(job(worktree, sha)))
    await arrived.wait()
    began = time.monotonic()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    while left_in(worktree):  # noqa: ASYNC110 - polling /proc: nothing to wait on
        await asyncio.sleep(0.01)
    took = time.monotonic() - began
    gate.set()
    return took


async def task_seconds(runtime: Runtime, root: Path) -> float:
    worktree, sha = repository(root)
    began = time.monotonic()
    outcome = await runtime.run(job(worktree, sha))
    assert outcome.finished, outcome.reason
    return time.monotonic() - began


async def main(runs: int) -> None:
    state: dict[str, Any] = {"gate": threading.Event(), "arrived": None, "loop": None}

    def responder(request: dict[str, Any]) -> Reply:
        tools = {tool["name"] for tool in request.get("tools", [])}
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        cwd = next(
            (
                line.split(": ", 1)[1]
                for line in str(request).split("\\n")
                if "Primary working directory: " in line
            ),
            None,
        )
        if turn == 0:
            if "Write" in tools and cwd is not None:
                block = tool_use_block("Write", {"file_path": f"{cwd}/a.txt", "content": "a\n"})
            else:
                block = tool_use_block("write_file", {"path": "a.txt", "content": "a\n"})
            return Reply([block], "tool_use", 100, 20)
        if state["hold"]:
            state["loop"].call_soon_threadsafe(state["arrived"].set)
            state["gate"].wait(60)
        if "finish" in tools:
            return Reply([tool_use_block("finish", {"summary": "done"})], "tool_use", 100, 5)
        return Reply([text_block("done")], "end_turn", 100, 5)

    server = MessagesServer(responder).start()
    state["loop"] = asyncio.get_running_loop()
    client = make_client(LLMSettings(api_key="bench", base_url=server.url, max_retries=0))
    stops, claude, builtin = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            state["hold"] = True
            state["gate"] = threading.Event()
            state["arrived"] = asyncio.Event()
            stops.append(
                await stop_seconds(
                    Path(tmp) / f"s{run}", server.url, state["gate"], state["arrived"]
                )
            )
            state["hold"] = False
            claude.append(
                await task_seconds(
                    ClaudeCodeRuntime(base_url=server.url, api_key="bench"), Path(tmp) / f"c{run}"
                )
            )
            builtin.append(await task_seconds(BuiltinRuntime(client), Path(tmp) / f"b{run}"))
    await client.close()
    server.stop()
    print(f"runs: {runs}")
    print(f"stop order → CLI gone: median {statistics.median(stops):.3f} s, max {max(stops):.3f} s")
    c, b = statistics.median(claude), statistics.median(builtin)
    print(f"two-turn task: Claude Code {c:.2f} s, built-in loop {b:.2f} s (ratio {c / b:.1f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
