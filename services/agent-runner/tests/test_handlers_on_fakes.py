"""The runner's handlers on the fakes of its ports: around the scripted runtime
(``aether_agent_runner.testing``), what the runner does with any runtime's work (started,
usage, the commit, the result events) without a model; and the built-in runtime's
commands through the scripted sandbox (``aether_sandbox.testing``), which runs nothing.
``test_runtime_contract.py`` and ``tests/contracts/test_sandbox.py`` hold the fakes to
the real adapters."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aether.infra import free_port
from aether_agent_runner.app import Adapters, wire
from aether_agent_runner.config import AgentSettings, RunnerSettings
from aether_agent_runner.runtimes import Runtime
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_agent_runner.testing import Edit, Finish, ModelError, ScriptedRuntime
from aether_events import AgentCompleted, AgentFailed, AgentStarted, UsageRecorded
from aether_llm import LLMSettings, make_client
from aether_runtime import RuntimeSettings, Service
from aether_runtime.runner_secrets import runner_secret, step_record_key
from aether_sandbox import CommandRunner, Request, SandboxSettings, SandboxUnavailable
from aether_sandbox.testing import Scripted, ScriptedSandbox

from .conftest import Model, finish, git, reply, results_of, tool

NO_SANDBOX = SandboxUnavailable("these tests run no commands")


@pytest.fixture
async def start_scripted(nats_url: str) -> AsyncIterator[Callable[..., Any]]:
    """``await start_scripted(runtime, sandbox=…, llm=…, commands=…)``: a runner in this
    process whose every attempt runs on ``runtime``."""
    started: list[Service] = []

    async def start(
        runtime: Runtime,
        sandbox: CommandRunner | SandboxUnavailable = NO_SANDBOX,
        llm: LLMSettings | None = None,
        commands: tuple[str, ...] = (),
        backend: str = "bubblewrap",
    ) -> None:
        settings = RunnerSettings(
            runtime=RuntimeSettings(nats_url=nats_url, port=free_port()),
            llm=llm or LLMSettings(api_key="unused"),
            agent=AgentSettings(
                heartbeat_seconds=0.5,
                progress_seconds=0.0,
                commands=commands,
                sandbox=SandboxSettings(backend=backend),
            ),
        )
        adapters = Adapters(
            runtimes=lambda name: runtime,
            sandbox=sandbox,
            runner_id="scripted-runner",
            clock=lambda: datetime.now(UTC),
        )
        service = wire(settings, adapters).service
        started.append(service)
        await service.start()

    yield start
    for service in started:
        await service.stop()


def test_the_runners_step_records_are_keyed_with_its_own_secret() -> None:
    """The runner's own step records get ids keyed with a key of its own secret (decision
    0032), out of any attempt credential's reach; without a secret (a bus without users),
    the public ids."""
    secret = runner_secret("a master secret of the test", "r1")
    adapters = Adapters(
        runtimes=lambda name: ScriptedRuntime([]),
        sandbox=NO_SANDBOX,
        runner_id="r1-1",
        clock=lambda: datetime.now(UTC),
    )
    keyed = wire(
        RunnerSettings(runtime=RuntimeSettings(), runner_secret=secret, runner_name="r1"),
        adapters,
    )
    assert keyed.service.step_record_key == step_record_key(secret)
    unkeyed = wire(RunnerSettings(runtime=RuntimeSettings()), adapters)
    assert unkeyed.service.step_record_key is None


async def test_a_scripted_agents_edit_is_committed_and_reported_with_its_usage(
    task_repo: Any,
    start_scripted: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    runtime = ScriptedRuntime(
        [Edit("src/app.py", "def greet(name):\n    return 'Hi ' + name\n"), Finish("hi")]
    )
    await start_scripted(runtime)
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)
    assert done.summary == "hi" and done.files_changed == ["src/app.py"]
    assert git(task_repo.worktree, "show", f"{done.commit_sha}:src/app.py").startswith(
        "def greet(name):\n    return 'Hi '"
    )
    assert len(events.of(AgentStarted)) == 1
    usages = events.of(UsageRecorded)
    assert [u.usage.input_tokens for u in usages] == [100, 100]
    assert done.usage.input_tokens == 200 and done.usage.cost_known
    assert [job.ready.task.id for job in runtime.jobs] == ["t1"]


async def test_the_runners_own_result_stops_nothing(
    task_repo: Any,
    start_scripted: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The result is published while the handler still holds the attempt's delivery,
    and the control follower delivers it back: by then the attempt is no longer among
    the running agents, so it is not taken for another runner's report of it."""
    caplog.set_level(logging.INFO, logger="aether.agent-runner")
    await start_scripted(ScriptedRuntime([Edit("src/app.py", "x = 1\n"), Finish("done")]))
    await publish(workspace_ready(task_repo, mission_id))
    await events.first(AgentCompleted)
    await asyncio.sleep(1.0)  # the control follower's delivery of it
    stops = [r for r in caplog.records if r.getMessage() == "stopping agents"]
    assert stops == []


