"""The generic command runtime, with a small real program that follows the spec (no CLI
agent installable here runs without its vendor's network): success with usage, usage not
reported, and the failure cases — the tool missing, crashing, hanging, printing garbage."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.runtimes.spec import CommandSpec, load_specs
from aether_events import AgentCompleted, AgentFailed, AgentProgress, Usage, UsageRecorded
from aether_llm import load_prices

from .test_service import git_log

AGENT = r"""
import json, os, re, sys, time
mode = sys.argv[1]
prompt = sys.stdin.read()
task = json.loads(re.search(r"<task>(.*?)</task>", prompt, re.S).group(1))
print("reading the task", task["id"], flush=True)
if mode == "hang":
    time.sleep(600)
if mode == "garbage":
    sys.stdout.buffer.write(b"\x00\xff\xfe\x1b[31m{not json\n" + os.urandom(300) + b"\n")
    print(json.dumps({"usage": {"input_tokens": -5, "output_tokens": "many"}}))
with open("agent.txt", "w") as out:
    out.write("written by " + task["id"] + "\n")
if mode in ("ok", "garbage"):
    print(json.dumps({"usage": {"input_tokens": 1000, "output_tokens": 200,
                                "cache_read_input_tokens": 3000}}))
    print(json.dumps({"usage": {"input_tokens": 500, "output_tokens": 100}}))
if mode == "crash":
    print("something broke", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"text": "wrote agent.txt for " + task["id"]}))
"""


@pytest.fixture
def spec(tmp_path: Path) -> Callable[[str], CommandSpec]:
    program = tmp_path / "fake_agent.py"
    program.write_text(AGENT)

    def make(mode: str, executable: str = sys.executable) -> CommandSpec:
        return CommandSpec(
            name="fake", command=[executable, str(program), mode], prompt="stdin", usage="json"
        )

    return make


async def run(
    spec: CommandSpec,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    mission_id: str,
    workspace_ready: Callable[..., Any],
    **settings: Any,
) -> None:
    await start_runner(model({}), runtime="fake", command_runtimes=(spec,), **settings)
    await publish(workspace_ready(task_repo, mission_id))


@pytest.mark.parametrize("mode", ["ok", "garbage"])
async def test_a_cli_agent_completes_the_task_with_its_reported_usage(
    mode: str,
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await run(spec(mode), task_repo, model, start_runner, publish, mission_id, workspace_ready)
    done = await events.first(AgentCompleted)

    assert done.files_changed == ["agent.txt"]
    assert (task_repo.worktree / "agent.txt").read_text() == "written by t1\n"
    assert done.summary == "wrote agent.txt for t1"
    counts = Usage(input_tokens=1500, output_tokens=300, cache_read_input_tokens=3000)
    priced = load_prices().priced("claude-sonnet-5-5", counts)
    assert done.usage == priced
    assert [u.usage for u in events.of(UsageRecorded)] == [priced]
    assert "Aether-Task: t1" in git_log(task_repo, task_repo.branch)
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "reading the task t1" in actions
    assert all("\x00" not in a and "\x1b" not in a for a in actions)


async def test_usage_a_tool_does_not_report_is_unknown_not_zero(
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await run(spec("quiet"), task_repo, model, start_runner, publish, mission_id, workspace_ready)
    done = await events.first(AgentCompleted)

    assert done.usage.cost_usd is None
    assert events.of(UsageRecorded) == []
    assert "Aether-Cost-USD: unknown" in git_log(task_repo, task_repo.branch)


@pytest.mark.parametrize(
    ("mode", "executable", "settings", "reason", "retryable"),
    [
        ("ok", "/nonexistent/agent-cli", {}, "cannot start '/nonexistent/agent-cli'", False),
        ("crash", None, {}, "fake exited with 3: something broke", True),
        ("hang", None, {"max_seconds": 2.0}, "wall-time limit reached: 2 s allowed", False),
    ],
    ids=["missing", "crashing", "hanging"],
)
async def test_a_cli_agent_that_cannot_finish_fails_the_task_with_the_reason(
    mode: str,
    executable: str | None,
    settings: dict[str, Any],
    reason: str,
    retryable: bool,
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    chosen = spec(mode, executable) if executable else spec(mode)
    await run(
        chosen, task_repo, model, start_runner, publish, mission_id, workspace_ready, **settings
    )
    failed = await events.first(AgentFailed)

    assert reason in failed.reason
    assert failed.retryable is retryable
    assert not events.of(AgentCompleted)


def test_specs_are_read_from_a_json_file_and_refuse_unknown_fields(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(
        '[{"name": "aider", "command": ["aider", "--message", "{prompt}"], "prompt": "argument"}]'
    )
    [aider] = load_specs(str(good))
    assert aider.command == ["aider", "--message", "{prompt}"] and aider.usage == "none"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "command": ["x"], "shell": true}]')
    with pytest.raises(Exception, match="shell"):
        load_specs(str(bad))
