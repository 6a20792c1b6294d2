"""A task that names a repository role: its prompt and model reach the model, on both
runtimes; a role the worktree does not define fails the task plainly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from aether_events import AgentCompleted, AgentFailed, AgentStarted, UsageRecorded
from aether_llm import DEFAULT_TIERS, Reply, text_block, tool_use_block

from .conftest import git

REVIEWER = """---
name: reviewer
description: Reviews and fixes a change
tools: Read, Edit, Write
model: opus
---
You are a meticulous reviewer. Say REVIEWED-BY-ROLE in your summary.
"""


def with_role(task_repo: Any, ready: Any) -> Any:
    worktree = task_repo.worktree
    (worktree / ".claude" / "agents").mkdir(parents=True)
    (worktree / ".claude" / "agents" / "reviewer.md").write_text(REVIEWER)
    git(worktree, "add", ".claude")
    git(worktree, "commit", "-q", "-m", "a reviewer role")
    task = msgspec.structs.replace(ready.task, role="reviewer")
    return msgspec.structs.replace(ready, task=task, base_sha=git(worktree, "rev-parse", "HEAD"))


async def test_the_builtin_loop_takes_on_the_tasks_role(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    scripted = model(
        {"t1": [reply(tool("write_file", path="r.txt", content="ok\n")), finish("REVIEWED")]}
    )
    await start_runner(scripted)
    await publish(with_role(task_repo, workspace_ready(task_repo, mission_id)))
    done = await events.first(AgentCompleted)

    opus = DEFAULT_TIERS["complex"]
    request = scripted.script.requests[0]
    assert request["model"] == opus
    assert "You are a meticulous reviewer." in request["system"][0]["text"]
    assert events.of(AgentStarted)[0].model == opus
    assert {u.model for u in events.of(UsageRecorded)} == {opus}
    assert done.files_changed == ["r.txt"]


async def test_claude_code_takes_on_the_tasks_role_and_its_tools(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    pytest.importorskip("claude_agent_sdk")
    path = str(task_repo.worktree / "r.txt")
    scripted = model(
        {
            "t1": [
                lambda r: Reply(
                    [tool_use_block("Write", {"file_path": path, "content": "ok\n"})],
                    "tool_use",
                    50,
                    10,
                ),
                lambda r: Reply([text_block("REVIEWED")], "end_turn", 60, 5),
            ]
        }
    )
    await start_runner(scripted, runtime="claude-code")
    await publish(with_role(task_repo, workspace_ready(task_repo, mission_id)))
    done = await events.first(AgentCompleted, timeout=120)

    opus = DEFAULT_TIERS["complex"]
    request = scripted.script.requests[0]
    assert request["model"] == opus
    system = "".join(block.get("text", "") for block in request["system"])
    assert "You are a meticulous reviewer." in system
    tools = {tool["name"] for tool in request["tools"]}
    assert {"Read", "Edit", "Write"} <= tools
    assert not tools & {"Grep", "Glob", "mcp__aether__run_command", "Bash"}
    assert done.summary == "REVIEWED"


async def test_a_role_the_worktree_does_not_define_fails_the_task(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    scripted = model({"t1": []})
    await start_runner(scripted)
    ready = workspace_ready(task_repo, mission_id)
    task = msgspec.structs.replace(ready.task, role="architect")
    await publish(msgspec.structs.replace(ready, task=task))
    failed = await events.first(AgentFailed)

    assert "names role 'architect'" in failed.reason
    assert not failed.retryable
    assert scripted.script.requests == []