async def test_a_scripted_model_error_fails_the_attempt_as_retryable(
    task_repo: Any,
    start_scripted: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await start_scripted(ScriptedRuntime([ModelError(529, "overloaded")]))
    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed)
    assert failed.retryable and failed.reason == "model call failed: 529 overloaded"


async def test_the_agents_command_goes_through_the_sandbox_port_and_nothing_runs(
    task_repo: Any,
    model: Callable[..., Model],
    start_scripted: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    served = model(
        {
            "t1": [
                reply(tool("run_command", command="pytest -q tests")),
                reply(tool("write_file", path="NOTES.md", content="tests pass\n")),
                finish("checked"),
            ]
        }
    )
    sandbox = ScriptedSandbox([Scripted("3 passed in 0.01s\n", 0, 0.5)])
    runtime = BuiltinRuntime(make_client(served.llm()))
    await start_scripted(runtime, sandbox, served.llm(), commands=("pytest",))
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)
    assert events.of(AgentStarted)[0].sandbox == "scripted"
    [asked] = sandbox.requests
    assert asked.argv == ["pytest", "-q", "tests"] and asked.cwd == task_repo.worktree
    assert asked.protect == (task_repo.worktree / ".git",)
    # What the model was told is the scripted outcome, in run_command's words.
    told = results_of(served.script.requests[1])[0]
    assert told.startswith("$ pytest -q tests\n[exit code 0 after 0.5 s]")
    assert "3 passed in 0.01s" in told
    assert done.files_changed == ["NOTES.md"]


async def test_what_a_command_wrote_anywhere_is_committed_beside_the_file_tools_writes(
    task_repo: Any,
    model: Callable[..., Model],
    start_scripted: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """Until a command runs, only the ways to what the file tools wrote are looked at
    when the agent finishes; after one, every directory is."""
    served = model(
        {
            "t1": [
                reply(tool("write_file", path="NOTES.md", content="generated a test\n")),
                reply(tool("run_command", command="make generate")),
                finish("generated"),
            ]
        }
    )

    def generate(request: Request) -> Scripted:
        (request.cwd / "tests" / "test_generated.py").write_text("def test(): ...\n")
        return Scripted("generated\n", 0, 0.1)

    sandbox = ScriptedSandbox([generate])
    runtime = BuiltinRuntime(make_client(served.llm()))
    await start_scripted(runtime, sandbox, served.llm(), commands=("make",))
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)
    assert done.files_changed == ["NOTES.md", "tests/test_generated.py"]
    assert git(task_repo.worktree, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.parametrize("backend", ["bubblewrap", "unconfined"])
async def test_after_a_confined_command_the_index_says_what_the_worktree_holds_besides(
    task_repo: Any,
    model: Callable[..., Model],
    start_scripted: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    backend: str,
) -> None:
    """The commit's scan looked at every file once the commands' processes were gone
    (confined) and says, in the index, what the worktree holds besides the commit's tree,
    for the git broker's next checkout of it; unconfined, a command's process may outlive
    it, and the index says nothing."""
    (task_repo.repo / ".git" / "info").mkdir(exist_ok=True)
    (task_repo.repo / ".git" / "info" / "exclude").write_text("build/\n")
    served = model({"t1": [reply(tool("run_command", command="make")), finish("built")]})

    def build(request: Request) -> Scripted:
        (request.cwd / "tests" / "test_generated.py").write_text("def test(): ...\n")
        (request.cwd / "build" / "obj").mkdir(parents=True)
        (request.cwd / "build" / "obj" / "app.o").write_bytes(b"\0")
        (request.cwd / "tmp" / "cache").mkdir(parents=True)
        return Scripted("built\n", 0, 0.1)

    runtime = BuiltinRuntime(make_client(served.llm()))
    await start_scripted(
        runtime, ScriptedSandbox([build]), served.llm(), commands=("make",), backend=backend
    )
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)
    assert done.files_changed == ["tests/test_generated.py"]
    admin = Path(git(task_repo.worktree, "rev-parse", "--absolute-git-dir"))
    index = (admin / "index").read_bytes()
    if backend == "unconfined":
        assert b"AETX" not in index
        return
    (end,) = struct.unpack_from(">L", index, len(index) - 20 - 4)
    tail = index[end : len(index) - 20]
    claim = tail.index(b"AETX")
    (size,) = struct.unpack_from(">L", tail, claim + 4)
    assert tail[claim + 8 : claim + 8 + size].split(b"\0") == [b"build", b"tmp"]
    tree = git(task_repo.worktree, "rev-parse", f"{done.commit_sha}^{{tree}}")
    assert tree.encode() in tail
