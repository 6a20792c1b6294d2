"""The Claude Code runtime: the real CLI from the claude-agent-sdk wheel, against the
scripted Messages API server, worked by an in-process runner on real NATS."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentProgress,
    AgentStarted,
    MissionCancelled,
    TranscriptRecorded,
    Usage,
    UsageRecorded,
)
from aether_llm import Reply, load_prices, text_block, tool_use_block

from .conftest import git
from .test_command_runtime import needs_sandbox
from .test_service import control_meta, git_log, signal_on, task_repo_head

# Whether it is installed, not imported: every worker collects this module, and importing
# the SDK (0.7 s) is only for the worker that runs its tests.
if importlib.util.find_spec("claude_agent_sdk") is None:
    pytest.skip("claude_agent_sdk is not installed", allow_module_level=True)

RUN_COMMAND = "mcp__aether__run_command"


def turn(*blocks: dict[str, Any], cache_write: int = 0, cache_read: int = 0) -> Any:
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return lambda request: Reply(
        list(blocks),
        stop,
        input_tokens=120,
        output_tokens=30,
        cache_creation_input_tokens=cache_write,
        cache_read_input_tokens=cache_read,
    )


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results of the request's latest user message (the CLI may follow it with
    system messages of its own)."""
    last = [m for m in request["messages"] if m["role"] == "user"][-1]
    if isinstance(last["content"], str):
        return []
    return [block for block in last["content"] if block.get("type") == "tool_result"]


