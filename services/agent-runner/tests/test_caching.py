"""Prompt caching in the built-in loop: a scripted ten-turn task through the real SDK
against the local server's prefix-cache accounting (``aether_llm.prompt_cache``)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import anthropic

from aether_agent_runner.adapters.conversation import Conversation, identity
from aether_agent_runner.adapters.git import changed_paths
from aether_agent_runner.adapters.journal import Journal, state_dir
from aether_agent_runner.adapters.model import Agent, Breakpoints, Outcome, cache_breakpoints
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.prompt import SYSTEM, repository_map, task_prompt
from aether_events import Usage
from aether_llm import MessagesServer, PromptCache, Reply, text_block, tool_use_block
from aether_runtime import tls

from .conftest import workspace_ready

MODULES = 12


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return tool_use_block(name, arguments)


def turns() -> list[list[dict[str, Any]]]:
    """Ten replies: look around, read twelve modules at once (25 new blocks: past the
    API's 20-block look-back), then edit, check and finish."""
    return [
        [text_block("Let me look at the layout."), call("list_dir", path="src")],
        [call("read_file", path=f"src/m{i}.py") for i in range(MODULES)],
        [call("search", pattern="def value")],
        [call("read_file", path="src/app.py")],
        [call("edit_file", path="src/app.py", old_text='"Hello, "', new_text='"Hi, "')],
        [call("read_file", path="src/app.py")],
        [call("write_file", path="src/notes.txt", content="greeting changed\n")],
        [call("search", pattern="Hi, ")],
        [call("read_file", path="src/notes.txt")],
        [call("finish", summary="greeting is now Hi")],
    ]


class Seen:
    def __init__(self) -> None:
        self.usages: list[Usage] = []

    async def model_called(self, turn: int, usage: Usage) -> None:
        self.usages.append(usage)

    async def progressed(self, progress: Any) -> None:
        return None


async def run_task(
    task_repo: Any, breakpoints: Breakpoints
) -> tuple[Outcome, list[Usage], list[dict[str, Any]]]:
    for i in range(MODULES):
        body = "".join(f"def value_{i}_{n}():\n    return {n} * {i}\n\n" for n in range(30))
        (task_repo.worktree / "src" / f"m{i}.py").write_text(body)
    script = turns()

    def respond(request: dict[str, Any]) -> Reply:
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return Reply(script[turn], "tool_use", output_tokens=60)

    server = MessagesServer(respond, cache=PromptCache()).start()
    journal = Journal(state_dir(task_repo.git_dir))
    seen = Seen()

    async def has_changes() -> bool:
        return bool(await asyncio.to_thread(changed_paths, task_repo.git_dir))

    try:
        agent = Agent(
            client=anthropic.AsyncAnthropic(
                api_key="test",
                base_url=server.url,
                max_retries=0,
                http_client=anthropic.DefaultAsyncHttpxClient(verify=tls.shared()),
            ),
            model="claude-sonnet-5-5",
            system=SYSTEM,
            toolbox=ToolBox(Workspace(task_repo.worktree), None),
            limits=Limits(max_turns=10),
            journal=journal.append,
            observer=seen,
            has_changes=has_changes,
            breakpoints=breakpoints,
        )
        conversation = Conversation.fresh(
            task_prompt(
                workspace_ready(task_repo, "m"),
                repository_map(task_repo.worktree),
                Limits(max_turns=10),
            )
        )
        journal.start(conversation.begin_record(identity("m", "t1", 1, "base")))
        outcome = await agent.run(conversation)
    finally:
        server.stop()
    return outcome, seen.usages, server.requests


def total(usage: Usage) -> int:
    return usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens


def markers(request: dict[str, Any]) -> int:
    blocks = [*request.get("tools", []), *request.get("system", [])]
    for message in request["messages"]:
        if isinstance(message["content"], list):
            blocks.extend(message["content"])
    return sum(1 for block in blocks if "cache_control" in block)


async def test_a_ten_turn_task_reads_most_of_its_input_from_the_cache(task_repo: Any) -> None:
    outcome, usages, requests = await run_task(task_repo, cache_breakpoints)

    assert outcome.finished and outcome.turns == 10 and len(usages) == 10
    assert all(markers(request) <= 3 for request in requests)
    # The tenth call is the last the limits allow: it reads the ninth's entry, writes none.
    assert usages[-1].cache_creation_input_tokens == 0 and usages[-1].input_tokens > 0
    # From the second turn on, everything the previous request sent is read back,
    # the wide second turn included.
    # (A prefix under the model's minimum, 1,024 tokens here, is not cached at all.)
    for before, after in itertools.pairwise(usages):
        assert after.cache_read_input_tokens == (total(before) if total(before) >= 1024 else 0)
    read = sum(u.cache_read_input_tokens for u in usages)
    assert read / sum(total(u) for u in usages) >= 0.85


async def test_with_the_last_block_alone_a_wide_turn_is_written_again(task_repo: Any) -> None:
    def last_only(messages: list[Any], final: bool) -> list[Any]:
        marked = cache_breakpoints(messages)
        # Keep the marker on the last message only, as the loop did before.
        return [
            *(
                {**m, "content": [_unmarked(b) for b in m["content"]]}
                if isinstance(m["content"], list)
                else m
                for m in marked[:-1]
            ),
            marked[-1],
        ]

    _, usages, _ = await run_task(task_repo, last_only)

    # The third request's look-back cannot reach past the 25 blocks the second turn added.
    assert usages[2].cache_read_input_tokens < total(usages[1])
    assert usages[2].cache_creation_input_tokens > total(usages[1]) // 2


def _unmarked(block: Any) -> Any:
    return {k: v for k, v in block.items() if k != "cache_control"}


def test_breakpoints_mark_the_previous_requests_end_and_the_last_block() -> None:
    messages: list[Any] = [
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "x"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "b", "name": "x"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "b"}]},
    ]
    marked = cache_breakpoints(messages)
    flags: Callable[[Any], list[bool]] = lambda m: (  # noqa: E731
        [False] if isinstance(m["content"], str) else ["cache_control" in b for b in m["content"]]
    )
    assert [flags(m) for m in marked] == [[False], [False], [True], [False], [True]]
    assert "cache_control" not in messages[2]["content"][0]  # the conversation is unchanged
    final = cache_breakpoints(messages, final=True)
    assert [flags(m) for m in final] == [[False], [False], [True], [False], [False]]
    first = cache_breakpoints(messages[:1])
    assert first == [{"role": "user", "content": [{"type": "text", "text": "task", **_eph()}]}]
    # A reply that paused its turn is sent back as it is: its end and the request
    # before it are marked; a thinking block never is.
    paused: list[Any] = [
        *messages[:2],
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
    ]
    assert [flags(m) for m in cache_breakpoints(paused)] == [[False], [False], [True], [False]]


def _eph() -> dict[str, Any]:
    return {"cache_control": {"type": "ephemeral"}}
