"""A resumed built-in attempt tells again the usage of its journal's last replies: the
attempt's stream holds a model call's usage a moment before it is published (it may
ride in the result), so a runner killed meanwhile may have published none of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.conversation import Conversation, identity, tool_result
from aether_agent_runner.adapters.git import changed_paths
from aether_agent_runner.adapters.journal import Journal, state_dir
from aether_agent_runner.adapters.model import Progress
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes import Job
from aether_agent_runner.runtimes.builtin import RESENT_USAGE_SECONDS, BuiltinRuntime
from aether_events import Usage
from aether_llm.client import LazyClient

from .conftest import Model, TaskRepo, finish, tool, workspace_ready


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[int, Usage]] = []

    async def model_called(self, turn: int, usage: Usage) -> None:
        self.calls.append((turn, usage))

    async def progressed(self, progress: Progress, *, always: bool = False) -> None:
        pass


def write(path: str, tool_id: str) -> dict[str, Any]:
    return tool("write_file", tool_id, path=path, content=path)


async def test_a_resumed_attempt_tells_again_the_usage_of_its_last_replies(
    task_repo: TaskRepo, model: Callable[..., Model]
) -> None:
    ready = workspace_ready(task_repo, "m-resumed-usage")
    me = identity(ready.mission_id, ready.task.id, ready.attempt, ready.base_sha)
    journal = Journal(state_dir(task_repo.git_dir))
    conversation = Conversation.fresh('<task>\n{"id": "t1"}\n</task>')
    journal.start(conversation.begin_record(me))
    # Three replies, the runner killed before the last one's call ran: the first long
    # before the others, the second just before the last.
    first = 30.0 + RESENT_USAGE_SECONDS
    for turn, (at, path) in enumerate([(1.0, "a.txt"), (first, "b.txt"), (31.0, "c.txt")], 1):
        usage = Usage(input_tokens=100 * turn, output_tokens=turn)
        journal.write(conversation.reply([write(path, f"w{turn}")], "tool_use", usage, at))
        if turn < 3:
            block = tool_result(f"w{turn}", f"wrote {path}")
            journal.write(conversation.answer(block, at + 0.1, tool_call=True, changed=[path]))

    # The script answers by the number of replies so far: the fourth is the finish.
    scripted = model({"t1": [finish("three files")] * 4})
    seen = Seen()

    async def has_changes() -> bool:
        return bool(await asyncio.to_thread(changed_paths, task_repo.git_dir))

    job = Job(
        ready=ready,
        worktree=task_repo.worktree,
        git=task_repo.git_dir,
        limits=Limits(),
        journal=journal,
        identity=me,
        observer=seen,
        toolbox=ToolBox(Workspace(task_repo.worktree), CommandPolicy(allowed=())),
        has_changes=has_changes,
    )
    outcome = await BuiltinRuntime(LazyClient(scripted.llm())).run(job)

    assert outcome.finished and outcome.summary == "three files"
    assert (task_repo.worktree / "c.txt").read_text() == "c.txt"
    told = [(turn, usage.input_tokens) for turn, usage in seen.calls]
    # The second and third again (under their turns, so their event ids), then the new
    # call; the first was published long before the kill.
    assert told == [(2, 200), (3, 300), (4, 100)]
    assert outcome.usage.input_tokens == 100 + 200 + 300 + 100


def test_the_last_replies_are_those_journaled_within_the_given_seconds_of_the_last() -> None:
    conversation = Conversation.fresh("p")
    assert conversation.last_replies(5.0) == []
    for at in (1.0, 7.0, 9.0, 12.0):
        usage = Usage(input_tokens=int(at))
        conversation.reply([{"type": "text", "text": "x"}], "end_turn", usage, at)
        conversation.answer({"type": "text", "text": "go on"}, at)
    assert [(t, u.input_tokens) for t, u in conversation.last_replies(5.0)] == [(3, 9), (4, 12)]
    assert [t for t, _ in conversation.last_replies(0.0)] == [4]
    assert [t for t, _ in conversation.last_replies(60.0)] == [1, 2, 3, 4]
    # Read back from the journal's records, the same.
    records = [conversation.begin_record({"id": "x"})]
    again = Conversation.fresh("p")
    for at in (1.0, 7.0):
        records.append(again.reply([], "end_turn", Usage(input_tokens=int(at)), at))
    resumed = Conversation.from_records(
        msgspec.json.decode(msgspec.json.encode(records)), {"id": "x"}
    )
    assert resumed is not None
    assert [(t, u.input_tokens) for t, u in resumed.last_replies(5.0)] == [(2, 7)]
