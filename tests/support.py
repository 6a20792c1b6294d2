"""Helpers for tests that drive the whole system: a scripted model and a mission log."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from aether_llm import Reply, text_block, tool_use_block
from aether_runtime import tls
from tests.eventlog import EventLog

if TYPE_CHECKING:
    from aether.stack import Stack

_TASK = re.compile(r"<task>(.*?)</task>", re.DOTALL)

Turn = Callable[[dict[str, Any]], Reply]


def _first_user_text(request: dict[str, Any]) -> str:
    content = request["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text")


def tool_results(request: dict[str, Any]) -> list[str]:
    """The tool results the agent sent back in its latest message."""
    last = request["messages"][-1]
    if last["role"] != "user" or isinstance(last["content"], str):
        return []
    out = []
    for block in last["content"]:
        if block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            out.append(str(content))
    return out


def write(path: str, content: str) -> Turn:
    return lambda request: Reply(
        [tool_use_block("write_file", {"path": path, "content": content})], "tool_use", 100, 20
    )


def finish(summary: str) -> Turn:
    return lambda request: Reply(
        [tool_use_block("finish", {"summary": summary})], "tool_use", 120, 10
    )


@dataclass
class ScriptedModel:
    """A Messages API responder: one plan, then per-task scripts indexed by turn."""

    plan: dict[str, Any]
    scripts: dict[str, list[Turn]]
    delays: dict[str, float] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, request: dict[str, Any]) -> Reply:
        tools = {tool["name"] for tool in request.get("tools", [])}
        if "submit_plan" in tools:
            self.calls.append("plan")
            return Reply([tool_use_block("submit_plan", self.plan)], "tool_use", 900, 300)
        found = _TASK.search(_first_user_text(request))
        assert found, "agent request without a <task> block"
        task_id = json.loads(found.group(1))["id"]
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        self.calls.append(f"{task_id}:{turn}")
        script = self.scripts[task_id]
        if turn >= len(script):
            return Reply([text_block("I am done.")], "end_turn", 10, 5)
        reply = script[turn](request)
        if turn == 0 and task_id in self.delays:
            reply.delay_seconds = self.delays[task_id]
        return reply


# The shared event log, under the name the end-to-end tests know it by.
MissionLog = EventLog


async def submit_mission(stack: Stack, repo: Path, requirement: str, **fields: Any) -> str:
    """Submit an auto-approved mission on ``repo`` through the stack's gateway (``fields``:
    more of the request's body); returns its id."""
    async with httpx.AsyncClient(
        verify=tls.shared(), base_url=stack.gateway_url, timeout=10, headers=stack.auth_headers
    ) as http:
        created = await http.post(
            "/missions",
            json={
                "repository": str(repo),
                "requirement": requirement,
                "auto_approve": True,
                **fields,
            },
        )
        assert created.status_code == 202, created.text
        mission_id: str = created.json()["mission_id"]
        return mission_id
