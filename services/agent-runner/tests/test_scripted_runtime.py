"""The runner's handlers around the scripted runtime (``aether_agent_runner.testing``): what
the runner does with any runtime's work (started, usage, the commit, the result events),
without a model. ``test_runtime_contract.py`` holds the fake to the built-in runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from aether.infra import free_port
from aether_agent_runner.app import Adapters, wire
from aether_agent_runner.config import AgentSettings, RunnerSettings
from aether_agent_runner.testing import Edit, Finish, ModelError, ScriptedRuntime
from aether_events import AgentCompleted, AgentFailed, AgentStarted, UsageRecorded
from aether_llm import LLMSettings
from aether_runtime import RuntimeSettings, Service
from aether_sandbox import SandboxUnavailable

from .conftest import git


@pytest.fixture
async def start_scripted(nats_url: str) -> AsyncIterator[Callable[[ScriptedRuntime], Any]]:
    started: list[Service] = []

    async def start(runtime: ScriptedRuntime) -> None:
        settings = RunnerSettings(
            runtime=RuntimeSettings(nats_url=nats_url, port=free_port()),
            llm=LLMSettings(api_key="unused"),
            agent=AgentSettings(heartbeat_seconds=0.5, progress_seconds=0.0),
        )
        adapters = Adapters(
            runtimes=lambda name: runtime,
            sandbox=SandboxUnavailable("no commands in these tests"),
            runner_id="scripted-runner",
            clock=lambda: datetime.now(UTC),
        )
        service = wire(settings, adapters).service
        started.append(service)
        await service.start()

    yield start
    for service in started:
        await service.stop()


async def test_a_scripted_agents_edit_is_committed_and_reported_with_its_usage(
    task_repo: Any,
    start_scripted: Callable[[ScriptedRuntime], Any],
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


async def test_a_scripted_model_error_fails_the_attempt_as_retryable(
    task_repo: Any,
    start_scripted: Callable[[ScriptedRuntime], Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await start_scripted(ScriptedRuntime([ModelError(529, "overloaded")]))
    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed)
    assert failed.retryable and failed.reason == "model call failed: 529 overloaded"
