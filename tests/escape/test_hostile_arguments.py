"""What the model decides, at its most hostile in shape rather than in meaning: tool
arguments nested thousands deep, numbers of thousands of digits, names no file system
or git should meet. Through the real anthropic SDK against the local Messages API server
(the scripted model), a real attempt of the built-in loop, real git; and the sandbox
against hard links out of the worktree (a link across the sandbox's bind mounts).

Each must be answered (an error result the model can read, or the call done) and the
attempt end by itself: no crash of the runner, no hang, nothing outside written."""

from __future__ import annotations

import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.registry import runtimes
from aether_events import (
    AgentCompleted,
    AgentFailed,
    EventPublisher,
    PlannedTask,
    WorkspaceReady,
    ensure_streams,
)
from aether_llm import LLMSettings, MessagesServer, Reply, make_client, tool_use_block
from aether_sandbox import SandboxSettings, open_sandbox
from tests.escape.test_files_and_git import Linked, git, linked, meta
from tests.support import tool_results

__all__ = ["linked"]  # the fixture, used by name


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


HUGE = 10**4000  # 4,001 digits: JSON allows it, Python's int() from text stops at 4,300


async def _attempt(
    linked: Linked, nc: NatsClient, turns: list[list[dict[str, Any]]]
) -> tuple[AgentCompleted | AgentFailed, list[dict[str, Any]]]:
    await ensure_streams(nc.jetstream())
    requests: list[dict[str, Any]] = []

    def script(request: dict[str, Any]) -> Reply:
        requests.append(request)
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return Reply(turns[min(turn, len(turns) - 1)], "tool_use", 10, 5)

    server = MessagesServer(script).start()
    try:
        attempts = Attempts(
            runtimes=runtimes(
                make_client(LLMSettings(api_key="k", base_url=server.url, max_retries=0))
            ),
            settings=AgentSettings(progress_seconds=0.0),
            runner_id="escape",
            clock=lambda: datetime.now(UTC),
        )
        ready = WorkspaceReady(
            **meta("m-hostile-args"),
            task=PlannedTask(id="t1", title="hostile arguments"),
            attempt=1,
            model="claude-sonnet",
            branch=linked.branch,
            worktree_path=str(linked.worktree),
            base_sha=linked.base,
            git_dir=str(linked.admin),
        )
        result = await attempts.work(ready, EventPublisher(nc.jetstream()).publish)
    finally:
        server.stop()
    assert isinstance(result, AgentCompleted | AgentFailed), result
    return result, requests


async def test_enormous_numbers_in_tool_arguments_are_answered(
    linked: Linked, nc: NatsClient
) -> None:
    turns = [
        [
            tool_use_block("list_dir", {"path": ".", "depth": HUGE}),
            tool_use_block(
                "read_file", {"path": "README.md", "start_line": HUGE, "end_line": -HUGE}
            ),
            tool_use_block("read_file", {"path": "README.md", "start_line": 1e308}),
            tool_use_block("write_file", {"path": "n.txt", "content": HUGE}),
            tool_use_block("edit_file", {"path": "README.md", "old_text": [HUGE], "new_text": 1}),
            tool_use_block("search", {"pattern": "x", "path": {"a": HUGE}}),
            tool_use_block("write_file", {"path": ["list"], "content": "x"}),
        ],
        [tool_use_block("write_file", {"path": "ok.txt", "content": "fine\n"})],
        [tool_use_block("finish", {"summary": "done"})],
    ]
    result, requests = await _attempt(linked, nc, turns)
    answers = tool_results(requests[1])
    assert len(answers) == 7, answers
    assert isinstance(result, AgentCompleted), result
    assert (linked.worktree / "ok.txt").read_text() == "fine\n"


@pytest.mark.parametrize(
    "arguments",
    [{"path": "deep.txt", "content": _nested(900)}, {"path": "bad-\udcff.txt", "content": "u"}],
    ids=["nested-900-deep", "lone-surrogate"],
)
async def test_tool_arguments_that_do_not_parse_end_the_attempt_with_the_reason(
    linked: Linked, nc: NatsClient, arguments: dict[str, Any]
) -> None:
    """Before, the parser's ``ValueError`` escaped the attempt (the runner's handler
    took it as a crash, and the delivery came back to call the model again)."""
    turns = [
        [tool_use_block("write_file", arguments)],
        [tool_use_block("finish", {"summary": "x"})],
    ]
    result, _ = await _attempt(linked, nc, turns)
    assert isinstance(result, AgentFailed), result
    assert result.reason.startswith("the model's reply could not be read"), result.reason
    assert "bottom" not in result.reason and len(result.reason) <= 1000
    assert linked.head() == linked.base


async def test_file_names_with_a_newline_or_invalid_utf8_or_case_twins_are_kept_exact(
    linked: Linked, nc: NatsClient
) -> None:
    turns = [
        [
            tool_use_block("write_file", {"path": "line\nbreak.txt", "content": "n\n"}),
            tool_use_block("write_file", {"path": "Case.txt", "content": "upper\n"}),
            tool_use_block("write_file", {"path": "case.txt", "content": "lower\n"}),
        ],
        [tool_use_block("finish", {"summary": "names"})],
    ]
    result, requests = await _attempt(linked, nc, turns)
    answers = tool_results(requests[1])
    assert len(answers) == 3, answers
    assert isinstance(result, AgentCompleted), result
    listed = git(linked.worktree, "ls-tree", "-r", "--name-only", "-z", result.commit_sha)
    names = set(listed.split("\0"))
    # Case-folding twins are two files to git and to Linux; what a case-insensitive
    # checkout does with them is its own (git warns of a collision).
    assert {"Case.txt", "case.txt", "line\nbreak.txt"} <= names, names


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_a_hard_link_from_inside_the_sandbox_to_anything_it_sees_fails(
    tmp_path: Path,
) -> None:
    """The worktree and the system directories can lie on one file system, but each is
    a bind mount of its own inside the sandbox, and ``link(2)`` does not cross mounts:
    the runner's journal and the broker's objects are not there at all."""
    worktree = tmp_path / "wt"
    worktree.mkdir()
    tools = ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=30, output_chars=8000, check_paths=False),
        sandbox=open_sandbox(SandboxSettings()),
    )
    code = (
        "import os, sys\n"
        "for n, src in enumerate(['/etc/passwd', '/usr/bin/env', sys.executable]):\n"
        "    try:\n"
        "        os.link(src, f'hl-{n}')\n"
        "        print('LINKED', src)\n"
        "    except OSError as e:\n"
        "        print('refused', src, e.errno)\n"
    )
    try:
        result = await tools.call("run_command", {"command": f"python -c {shlex.quote(code)}"})
    finally:
        tools.close()
    said = result.content[result.content.index("\n[") :]
    assert "LINKED" not in said, said
    assert said.count("refused") == 3, said
    assert list(worktree.iterdir()) == []
