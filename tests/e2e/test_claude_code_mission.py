"""A mission whose tasks are worked by two runtimes: the built-in loop for its small task
and the real Claude Code CLI (from the claude-agent-sdk wheel) for the other, every
service its own process, against the scripted Messages API server."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from dulwich.objects import Commit
from dulwich.repo import Repo

from aether.stack import Stack
from aether_events import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    MissionCompleted,
    PlanProduced,
    TaskReady,
    Usage,
    UsageRecorded,
    WorkspaceReady,
    decode,
    type_subjects,
)
from aether_events.usage import total
from aether_llm import DEFAULT_TIERS, Reply, Responder, load_prices, text_block, tool_use_block
from aether_runtime import tls
from tests.e2e.test_mission_flow import tree_files
from tests.support import MissionLog, ScriptedModel, finish, write

# Whether it is installed, not imported: every worker collects this module, and importing
# the SDK (0.7 s) is only for the worker that runs its tests.
if importlib.util.find_spec("claude_agent_sdk") is None:
    pytest.skip("claude_agent_sdk is not installed", allow_module_level=True)
pytestmark = pytest.mark.e2e

PLAN = {
    "rationale": "two independent files",
    "tasks": [
        {
            "id": "a",
            "title": "Write alpha",
            "description": "alpha",
            "files": ["a.txt"],
            "depends_on": [],
            "tier": "small",
        },
        {
            "id": "b",
            "title": "Write beta",
            "description": "beta",
            "files": ["b.txt"],
            "depends_on": [],
            "tier": "standard",
            "role": "writer",
        },
    ],
}
WRITER = """---
name: writer
description: Writes short text files
model: haiku
---
You are the writer. Keep every file under ten lines.
"""
_CWD = re.compile(r"Primary working directory: (\S+)")


CLAUDE_REQUESTS: list[dict[str, Any]] = []


def claude_write(request: dict[str, Any]) -> Reply:
    CLAUDE_REQUESTS.append(request)
    # Claude Code's file tools take absolute paths: the worktree is in its request.
    found = _CWD.search(json.dumps(request))
    assert found, "no working directory in Claude Code's request"
    path = str(Path(found.group(1).replace("\\n", "")) / "b.txt")
    block = tool_use_block("Write", {"file_path": path, "content": "beta\n"})
    return Reply([block], "tool_use", 300, 40, cache_creation_input_tokens=200)


def claude_done(request: dict[str, Any]) -> Reply:
    return Reply([text_block("wrote b")], "end_turn", 320, 10, cache_read_input_tokens=200)


@pytest.fixture
def claude_model() -> ScriptedModel:
    CLAUDE_REQUESTS.clear()
    return ScriptedModel(
        plan=PLAN,
        scripts={
            "a": [write("a.txt", "alpha\n"), finish("wrote a")],
            "b": [claude_write, claude_done],
        },
    )


@pytest.fixture
def claude_stack(
    running: Stack, answer_with: Callable[[Responder], None], claude_model: ScriptedModel
) -> Stack:
    """The package's stack (the runtime is the mission's choice), its model answering
    with this test's plan and scripts: a stack of its own was most of the test's time."""
    answer_with(claude_model)
    return running


async def telemetry(nc: Any, mission_id: str) -> list[Any]:
    js = nc.jetstream()
    # Progress names its attempt (``aether_events.subjects``): any task, any attempt.
    subscription = await js.subscribe(
        type_subjects(AgentProgress, mission_id)[1], ordered_consumer=True
    )
    found = []
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return found
            found.append(decode(message.data))
    finally:
        await subscription.unsubscribe()


async def test_a_mission_worked_by_claude_code_and_the_builtin_loop_merges_both(
    claude_stack: Stack, repo: Path, claude_model: ScriptedModel
) -> None:
    (repo / ".claude" / "agents").mkdir(parents=True)
    (repo / ".claude" / "agents" / "writer.md").write_text(WRITER)
    for command in (["add", ".claude"], ["commit", "-qm", "a writer role"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=repo, check=True
        )
    async with httpx.AsyncClient(
        verify=tls.shared(),
        base_url=claude_stack.gateway_url,
        timeout=10,
        headers=claude_stack.auth_headers,
    ) as http:
        created = await http.post(
            "/missions",
            json={
                "repository": str(repo),
                "requirement": "alpha and beta",
                "auto_approve": True,
                "runtime": "claude-code",
                "runtime_overrides": {"small": "builtin"},
            },
        )
        assert created.status_code == 202, created.text
    mission_id = created.json()["mission_id"]
    nc = await nats.connect(claude_stack.nats_url)
    log = await MissionLog(nc, mission_id).start()
    try:
        await log.completion(timeout=180)
        progress = await telemetry(nc, mission_id)
    finally:
        await log.stop()
        await nc.close()

    assert log.of_type(PlanProduced)
    runtimes = {e.task.id: e.runtime for e in log.of_type(WorkspaceReady)}
    assert runtimes == {"a": "builtin", "b": "claude-code"}
    assert {e.task.id: e.runtime for e in log.of_type(TaskReady)} == runtimes
    completed = log.of_type(MissionCompleted)[0]
    files = tree_files(repo, completed.final_sha)
    assert files["a.txt"] == b"alpha\n" and files["b.txt"] == b"beta\n"

    # The CLI's requests reached the server; its commit carries the trailers.
    script = claude_model
    assert [c for c in script.calls if c.startswith("b:")] == ["b:0", "b:1"]
    done = next(e for e in log.of_type(AgentCompleted) if e.task_id == "b")
    assert done.summary == "wrote b" and done.files_changed == ["b.txt"]
    with Repo(str(repo)) as r:
        commit = r[done.commit_sha.encode()]
        assert isinstance(commit, Commit)
        message = commit.message.decode()
    for trailer in (f"Aether-Mission: {mission_id}", "Aether-Task: b", "Aether-Attempt: 1"):
        assert trailer in message

    # Usage and cost are the server's counts, priced by the price table.
    counts = Usage(
        input_tokens=620,
        output_tokens=50,
        cache_creation_input_tokens=200,
        cache_read_input_tokens=200,
    )
    # Task b took on the repository's writer role: its prompt and model reached the CLI.
    haiku = DEFAULT_TIERS["small"]
    assert next(e.model for e in log.of_type(AgentStarted) if e.task_id == "b") == haiku
    assert next(t.role for t in log.of_type(PlanProduced)[0].tasks if t.id == "b") == "writer"
    first = CLAUDE_REQUESTS[0]
    assert first["model"] == haiku
    assert "You are the writer." in "".join(b.get("text", "") for b in first["system"])
    expected = load_prices().priced(haiku, counts)
    recorded = [u for u in log.of_type(UsageRecorded) if u.task_id == "b"]
    # One record per model call (two here), together the server's counts and price.
    assert len(recorded) == 2
    summed = total([u.usage for u in recorded])
    for field in (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ):
        assert getattr(summed, field) == getattr(expected, field) == getattr(done.usage, field)
    assert summed.cost_usd == pytest.approx(expected.cost_usd)
    assert done.usage.cost_usd == pytest.approx(expected.cost_usd)
    assert f"Aether-Cost-USD: {expected.cost_usd:.6f}" in message

    # Progress names the CLI's tool calls.
    actions = [p.last_action for p in progress if isinstance(p, AgentProgress)]
    assert "Write b.txt" in actions
