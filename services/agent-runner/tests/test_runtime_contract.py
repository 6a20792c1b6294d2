"""The contract of the ``Runtime`` port, held by the built-in runtime and the fake.

Every test runs twice: against ``BuiltinRuntime`` calling a scripted Messages API server
through the anthropic SDK over HTTP, and against ``aether_agent_runner.testing.
ScriptedRuntime``, each given the same steps (the built-in one as model turns). Both work
a real worktree through the runner's own toolbox. What every runtime honours: progress is
told as the work goes, every model call's usage is told and summed (its cost unknown,
never zero, where the model has no price), the outcome says how the work ended, and a
cancelled run stops. A handler test on the fake may rely on what is asserted here, and
only on that.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.conversation import identity
from aether_agent_runner.adapters.git import changed_paths
from aether_agent_runner.adapters.journal import Journal, state_dir
from aether_agent_runner.adapters.model import Progress
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes import Job, Runtime
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_agent_runner.testing import Edit, Finish, Hold, ModelError, ScriptedRuntime, Step
from aether_events import Usage
from aether_llm import ApiError, Reply, load_prices
from aether_llm.client import LazyClient

from .conftest import Model, Signal, TaskRepo, finish, reply, tool, workspace_ready

PRICED = "claude-sonnet-5-5"
UNPRICED = "a-model-without-a-price"


@dataclass
class Seen:
    """An observer that keeps what it is told."""

    calls: list[tuple[int, Usage]] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)

    async def model_called(self, turn: int, usage: Usage) -> None:
        self.calls.append((turn, usage))

    async def progressed(self, progress: Progress, *, always: bool = False) -> None:
        self.progress.append(progress)


@dataclass
class World:
    # The runtime for these steps, and what reaching a ``Hold`` looks like.
    runtime: Callable[[list[Step]], Runtime]
    held: Callable[[], Any]


@pytest.fixture(params=["scripted", "builtin"])
def world(request: pytest.FixtureRequest, model: Callable[..., Model]) -> Iterator[World]:
    if request.param == "scripted":
        holds: list[Hold] = []

        def scripted(steps: list[Step]) -> Runtime:
            holds.extend(step for step in steps if isinstance(step, Hold))
            return ScriptedRuntime(steps)

        yield World(scripted, lambda: holds[0].reached.wait())
        return

    reached: list[Signal] = []
    gates: list[threading.Event] = []

    def builtin(steps: list[Step]) -> Runtime:
        turns = [_turn(step) for step in steps]
        served = model({"t1": turns})
        hold = next((n for n, step in enumerate(steps) if isinstance(step, Hold)), None)
        if hold is not None:
            signal = Signal()
            reached.append(signal)
            served.script.on_call = lambda task, turn: turn == hold and signal.set()
            # The held call is answered only once the test is over.
            gates.append(served.script.gates.setdefault(("t1", hold), threading.Event()))
        # Built at the first call, as the runner's bootstrap holds it.
        return BuiltinRuntime(LazyClient(served.llm()))

    try:
        yield World(builtin, lambda: reached[0].wait())
    finally:
        for gate in gates:
            gate.set()


def _turn(step: Step) -> Callable[[dict[str, Any]], Reply | ApiError]:
    match step:
        case Edit(path, content, input_tokens, output_tokens):
            return reply(
                tool("write_file", path=path, content=content),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        case Finish(summary, input_tokens, output_tokens):
            return reply(
                tool("finish", summary=summary),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        case ModelError(status, message):
            return lambda request: ApiError(status, "api_error", message)
        case Hold():
            # Held at the server (a gate) until the test is over: it comes too late.
            return finish("too late")
    raise AssertionError(step)


def job(repo: TaskRepo, seen: Seen, model: str = PRICED) -> Job:
    ready = workspace_ready(repo, "m-runtime-contract", model=model)
    git = repo.git_dir

    async def has_changes() -> bool:
        return bool(await asyncio.to_thread(changed_paths, git))

    return Job(
        ready=ready,
        worktree=repo.worktree,
        git=git,
        limits=Limits(),
        journal=Journal(state_dir(git)),
        identity=identity(ready.mission_id, ready.task.id, ready.attempt, ready.base_sha),
        observer=seen,
        toolbox=ToolBox(Workspace(repo.worktree), CommandPolicy(allowed=())),
        has_changes=has_changes,
    )


GREETING = 'def greet(name):\n    return "Hello there, " + name\n'


async def test_work_is_told_as_it_goes_and_ends_finished_with_its_usage(
    world: World, task_repo: TaskRepo
) -> None:
    runtime = world.runtime(
        [
            Edit("src/app.py", GREETING, input_tokens=1000, output_tokens=50),
            Finish("the greeting is friendlier", input_tokens=1200, output_tokens=30),
        ]
    )
    seen = Seen()
    outcome = await runtime.run(job(task_repo, seen))
    assert outcome.finished and outcome.summary == "the greeting is friendlier"
    assert (outcome.turns, outcome.tool_calls) == (2, 2)
    assert outcome.files_changed == ["src/app.py"]
    assert (task_repo.worktree / "src" / "app.py").read_text() == GREETING
    prices = load_prices()
    expected = [
        prices.priced(PRICED, Usage(input_tokens=1000, output_tokens=50)),
        prices.priced(PRICED, Usage(input_tokens=1200, output_tokens=30)),
    ]
    assert seen.calls == [(1, expected[0]), (2, expected[1])]
    assert outcome.usage.input_tokens == 2200 and outcome.usage.output_tokens == 80
    assert outcome.usage.cost_known
    assert outcome.usage.cost_usd == pytest.approx(sum(u.cost_usd or 0 for u in expected))
    # Progress was told before the end, naming the changed file.
    assert seen.progress and seen.progress[-1].files_changed == ["src/app.py"]
    assert any("src/app.py" in p.last_action for p in seen.progress)


async def test_a_model_without_a_price_leaves_the_cost_unknown_never_zero(
    world: World, task_repo: TaskRepo
) -> None:
    runtime = world.runtime([Edit("src/app.py", GREETING), Finish("done")])
    seen = Seen()
    outcome = await runtime.run(job(task_repo, seen, model=UNPRICED))
    assert outcome.finished
    assert [usage.cost_usd for _, usage in seen.calls] == [None, None]
    assert not outcome.usage.cost_known
    assert outcome.usage.input_tokens == 200


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (429, True), (400, False)])
async def test_a_failed_model_call_ends_the_work_unfinished_saying_why(
    world: World, task_repo: TaskRepo, status: int, retryable: bool
) -> None:
    runtime = world.runtime([Edit("src/app.py", GREETING), ModelError(status, "not today")])
    outcome = await runtime.run(job(task_repo, Seen()))
    assert not outcome.finished and outcome.retryable is retryable
    assert outcome.reason == f"model call failed: {status} not today"


async def test_a_cancelled_run_stops_and_does_no_more(world: World, task_repo: TaskRepo) -> None:
    runtime = world.runtime([Hold(), Edit("src/app.py", GREETING), Finish("done")])
    seen = Seen()
    running = asyncio.create_task(runtime.run(job(task_repo, seen)))
    await asyncio.wait_for(world.held(), 30)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen.calls == []
    assert "Hello there" not in (task_repo.worktree / "src" / "app.py").read_text()
