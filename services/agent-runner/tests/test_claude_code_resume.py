"""A Claude Code attempt survives its runner: the real CLI from the claude-agent-sdk wheel,
a runner process (``python -m aether_agent_runner``) killed with SIGKILL while the CLI
waits on a model call, and a second runner that resumes the CLI's session."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aether.stack import Stack
from aether_agent_runner.adapters.journal import DIRECTORY
from aether_agent_runner.adapters.transcript import RUN_STRIDE
from aether_events import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    TranscriptRecorded,
    Usage,
    UsageRecorded,
)
from aether_llm import load_prices, text_block, tool_use_block

from .conftest import git
from .test_claude_code import processes_in, turn
from .test_processes import runners, signal_when  # noqa: F401 - the fixture is used by name

# Whether it is installed, not imported: every worker collects this module, and importing
# the SDK (0.7 s) is only for the worker that runs its tests.
if importlib.util.find_spec("claude_agent_sdk") is None:
    pytest.skip("claude_agent_sdk is not installed", allow_module_level=True)
pytestmark = pytest.mark.timeout(240)

CLAUDE_CODE = {"AETHER_AGENT_RUNTIME": "claude-code"}


def script(worktree: Path) -> list[Any]:
    app = str(worktree / "src" / "app.py")
    return [
        turn(
            tool_use_block(
                "Edit",
                {"file_path": app, "old_string": '"Hello, "', "new_string": '"Hello there, "'},
            )
        ),
        turn(tool_use_block("Write", {"file_path": str(worktree / "NOTES.md"), "content": "n\n"})),
        turn(text_block("greet now says hello there")),
        # Asked by a resumed session: its request also holds the CLI's own reply marking
        # the interrupted turn, so it counts one assistant message more.
        turn(text_block("greet now says hello there")),
    ]


def tool_use_ids(request: dict[str, Any]) -> list[str]:
    return [
        block["id"]
        for message in request["messages"]
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_use"
    ]


def tool_results(request: dict[str, Any]) -> list[str]:
    return [
        json.dumps(block.get("content"))
        for message in request["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def journal_dir(worktree: Path) -> Path:
    admin = Path(git(worktree, "rev-parse", "--git-dir"))
    return (admin if admin.is_absolute() else worktree / admin) / DIRECTORY


def sum_usage(recorded: list[UsageRecorded]) -> Usage:
    """What the gateway and the scheduler add up: every usage event's usage."""
    total = Usage(cost_usd=0.0)
    for event in recorded:
        total = total.plus(event.usage)
    return total


