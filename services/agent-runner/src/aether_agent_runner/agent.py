"""The agent's tool-use loop over one task, through the anthropic SDK (streaming)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
from anthropic.types import (
    MessageParam,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
)

from aether_agent_runner.workspace import ToolError, Workspace
from aether_events import Usage, WorkspaceReady
from aether_llm import add_usage, usage_of

log = logging.getLogger("aether.agent")

TOOLS: list[ToolParam] = [
    {
        "name": "list_dir",
        "description": "List a directory of the repository (relative path, '.' for the root).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "read_file",
        "description": "Read a file of the repository (relative path).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "write_file",
        "description": "Create or overwrite a file with the given content (relative path).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "finish",
        "description": "Finish the task with a short summary of what was changed and why.",
        "input_schema": {
            "type": "object",
            "properties": {"summary": {"type": "string"}},
            "required": ["summary"],
        },
    },
]

SYSTEM_PROMPT = """\
You are a coding agent of Aether. You work one task of a larger mission inside a git \
worktree of the repository; other agents work the other tasks in parallel. Change only \
what the task needs, preferably only the files it lists. Use the tools to look at the \
repository and to write files; paths are relative to the repository root. When the task \
is done, call finish with a short summary. Your changes are committed and merged for you.
"""

SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
]


@dataclass
class Outcome:
    finished: bool
    summary: str
    reason: str = ""
    turns: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass
class Limits:
    max_turns: int = 40
    max_tokens_per_turn: int = 8192


def task_prompt(ready: WorkspaceReady) -> str:
    task = ready.task
    spec = json.dumps(
        {
            "id": task.id,
            "title": task.title,
            "description": task.description,
            "files": task.files,
            "acceptance_criteria": task.acceptance_criteria,
        },
        indent=2,
    )
    parts = [
        f"<mission>\n{ready.requirement}\n</mission>",
        f"<task>\n{spec}\n</task>",
    ]
    if ready.context:
        parts.append(f"<context>\n{ready.context}\n</context>")
    return "\n\n".join(parts)


async def run_agent(
    client: anthropic.AsyncAnthropic,
    ready: WorkspaceReady,
    workspace: Workspace,
    on_call: Callable[[int, Usage], Awaitable[None]],
    limits: Limits | None = None,
) -> Outcome:
    """Drive the model through tool calls until it finishes or a limit is hit.

    ``on_call(turn, usage)`` is awaited after every model call (usage events, progress).
    """
    limits = limits or Limits()
    messages: list[MessageParam] = [{"role": "user", "content": task_prompt(ready)}]
    total = Usage(cost_usd=0.0)
    tool_calls = 0
    for turn in range(1, limits.max_turns + 1):
        async with client.messages.stream(
            model=ready.model,
            max_tokens=limits.max_tokens_per_turn,
            system=SYSTEM,
            tools=TOOLS,
            messages=messages,
        ) as stream:
            message = await stream.get_final_message()
        usage = usage_of(ready.model, message.usage)
        total = add_usage(total, usage)
        await on_call(turn, usage)
        messages.append({"role": "assistant", "content": message.content})
        uses = [b for b in message.content if isinstance(b, ToolUseBlock)]
        if not uses:
            return Outcome(
                False, "", "the model stopped without calling finish", turn, tool_calls, total
            )
        results: list[ToolResultBlockParam] = []
        for use in uses:
            tool_calls += 1
            if use.name == "finish":
                summary = str(_arguments(use).get("summary", "")).strip()
                return Outcome(True, summary, "", turn, tool_calls, total)
            results.append(_call_tool(workspace, use))
        messages.append({"role": "user", "content": results})
    return Outcome(
        False,
        "",
        f"turn limit reached ({limits.max_turns} turns)",
        limits.max_turns,
        tool_calls,
        total,
    )


def _arguments(use: ToolUseBlock) -> dict[str, Any]:
    return use.input if isinstance(use.input, dict) else {}


def _call_tool(workspace: Workspace, use: ToolUseBlock) -> ToolResultBlockParam:
    args = _arguments(use)
    try:
        if use.name == "list_dir":
            output = workspace.list_dir(str(args.get("path", ".")))
        elif use.name == "read_file":
            output = workspace.read_file(str(args.get("path", "")))
        elif use.name == "write_file":
            output = workspace.write_file(str(args.get("path", "")), args.get("content", ""))
        else:
            raise ToolError(f"unknown tool {use.name!r}")
    except ToolError as error:
        log.info("tool refused", extra={"tool": use.name, "error": str(error)})
        return {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": str(error),
            "is_error": True,
        }
    except OSError as error:
        return {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": f"{error}",
            "is_error": True,
        }
    return {"type": "tool_result", "tool_use_id": use.id, "content": output}
