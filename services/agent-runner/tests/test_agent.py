"""The tool-use loop against a scripted model over HTTP (the anthropic SDK, streaming)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import pytest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.conversation import Conversation, identity, tool_result
from aether_agent_runner.adapters.git import changed_paths
from aether_agent_runner.adapters.journal import Journal, state_dir
from aether_agent_runner.adapters.model import Agent, Outcome, Progress
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.prompt import SYSTEM
from aether_events import Usage
from aether_llm import Reply, text_block
from aether_runtime import tls


@dataclass
class Seen:
    usages: list[tuple[int, Usage]] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)

    async def model_called(self, turn: int, usage: Usage) -> None:
        self.usages.append((turn, usage))

    async def progressed(self, progress: Progress) -> None:
        self.progress.append(progress)


# Commands the tests run find the Python they run on (its virtual environment's bin).
pytestmark = pytest.mark.usefixtures("python_on_path", "toolboxes_closed")

# The toolboxes the test made (a command's warm sandbox, a kept bubblewrap, outlives the
# test unless its toolbox is closed, as an attempt's is).
_made: list[ToolBox] = []


@pytest.fixture
def toolboxes_closed() -> Any:
    yield
    while _made:
        _made.pop().close()


def make_agent(
    task_repo: Any,
    model: Any,
    *,
    limits: Limits | None = None,
    model_id: str = "claude-sonnet-5-5",
) -> tuple[Agent, Journal, Seen]:
    journal = Journal(state_dir(task_repo.git_dir))
    seen = Seen()
    worktree = task_repo.worktree

    async def has_changes() -> bool:
        return bool(await asyncio.to_thread(changed_paths, task_repo.git_dir))

    agent = Agent(
        client=anthropic.AsyncAnthropic(
            api_key="test",
            base_url=model.url,
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=tls.shared()),
        ),
        model=model_id,
        system=SYSTEM,
        toolbox=_made_toolbox(ToolBox(Workspace(worktree), CommandPolicy(allowed=("python",)))),
        limits=limits or Limits(max_turns=10),
        journal=journal.append,
        observer=seen,
        has_changes=has_changes,
    )
    return agent, journal, seen


def _made_toolbox(toolbox: ToolBox) -> ToolBox:
    _made.append(toolbox)
    return toolbox


def start(journal: Journal, prompt: str = '<task>\n{"id": "t1"}\n</task>') -> Conversation:
    conversation = Conversation.fresh(prompt)
    journal.start(conversation.begin_record(identity("m", "t1", 1, "base")))
    return conversation


async def test_reads_edits_runs_a_command_and_finishes(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any, finish: Any
) -> None:
    scripted = model(
        {
            "t1": [
                reply(tool("read_file", path="src/app.py")),
                reply(
                    tool(
                        "edit_file",
                        path="src/app.py",
                        old_text='"Hello, "',
                        new_text='"Hello there, "',
                    )
                ),
                reply(
                    tool(
                        "run_command",
                        command="python -c 'import src.app as a; print(a.greet(\"Ada\"))'",
                    )
                ),
                finish("greet now says hello there"),
            ]
        }
    )
    agent, journal, seen = make_agent(task_repo, scripted)

    outcome = await agent.run(start(journal))

    assert outcome == Outcome(
        True,
        "greet now says hello there",
        turns=4,
        tool_calls=4,
        usage=outcome.usage,
        files_changed=["src/app.py"],
    )
    assert outcome.usage.input_tokens == 400 and outcome.usage.cost_usd is not None
    assert [turn for turn, _ in seen.usages] == [1, 2, 3, 4]
    last_request = scripted.script.requests[-1]
    assert "Hello there, Ada" in str(last_request["messages"][-1]["content"])
    assert len(journal.read()) == 1 + 4 + 3  # begin, four replies, three tool results


async def test_the_model_is_called_with_tools_system_and_a_cache_breakpoint(
    task_repo: Any, model: Callable[..., Any], finish: Any, tool: Any, reply: Any
) -> None:
    scripted = model({"t1": [reply(tool("write_file", path="x.txt", content="x")), finish()]})
    agent, journal, _ = make_agent(task_repo, scripted)
    await agent.run(start(journal))

    request = scripted.script.requests[1]
    assert {t["name"] for t in request["tools"]} == {
        "list_dir",
        "read_file",
        "search",
        "write_file",
        "edit_file",
        "delete_file",
        "run_command",
        "finish",
    }
    assert request["stream"] is True and request["model"] == "claude-sonnet-5-5"
    assert request["system"][0]["cache_control"] == {"type": "ephemeral"}
    marked = [
        block
        for m in request["messages"]
        if isinstance(m["content"], list)
        for block in m["content"]
        if "cache_control" in block
    ]
    # The end of the previous request (the opening prompt) and the last block.
    assert marked == [request["messages"][0]["content"][-1], request["messages"][-1]["content"][-1]]
    assert all(block["cache_control"] == {"type": "ephemeral"} for block in marked)
    assert not any("cache_control" in tool for tool in request["tools"])


async def test_turn_limit(task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any) -> None:
    looping = reply(tool("list_dir", path="."))
    agent, journal, _ = make_agent(
        task_repo, model({"t1": [looping] * 10}), limits=Limits(max_turns=3)
    )
    outcome = await agent.run(start(journal))
    assert not outcome.finished and not outcome.retryable
    assert outcome.reason == "turn limit reached: 3 model calls of 3 allowed"


async def test_token_limit(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any
) -> None:
    big = reply(tool("list_dir", path="."), input_tokens=30_000, output_tokens=500)
    agent, journal, _ = make_agent(
        task_repo, model({"t1": [big] * 10}), limits=Limits(max_tokens=50_000)
    )
    outcome = await agent.run(start(journal))
    assert outcome.reason == "token limit reached: 61,000 tokens of 50,000 allowed"
    assert outcome.turns == 2


async def test_cost_limit(task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any) -> None:
    # claude-sonnet-5-5: $2 per million input tokens, so 100,000 tokens cost $0.20 a call.
    pricey = reply(tool("list_dir", path="."), input_tokens=100_000, output_tokens=0)
    agent, journal, _ = make_agent(
        task_repo,
        model({"t1": [pricey] * 10}),
        limits=Limits(max_cost_usd=0.5, max_tokens=10**9),
    )
    outcome = await agent.run(start(journal))
    assert outcome.reason == "cost limit reached: $0.6000 spent of $0.5000 allowed"
    assert outcome.turns == 3


async def test_wall_time_limit_cuts_a_slow_model_call_short(
    task_repo: Any, model: Callable[..., Any]
) -> None:
    def slow(request: dict[str, Any]) -> Reply:
        return Reply([text_block("thinking…")], "end_turn", 1, 1, delay_seconds=10)

    agent, journal, _ = make_agent(task_repo, model({"t1": [slow]}), limits=Limits(max_seconds=0.5))
    began = asyncio.get_running_loop().time()
    outcome = await agent.run(start(journal))
    # The time it reports is when the cut came: on a loaded machine, a little later.
    assert re.match(r"wall-time limit reached: \d+\.\d s of 0\.5 s allowed", outcome.reason)
    assert asyncio.get_running_loop().time() - began < 5


async def test_a_model_that_stops_talking_is_nudged_once(
    task_repo: Any, model: Callable[..., Any], say: Any, finish: Any, tool: Any, reply: Any
) -> None:
    scripted = model(
        {
            "t1": [
                say("All done, I think."),
                reply(tool("write_file", path="a", content="a")),
                finish(),
            ]
        }
    )
    agent, journal, _ = make_agent(task_repo, scripted)
    assert (await agent.run(start(journal))).finished
    assert "call finish" in str(scripted.script.requests[1]["messages"][-1]["content"])

    silent = model({"t1": [say("hm")] * 5})
    agent, journal, _ = make_agent(task_repo, silent)
    outcome = await agent.run(start(journal))
    assert outcome.reason == "the model stopped without calling finish" and outcome.retryable


async def test_a_reply_cut_off_at_max_tokens_is_not_run(
    task_repo: Any, model: Callable[..., Any], tool: Any, finish: Any, reply: Any
) -> None:
    def cut(request: dict[str, Any]) -> Reply:
        return Reply([tool("write_file", path="half.txt", content="hal")], "max_tokens", 10, 8192)

    scripted = model({"t1": [cut, reply(tool("write_file", path="b.txt", content="b")), finish()]})
    agent, journal, _ = make_agent(task_repo, scripted)
    assert (await agent.run(start(journal))).finished
    assert not (task_repo.worktree / "half.txt").exists()
    assert "output limit" in str(scripted.script.requests[1]["messages"][-1]["content"])


async def test_finishing_without_a_change_is_questioned_once(
    task_repo: Any, model: Callable[..., Any], finish: Any
) -> None:
    scripted = model({"t1": [finish("nothing to do"), finish("really nothing")]})
    agent, journal, _ = make_agent(task_repo, scripted)
    outcome = await agent.run(start(journal))
    assert outcome.finished and outcome.summary == "really nothing"
    assert "No file in the repository has changed" in str(
        scripted.script.requests[1]["messages"][-1]["content"]
    )


async def test_a_finish_beside_a_call_that_failed_is_questioned_once(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any
) -> None:
    """A reply may change files and finish at once (one model call for the task), but a
    finish whose sibling call failed was made blind to that failure: it is answered with
    the failure, once; the next finish is taken as it comes."""
    at_once = model(
        {"t1": [reply(tool("write_file", path="b.txt", content="b"), tool("finish", summary="b"))]}
    )
    agent, journal, _ = make_agent(task_repo, at_once)
    outcome = await agent.run(start(journal))
    assert outcome.finished and outcome.summary == "b" and outcome.files_changed == ["b.txt"]
    assert len(at_once.script.requests) == 1

    blind = reply(
        tool("write_file", path="../outside.txt", content="x"),
        tool("edit_file", path="missing.txt", old_text="a", new_text="b"),
        tool("finish", summary="blind"),
    )
    mended = reply(
        tool("write_file", path="c.txt", content="c"),
        tool("edit_file", path="missing.txt", old_text="a", new_text="b"),
        tool("finish", summary="mended"),
    )
    scripted = model({"t1": [blind, mended]})
    agent, journal, _ = make_agent(task_repo, scripted)
    outcome = await agent.run(start(journal))

    assert outcome.finished and outcome.summary == "mended"
    assert len(scripted.script.requests) == 2
    answered = scripted.script.requests[1]["messages"][-1]["content"]
    finish_answer = answered[-1]
    assert finish_answer["is_error"] and "2 calls (write_file, edit_file)" in str(
        finish_answer["content"]
    )
    assert not (task_repo.worktree.parent / "outside.txt").exists()
    assert (task_repo.worktree / "c.txt").read_text() == "c"


@pytest.mark.parametrize("changes_first", [False, True], ids=["questioned", "changed"])
async def test_a_finishing_reply_is_journaled_and_checked_in_one_hand_off(
    task_repo: Any,
    model: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
    changes_first: bool,
) -> None:
    """With ``changes_now``, a reply that only finishes is journaled and the worktree
    checked in the same worker thread, the reply first; the check answers the finish as
    ``has_changes`` would (questioned once when nothing changed, not asked again)."""
    write = reply(tool("write_file", path="b.txt", content="b"))
    steps = (
        [write, finish("wrote b")] if changes_first else [finish("no"), write, finish("wrote b")]
    )
    scripted = model({"t1": steps})
    agent, journal, _ = make_agent(task_repo, scripted)
    asked_async = 0
    checks: list[tuple[str, bool, str]] = []

    async def has_changes() -> bool:
        nonlocal asked_async
        asked_async += 1
        return True

    def changes_now() -> bool:
        found = bool(changed_paths(task_repo.git_dir))
        last = journal.read()[-1]
        checks.append((threading.current_thread().name, found, str(last.get("kind"))))
        return found

    agent.has_changes, agent.changes_now = has_changes, changes_now
    outcome = await agent.run(start(journal))

    assert outcome.finished and outcome.summary == "wrote b"
    assert outcome.files_changed == ["b.txt"]
    assert asked_async == 0
    assert [(found, kind) for _, found, kind in checks] == [(changes_first, "reply")]
    assert checks[0][0] != threading.main_thread().name
    questions = [m for r in scripted.script.requests for m in [str(r["messages"][-1])]]
    assert any("No file in the repository has changed" in q for q in questions) != changes_first


async def test_a_reply_is_synced_while_its_tools_run_and_before_the_next_call(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any, finish: Any
) -> None:
    """With ``sync``, a reply is written at once and synced in a worker thread while its
    tools run; no model call is made, and no outcome given, before the sync of every
    reply before it has ended."""
    scripted = model({"t1": [reply(tool("write_file", path="b.txt", content="b")), finish("ok")]})
    agent, journal, _ = make_agent(task_repo, scripted)
    seen: list[tuple[int, int, bool]] = []

    def sync() -> None:
        time.sleep(0.2)  # a slow disk: what comes next happens meanwhile or waits for it
        journal.sync()
        replies = sum(1 for record in journal.read() if record["kind"] == "reply")
        written = (task_repo.worktree / "b.txt").exists()
        seen.append((replies, len(scripted.script.requests), written))

    agent.journal, agent.journal_syncs, agent.sync = journal.write, journal.syncs, sync
    outcome = await agent.run(start(journal))

    assert outcome.finished
    # Each sync covers its reply and ends before the next request is made; the first
    # reply's tool ran while it was under way.
    assert seen == [(1, 1, True), (2, 2, True)]


async def test_a_resumed_conversation_repeats_no_finished_step(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any, finish: Any
) -> None:
    import threading

    append = "python -c \"open('log.txt', 'a').write('ran\\n')\""
    scripted = model(
        {
            "t1": [
                reply(tool("run_command", command=append)),
                reply(tool("write_file", path="b.txt", content="b")),
                finish("both"),
            ]
        }
    )
    gate = scripted.script.gates[("t1", 2)] = threading.Event()
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()
    scripted.script.on_call = lambda task, turn: (
        loop.call_soon_threadsafe(arrived.set) if turn == 2 else None
    )
    agent, journal, _ = make_agent(task_repo, scripted)
    first = asyncio.create_task(agent.run(start(journal)))
    await asyncio.wait_for(arrived.wait(), 30)
    first.cancel()  # the runner dies while the third call is in flight
    with contextlib.suppress(asyncio.CancelledError):
        await first
    gate.set()

    again = Conversation.from_records(journal.read(), identity("m", "t1", 1, "base"))
    assert again is not None and again.turns == 2 and again.tool_calls == 2
    agent, journal, seen = make_agent(task_repo, scripted)
    outcome = await agent.run(again)

    assert outcome.finished and outcome.turns == 3
    assert scripted.script.calls == ["t1:0", "t1:1", "t1:2", "t1:2"]
    assert (task_repo.worktree / "log.txt").read_text() == "ran\n"
    assert seen.usages == [(3, seen.usages[0][1])]


async def test_a_reply_resumed_between_its_calls_runs_the_rest_before_asking_again(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any, finish: Any
) -> None:
    """A runner that died between two calls of one reply left the first one's result in
    the journal: the resumed loop runs the second (not the first again) and asks the
    model only once every call of the reply has its result, all in one message. What an
    interrupted write left (the file layer's temporary files) is removed first."""
    scripted = model({"t1": [reply(tool("write_file", path="never.txt", content="x")), finish()]})
    agent, journal, _ = make_agent(task_repo, scripted)
    conversation = start(journal)
    append = "python -c \"open('log.txt', 'a').write('ran\\n')\""
    both = [
        tool("run_command", "toolu_a", command=append),
        tool("write_file", "toolu_b", path="b.txt", content="b"),
    ]
    journal.append(conversation.reply(both, "tool_use", Usage(input_tokens=1), 0.0))
    journal.append(conversation.answer(tool_result("toolu_a", "ran"), 0.0, tool_call=True))

    # What a write the runner's death cut short left behind, and a file of the agent's.
    debris = [task_repo.worktree / "src" / ".app.py.0123456789ab.tmp"]
    debris.append(task_repo.worktree / ".b.txt.abcdef012345.tmp")
    for path in [*debris, task_repo.worktree / "notes.tmp"]:
        path.write_text("half")
    again = Conversation.from_records(journal.read(), identity("m", "t1", 1, "base"))
    assert again is not None and again.awaiting_answers
    outcome = await agent.run(again)

    assert not any(path.exists() for path in debris)
    assert (task_repo.worktree / "notes.tmp").exists()
    assert outcome.finished and outcome.tool_calls == 3
    assert scripted.script.calls == ["t1:1"]
    answered = scripted.script.requests[0]["messages"][-1]["content"]
    assert [block["tool_use_id"] for block in answered] == ["toolu_a", "toolu_b"]
    assert (task_repo.worktree / "b.txt").read_text() == "b"
    assert not (task_repo.worktree / "log.txt").exists()
    assert not (task_repo.worktree / "never.txt").exists()

    # A call that failed before the restart still stands against a finish beside it.
    scripted = model({"t1": [finish("unused"), finish("after all")]})
    agent, journal, _ = make_agent(task_repo, scripted)
    conversation = start(journal)
    blind = [
        tool("write_file", "toolu_c", path="../outside.txt", content="x"),
        tool("finish", "toolu_d", summary="blind"),
    ]
    journal.append(conversation.reply(blind, "tool_use", Usage(input_tokens=1), 0.0))
    refused = tool_result("toolu_c", "outside the worktree", is_error=True)
    journal.append(conversation.answer(refused, 0.0, tool_call=True))
    again = Conversation.from_records(journal.read(), identity("m", "t1", 1, "base"))
    assert again is not None
    outcome = await agent.run(again)
    assert outcome.finished and outcome.summary == "after all"
    assert "1 call (write_file)" in str(scripted.script.requests[0]["messages"][-1]["content"])


class Died(BaseException):
    """The runner's death, right after a journal record reached the disk."""


def calls_and_results_pair_up(request: dict[str, Any]) -> bool:
    """Whether every call of every reply in ``request`` has its result in the message
    right after it, as the Messages API requires."""
    messages = request["messages"]
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        calls = {b["id"] for b in message["content"] if b.get("type") == "tool_use"}
        if not calls:
            continue
        if i + 1 == len(messages) or not isinstance(messages[i + 1]["content"], list):
            return False
        results = messages[i + 1]["content"]
        answered = {b["tool_use_id"] for b in results if b.get("type") == "tool_result"}
        if answered != calls:
            return False
    return True


@pytest.mark.parametrize("dies_after", range(1, 9))
async def test_an_attempt_killed_after_any_record_resumes_to_the_same_end(
    task_repo: Any, model: Callable[..., Any], tool: Any, reply: Any, dies_after: int
) -> None:
    """Three replies of two calls each (the last with finish), the runner killed right
    after each of the eight records the loop journals in turn: the resumed loop ends as
    an uninterrupted one does, with no model call made twice, no call with a recorded
    result run again, and every request one the Messages API takes."""
    append = "python -c \"open('log.txt', 'a').write('ran\\n')\""
    scripted = model(
        {
            "t1": [
                reply(
                    tool("write_file", path="a.txt", content="a"),
                    tool("write_file", path="b.txt", content="b"),
                ),
                reply(
                    tool("run_command", command=append),
                    tool("edit_file", path="a.txt", old_text="a", new_text="A"),
                ),
                reply(tool("write_file", path="c.txt", content="c"), tool("finish", summary="abc")),
            ]
        }
    )
    agent, journal, _ = make_agent(task_repo, scripted)
    written = 0

    def append_then_die(record: dict[str, Any]) -> None:
        nonlocal written
        journal.append(record)
        written += 1
        if written == dies_after:
            raise Died

    agent.journal = append_then_die
    with pytest.raises(Died):
        await agent.run(start(journal))

    again = Conversation.from_records(journal.read(), identity("m", "t1", 1, "base"))
    assert again is not None
    agent, journal, _ = make_agent(task_repo, scripted)
    outcome = await agent.run(again)

    assert outcome.finished and outcome.summary == "abc" and outcome.tool_calls == 6
    assert scripted.script.calls == ["t1:0", "t1:1", "t1:2"]
    assert all(calls_and_results_pair_up(request) for request in scripted.script.requests)
    worktree = task_repo.worktree
    assert [(worktree / f).read_text() for f in ("a.txt", "b.txt", "c.txt")] == ["A", "b", "c"]
    assert (worktree / "log.txt").read_text() == "ran\n"
    results = [
        r["block"] for r in journal.read() if r.get("kind") == "answer" and r.get("tool_call")
    ]
    assert len(results) == 5 and not any(block.get("is_error") for block in results)


def test_progress_after_a_model_reply_names_the_tools_and_files_it_asks_for():
    from aether_agent_runner.adapters.model import reply_action

    content = [
        {"type": "text", "text": "I will write it."},
        {"type": "tool_use", "id": "1", "name": "write_file", "input": {"path": "src/a.py"}},
        {"type": "tool_use", "id": "2", "name": "run", "input": {"command": "pytest -q"}},
    ]
    assert reply_action(content, "tool_use") == "model asks: write_file src/a.py, run pytest -q"
    assert reply_action([{"type": "text", "text": "done"}], "end_turn") == "model reply (end_turn)"