def session_written(worktree: Path, tool_use_id: str) -> bool:
    """Whether the CLI's session transcript on disk holds that tool call's result."""
    for path in (journal_dir(worktree) / "claude-code" / "projects").glob("*/*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            if f'"tool_use_id":"{tool_use_id}"' in line.replace(" ", ""):
                return True
    return False


async def kill_during_call(
    scripted: Any,
    runners: Callable[..., Stack],  # noqa: F811
    ready: Any,
    publish: Callable[..., Any],
) -> Stack:
    """Start a runner on ``ready`` and SIGKILL it while the CLI waits on its third call,
    once the CLI has written the second call's tool result to its transcript (it writes
    the transcript in batches: what it had not written when killed is lost to a resume)."""
    gate = scripted.script.gates[("t1", 2)] = threading.Event()
    third_call = signal_when(scripted, ("t1", 2))
    first = runners(scripted.url, **CLAUDE_CODE)
    await publish(ready)
    await asyncio.wait_for(third_call.wait(), 120)
    worktree = Path(ready.worktree_path)
    last_tool = tool_use_ids(scripted.script.requests[-1])[-1]
    async with asyncio.timeout(60):
        while not session_written(worktree, last_tool):
            await asyncio.sleep(0.05)
    await asyncio.to_thread(first.kill, "agent-runner")  # the runner and its CLI
    gate.set()  # the reply goes to a connection nobody reads any more
    return first


@pytest.mark.slow
async def test_a_claude_code_attempt_resumes_its_session_after_the_runner_is_killed(
    task_repo: Any,
    model: Callable[..., Any],
    runners: Callable[..., Stack],  # noqa: F811
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    worktree = task_repo.worktree
    scripted = model({"t1": script(worktree)})
    base = git(worktree, "rev-parse", "HEAD")
    ready = msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base)
    await kill_during_call(scripted, runners, ready, publish)
    # The CLI went with its runner (a killed process may take a moment to be gone).
    async with asyncio.timeout(10):
        while processes_in(worktree):
            await asyncio.sleep(0.05)

    second = runners(scripted.url, **CLAUDE_CODE)
    done = await events.first(AgentCompleted, timeout=120)

    # Calls 0 and 1 were answered before the kill and are not asked again; call 2 was in
    # flight (its reply never arrived) and is the one repeated, by the resumed session.
    assert [c for c in scripted.script.calls if c.startswith("t1")] == [
        "t1:0",
        "t1:1",
        "t1:2",
        "t1:3",
    ]
    killed, resumed = scripted.script.requests[2], scripted.script.requests[3]
    # The resumed request carries the earlier conversation: the same task prompt, the same
    # tool calls with the same results, the CLI's marker of the interrupted turn, then the
    # runner's word that it was restarted.
    assert text_of(resumed["messages"][0]) == text_of(killed["messages"][0])
    assert tool_use_ids(resumed) == tool_use_ids(killed) and len(tool_use_ids(killed)) == 2
    assert tool_results(resumed) == tool_results(killed)
    assistant = [m for m in resumed["messages"] if m["role"] == "assistant"]
    assert text_of(assistant[-1]) == "No response requested."
    last_user = [m for m in resumed["messages"] if m["role"] == "user"][-1]
    assert "The runner working this task was restarted" in text_of(last_user)

    assert done.summary == "greet now says hello there"
    assert set(done.files_changed) == {"src/app.py", "NOTES.md"}
    assert "Hello there, " in (worktree / "src" / "app.py").read_text()
    assert len(events.of(AgentStarted)) == 1
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert any(a.startswith("resuming Claude Code session ") for a in actions)
    # Usage: the two turns streamed before the kill (from the journal) and the resumed
    # call; the reply lost with the killed runner was never received and is not counted.
    priced = load_prices().priced(
        "claude-sonnet-5-5", Usage(input_tokens=3 * 120, output_tokens=3 * 30)
    )
    assert done.usage.input_tokens == priced.input_tokens
    assert done.usage.output_tokens == priced.output_tokens
    assert done.usage.cost_usd == pytest.approx(priced.cost_usd)
    # One usage event per received reply: the two the killed runner recorded, then the
    # resumed call, numbered on from the journal (so none is recorded twice).
    recorded = events.of(UsageRecorded)
    assert [u.step for u in recorded] == [f"agent:t1:a1:turn{n}" for n in (1, 2, 3)]
    assert len({u.event_id for u in recorded}) == 3
    assert all((u.usage.input_tokens, u.usage.output_tokens) == (120, 30) for u in recorded)
    assert sum_usage(recorded).cost_usd == pytest.approx(done.usage.cost_usd)
    log = (second.home / "logs" / "agent-runner.log").read_text()
    assert "resuming the Claude Code session" in log

    # The transcript: the killed run's entries numbered from 0, the resumed run's from
    # RUN_STRIDE; the resumed session adds only its new turns, so nothing is doubled.
    entries = sorted(events.of(TranscriptRecorded), key=lambda e: e.sequence)
    assert len({e.sequence for e in entries}) == len(entries)
    killed_run = [e for e in entries if e.sequence < RUN_STRIDE]
    resumed_run = [e for e in entries if e.sequence >= RUN_STRIDE]
    assert all(e.sequence < 2 * RUN_STRIDE for e in resumed_run)
    calls = [(e.sequence < RUN_STRIDE, e.tool) for e in entries if e.kind == "tool_call"]
    assert calls == [(True, "Edit"), (True, "Write")]
    asked = [e for e in killed_run if e.kind == "turn" and e.tool]
    assert [t.tool for t in asked] == ["Edit", "Write"]
    # Each reply's usage as streamed once the reply was whole.
    assert [(t.usage.input_tokens, t.usage.output_tokens) for t in asked if t.usage] == [
        (120, 30),
        (120, 30),
    ]
    assert not any(e.kind == "turn" and e.tool for e in resumed_run)
    assert any(e.text == "greet now says hello there" for e in resumed_run)
    assert (resumed_run[-1].kind, resumed_run[-1].tool) == ("note", "result")


@pytest.mark.slow
async def test_a_session_that_cannot_be_resumed_starts_fresh_and_says_so(
    task_repo: Any,
    model: Callable[..., Any],
    runners: Callable[..., Stack],  # noqa: F811
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    worktree = task_repo.worktree
    scripted = model({"t1": script(worktree)})
    base = git(worktree, "rev-parse", "HEAD")
    ready = msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base)
    await kill_during_call(scripted, runners, ready, publish)
    # The journal names a session the CLI has no transcript of.
    transcript = journal_dir(worktree) / "transcript.jsonl"
    records = [json.loads(line) for line in transcript.read_text().splitlines()]
    lost = str(uuid.uuid4())
    records[0]["session_id"] = lost
    transcript.write_text("".join(json.dumps(r) + "\n" for r in records))

    runners(scripted.url, **CLAUDE_CODE)
    done = await events.first(AgentCompleted, timeout=120)

    actions = [p.last_action for p in events.of(AgentProgress)]
    assert f"could not resume Claude Code session {lost}; starting a fresh session" in actions
    # The fresh session began from the base commit and worked the task from its start.
    calls = [c for c in scripted.script.calls if c.startswith("t1")]
    assert calls[:3] == ["t1:0", "t1:1", "t1:2"] and calls[-3:] == ["t1:0", "t1:1", "t1:2"]
    assert set(done.files_changed) == {"src/app.py", "NOTES.md"}
    # The first session's two answered replies were paid for and stay the task's, with
    # the fresh session's three.
    assert (done.usage.input_tokens, done.usage.output_tokens) == (5 * 120, 5 * 30)
    recorded = events.of(UsageRecorded)
    assert [u.step for u in recorded] == [f"agent:t1:a1:turn{n}" for n in range(1, 6)]
    total = sum_usage(recorded)
    assert (total.input_tokens, total.output_tokens) == (5 * 120, 5 * 30)
    assert total.cost_usd == pytest.approx(done.usage.cost_usd)