async def worked_by_claude_code(
    scripted: Any,
    task_repo: Any,
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> AgentCompleted:
    """Task t1 worked by the Claude Code runtime against ``scripted``, from the worktree's
    head: its AgentCompleted."""
    await start_runner(scripted, runtime="claude-code")
    base = git(task_repo.worktree, "rev-parse", "HEAD")
    await publish(msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base))
    done: AgentCompleted = await events.first(AgentCompleted, timeout=120)
    return done


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` (the CLI runs in the worktree)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == directory:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_claude_code_edits_runs_a_command_through_aether_and_the_commit_lands(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aether.agent-runner.claude-code")
    worktree = task_repo.worktree
    (worktree / "CLAUDE.md").write_text("Always keep greetings polite.\n")
    git(worktree, "add", "CLAUDE.md")
    git(worktree, "commit", "-q", "-m", "instructions for agents")
    app = str(worktree / "src" / "app.py")
    scripted = model(
        {
            "t1": [
                turn(tool_use_block("Read", {"file_path": "/etc/hostname"})),
                turn(tool_use_block("Read", {"file_path": app}), cache_write=400),
                turn(
                    tool_use_block(
                        "Edit",
                        {
                            "file_path": app,
                            "old_string": '"Hello, "',
                            "new_string": '"Hello there, "',
                        },
                    ),
                    cache_read=400,
                ),
                turn(
                    tool_use_block(
                        "Write",
                        {"file_path": str(worktree / "NOTES.md"), "content": "greet changed\n"},
                    ),
                    cache_read=400,
                ),
                turn(
                    tool_use_block(RUN_COMMAND, {"command": "python -c print(6*7)"}),
                    cache_read=400,
                ),
                turn(text_block("greet now says hello there"), cache_read=400),
            ]
        }
    )
    await start_runner(scripted, runtime="claude-code")
    base = git(worktree, "rev-parse", "HEAD")
    ready = msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base)

    await publish(ready)
    done = await events.first(AgentCompleted, timeout=120)

    requests = scripted.script.requests
    assert len(requests) == 6  # every call of the CLI reached the scripted server
    system = "".join(block.get("text", "") for block in requests[0]["system"])
    assert "Always keep greetings polite." in system
    tools = {tool["name"] for tool in requests[0]["tools"]}
    assert {"Read", "Edit", "Write", RUN_COMMAND} <= tools
    assert "Bash" not in tools
    refused = result_text(tool_results(requests[1])[0])
    assert "outside the repository" in refused
    assert "42" in result_text(tool_results(requests[5])[0])  # run through Aether's policy

    assert done.commit_sha == task_repo_head(task_repo)
    assert set(done.files_changed) == {"src/app.py", "NOTES.md"}
    assert '"Hello there, "' in (worktree / "src" / "app.py").read_text()
    assert done.summary == "greet now says hello there"
    message = git_log(task_repo, task_repo.branch)
    for trailer in (f"Aether-Mission: {mission_id}", "Aether-Task: t1", "Aether-Attempt: 1"):
        assert trailer in message

    counts = Usage(
        input_tokens=6 * 120,
        output_tokens=6 * 30,
        cache_creation_input_tokens=400,
        cache_read_input_tokens=4 * 400,
    )
    prices = load_prices()
    priced = prices.priced("claude-sonnet-5-5", counts)
    assert done.usage.cost_usd == pytest.approx(priced.cost_usd)
    assert msgspec.structs.replace(done.usage, cost_usd=None) == counts
    # One usage event per model call, each the call's own counts as the server sent them.
    recorded = events.of(UsageRecorded)
    assert [u.step for u in recorded] == [f"agent:t1:a1:turn{n}" for n in range(1, 7)]
    calls = [(0, 0), (400, 0), (0, 400), (0, 400), (0, 400), (0, 400)]
    assert [u.usage for u in recorded] == [
        prices.priced(
            "claude-sonnet-5-5",
            Usage(
                input_tokens=120,
                output_tokens=30,
                cache_creation_input_tokens=write,
                cache_read_input_tokens=read,
            ),
        )
        for write, read in calls
    ]
    assert len({u.event_id for u in recorded}) == 6
    total = Usage(cost_usd=0.0)
    for event in recorded:
        total = total.plus(event.usage)
    assert msgspec.structs.replace(total, cost_usd=None) == counts
    assert total.cost_usd == pytest.approx(priced.cost_usd)
    # The CLI's own total agrees with the calls recorded: no mismatch is logged.
    messages = [r.getMessage() for r in caplog.records]
    assert "refused a path outside the worktree" in messages  # the runtime's log is seen
    assert not [r for r in caplog.records if "reported total" in r.getMessage()]

    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "Read src/app.py" in actions
    assert "Edit src/app.py" in actions
    assert "Write NOTES.md" in actions
    assert "run_command python -c print(6*7)" in actions
    assert not any("/etc/hostname" in action for action in actions)
    assert len(events.of(AgentStarted)) == 1

    # The transcript: each turn, the refused read, each tool with its result, the command
    # with its exit status (from Aether's run_command), and the CLI's result.
    entries = sorted(events.of(TranscriptRecorded), key=lambda e: e.sequence)
    assert [e.sequence for e in entries] == list(range(len(entries)))
    assert {e.runtime for e in entries} == {"claude-code"}
    turns = [e for e in entries if e.kind == "turn"]
    assert [t.tool for t in turns if t.tool] == ["Read", "Read", "Edit", "Write", RUN_COMMAND]
    assert any(t.text == "greet now says hello there" for t in turns)
    calls = [e for e in entries if e.kind == "tool_call"]
    refused = next(c for c in calls if c.is_error)
    assert refused.tool == "Read" and "outside the repository" in refused.result
    assert {c.tool for c in calls if not c.is_error} >= {"Read", "Edit", "Write"}
    [command] = [e for e in entries if e.kind == "command"]
    assert command.exit_code == 0 and "42" in command.result
    assert '"command": "python -c print(6*7)"' in command.arguments
    assert entries[-1].kind == "note" and entries[-1].tool == "result"


async def test_claude_codes_glob_and_grep_patterns_stay_in_the_worktree(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """A glob pattern names paths too: the CLI follows an absolute one out of the worktree
    (it listed the host's ``/etc`` files), so an absolute one, one climbing with ``..`` or
    one into ``.git`` is refused like a path outside; so is a path beginning with ``~``,
    which the CLI reads as a home directory, and one with space around it, which the CLI
    trims after the hook has seen it; a pattern below the worktree is matched."""
    worktree = task_repo.worktree
    scripted = model(
        {
            "t1": [
                turn(tool_use_block("Glob", {"pattern": "/etc/host*"})),
                turn(tool_use_block("Glob", {"pattern": "src/../../*"})),
                turn(tool_use_block("Grep", {"pattern": "x", "glob": ".git/*"})),
                turn(tool_use_block("Glob", {"pattern": "*", "path": "~"})),
                turn(tool_use_block("Grep", {"pattern": "x", "path": "~/.bashrc"})),
                turn(tool_use_block("Glob", {"pattern": "*", "path": " /etc"})),
                turn(tool_use_block("Grep", {"pattern": "root", "path": "\t/etc/passwd"})),
                turn(tool_use_block("Glob", {"pattern": " /etc/host*"})),
                turn(tool_use_block("Glob", {"pattern": "src/*.py"})),
                turn(
                    tool_use_block("Write", {"file_path": str(worktree / "x.md"), "content": "x"})
                ),
                turn(text_block("done")),
            ]
        }
    )
    await worked_by_claude_code(
        scripted, task_repo, start_runner, publish, events, mission_id, workspace_ready
    )

    answers = [result_text(tool_results(r)[0]) for r in scripted.script.requests[1:10]]
    for refused in answers[:8]:
        assert "outside the repository or in .git" in refused, answers
    assert "/etc/hostname" not in "".join(answers)  # nothing of the host listed
    assert "root:x:" not in "".join(answers)  # nor read
    assert "app.py" in answers[8]


@needs_sandbox
async def test_claude_code_runs_in_the_sandbox_whose_mounts_hold_its_file_tools(
    tmp_path: Path,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI runs in the command sandbox: with the runner's path check made to let
    everything through (a flaw in it), its file tools still find nothing of the host
    outside the worktree (a file beside it, read or listed), and its work in the
    worktree lands as before."""
    from aether_agent_runner.runtimes import claude_code

    monkeypatch.setattr(claude_code, "refused_argument", lambda tool, arguments, root: None)
    secret = tmp_path / "beside-the-worktree.txt"
    secret.write_text("runner secret\n")
    worktree = task_repo.worktree
    scripted = model(
        {
            "t1": [
                turn(tool_use_block("Read", {"file_path": str(secret)})),
                turn(tool_use_block("Glob", {"pattern": "*", "path": str(tmp_path)})),
                turn(
                    tool_use_block("Write", {"file_path": str(worktree / "x.md"), "content": "x"})
                ),
                turn(text_block("done")),
            ]
        }
    )
    done = await worked_by_claude_code(
        scripted, task_repo, start_runner, publish, events, mission_id, workspace_ready
    )

    answers = [result_text(tool_results(r)[0]) for r in scripted.script.requests[1:3]]
    assert "runner secret" not in answers[0], answers
    assert "does not exist" in answers[0].lower() or "no such file" in answers[0].lower()
    assert secret.name not in answers[1], answers[1]  # the worktree's parent is bare
    assert done.files_changed == ["x.md"]


@needs_sandbox
async def test_claude_code_in_the_sandbox_never_holds_the_model_key(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """The confined CLI calls the runner's metered endpoint with a key of the attempt's
    own: while it waits on its second call, no process on the machine has the real key in
    its variables or command line, and the model gets every call with the real key."""
    from aether_llm import LLMSettings

    from .conftest import Signal

    real_key = "sk-ant-real-" + uuid.uuid4().hex
    worktree = task_repo.worktree
    scripted = model(
        {
            "t1": [
                turn(
                    tool_use_block("Write", {"file_path": str(worktree / "x.md"), "content": "x"})
                ),
                turn(text_block("done")),
            ]
        }
    )
    held, arrived = threading.Event(), Signal()
    scripted.script.gates[("t1", 1)] = held
    scripted.script.on_call = lambda task, turn: arrived.set() if turn == 1 else None

    class Endpoint:
        def llm(self) -> LLMSettings:
            return LLMSettings(api_key=real_key, base_url=scripted.url, max_retries=0)

    await start_runner(Endpoint(), runtime="claude-code")
    base = git(task_repo.worktree, "rev-parse", "HEAD")
    await publish(msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base))
    try:
        await arrived.wait(120)
        assert processes_in(worktree)  # the CLI is there, waiting on the model
        holding = []
        for entry in Path("/proc").iterdir():
            for part in ("environ", "cmdline"):
                try:
                    if real_key.encode() in (entry / part).read_bytes():
                        holding.append(entry.name)
                except OSError:
                    continue
        assert holding == []
    finally:
        held.set()
    await events.first(AgentCompleted, timeout=120)
    assert scripted.server.api_keys
    assert set(scripted.server.api_keys) == {real_key}


async def test_claude_code_turn_limit_fails_the_task_without_retry(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    app = str(task_repo.worktree / "src" / "app.py")
    scripted = model({"t1": [turn(tool_use_block("Read", {"file_path": app}))] * 5})
    await start_runner(scripted, runtime="claude-code", max_turns=2)

    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed, timeout=120)

    assert failed.reason == "turn limit reached: 2 turns allowed"
    assert not failed.retryable
    assert len(scripted.script.requests) == 2


async def test_cancelling_the_mission_stops_the_claude_code_cli(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    app = str(task_repo.worktree / "src" / "app.py")
    scripted = model({"t1": [turn(tool_use_block("Read", {"file_path": app})), turn()]})
    gate = scripted.script.gates[("t1", 1)] = threading.Event()
    arrived = signal_on(scripted, "t1", 1)
    await start_runner(scripted, runtime="claude-code")
    await publish(workspace_ready(task_repo, mission_id))
    await arrived.wait()  # the CLI waits on its second model call
    assert processes_in(task_repo.worktree)

    await publish(MissionCancelled(**control_meta(mission_id), reason="not needed"))
    failed = await events.first(AgentFailed, timeout=30)
    gate.set()

    assert failed.reason == "stopped: the mission was cancelled: not needed"
    # By the time the stop is reported, the CLI is gone.
    assert processes_in(task_repo.worktree) == []


async def test_an_unknown_runtime_fails_the_task_plainly(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    scripted = model({"t1": []})
    # No live runner has the runtime: the attempt waits the registry's entry age for one.
    await start_runner(scripted, runner_entry_seconds=1.0)
    ready = msgspec.structs.replace(workspace_ready(task_repo, mission_id), runtime="codex")

    await publish(ready)
    failed = await events.first(AgentFailed)

    assert failed.reason.startswith("no live agent runner has the runtime 'codex'")
    assert not failed.retryable
    assert scripted.script.requests == []


def test_a_cli_total_that_differs_from_the_recorded_calls_is_logged_with_both(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from claude_agent_sdk import ResultMessage

    from aether_agent_runner.runtimes.claude_code import check_total

    prices = load_prices()
    model = "claude-sonnet-5-5"
    calls = prices.priced(model, Usage(input_tokens=240, output_tokens=60))
    assert calls.cost_usd
    result = ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=1,
        is_error=False,
        num_turns=2,
        session_id="s",
        total_cost_usd=calls.cost_usd,
        model_usage={model: {"inputTokens": 240, "outputTokens": 60, "costUSD": calls.cost_usd}},
    )
    assert check_total(calls, result, model, prices)
    assert not caplog.records

    cli_usd = calls.cost_usd * 3
    dearer = ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=1,
        is_error=False,
        num_turns=2,
        session_id="s",
        total_cost_usd=cli_usd,
        model_usage={model: {"inputTokens": 240, "outputTokens": 60, "costUSD": cli_usd}},
    )
    assert not check_total(calls, dearer, model, prices)
    warned = [r for r in caplog.records if "reported total" in r.getMessage()]
    assert len(warned) == 1
    assert str(calls.cost_usd) in warned[0].getMessage()
    assert str(cli_usd) in warned[0].getMessage()

    # A reply the stream never showed: the CLI counted more tokens than were recorded.
    more = ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=1,
        is_error=False,
        num_turns=3,
        session_id="s",
        total_cost_usd=calls.cost_usd,
        model_usage={model: {"inputTokens": 360, "outputTokens": 60, "costUSD": calls.cost_usd}},
    )
    assert not check_total(calls, more, model, prices)
