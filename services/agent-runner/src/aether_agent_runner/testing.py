"""A scripted ``Runtime`` for handler tests: an agent that follows a script, no model.

Each step stands for one model call of an agent at work: ``Edit`` writes a file through
the job's toolbox (the same tool, under the same workspace rules, as the built-in loop's
``write_file``), ``Finish`` ends the work with a summary, ``ModelError`` is a model call
answered with an API error, ``Hold`` waits (``reached`` is set) until the run is
cancelled. Like every runtime it tells the job's observer each call's usage, priced on
the attempt's model (unknown where the price table has none), and its progress after
each step, and returns an ``Outcome``; a cancelled run stops at once. The script is one
list for every task, or one per task id. ``tests/test_runtime_contract.py`` runs the
same assertions against this class and the built-in runtime over a scripted Messages
API server; a behaviour it does not check is not promised.

What it leaves out: the prompt, the journal (a scripted run does not resume), limits,
and the objection to finishing with nothing changed; those are the built-in loop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.runtimes import Job
from aether_events import Usage
from aether_llm import add_usage, load_prices

SCRIPTED = "scripted"


@dataclass(frozen=True)
class Edit:
    """One model call that writes ``content`` to ``path`` (relative to the worktree)."""

    path: str
    content: str
    input_tokens: int = 100
    output_tokens: int = 20


@dataclass(frozen=True)
class Finish:
    """One model call that ends the work."""

    summary: str
    input_tokens: int = 100
    output_tokens: int = 20


@dataclass(frozen=True)
class ModelError:
    """A model call answered with an API error (``status``, ``message``)."""

    status: int
    message: str


@dataclass
class Hold:
    """Wait until the run is cancelled; ``reached`` is set once the wait begins."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)


Step = Edit | Finish | ModelError | Hold


class ScriptedRuntime:
    """The fake of ``Runtime``: works each job by its script; every job is recorded."""

    def __init__(self, steps: Iterable[Step] | Mapping[str, Iterable[Step]]) -> None:
        self._steps: list[Step] | dict[str, list[Step]] = (
            {task: list(each) for task, each in steps.items()}
            if isinstance(steps, Mapping)
            else list(steps)
        )
        self.name = SCRIPTED
        self.jobs: list[Job] = []

    def steps_for(self, task_id: str) -> list[Step]:
        if isinstance(self._steps, dict):
            return self._steps.get(task_id, [])
        return self._steps

    async def run(self, job: Job) -> Outcome:
        self.jobs.append(job)
        prices = load_prices()
        workspace = job.toolbox.workspace
        usage = Usage(cost_usd=0.0)
        turns = tool_calls = 0

        def ended(reason: str, retryable: bool) -> Outcome:
            return Outcome(
                False,
                reason=reason,
                retryable=retryable,
                turns=turns,
                tool_calls=tool_calls,
                usage=usage,
                files_changed=list(workspace.changed),
            )

        for step in self.steps_for(job.ready.task.id):
            if isinstance(step, Hold):
                step.reached.set()
                await asyncio.Event().wait()  # until cancelled
                continue
            if isinstance(step, ModelError):
                retryable = step.status in (408, 409, 429) or step.status >= 500
                return ended(f"model call failed: {step.status} {step.message}", retryable)
            turns += 1
            call = prices.priced(
                job.ready.model,
                Usage(input_tokens=step.input_tokens, output_tokens=step.output_tokens),
            )
            usage = add_usage(usage, call)
            await job.observer.model_called(turns, call)
            if isinstance(step, Finish):
                return Outcome(
                    True,
                    step.summary,
                    turns=turns,
                    tool_calls=tool_calls + 1,
                    usage=usage,
                    files_changed=list(workspace.changed),
                )
            result = await job.toolbox.call(
                "write_file", {"path": step.path, "content": step.content}
            )
            tool_calls += 1
            await job.observer.progressed(
                Progress(turns, tool_calls, list(workspace.changed), usage, result.action)
            )
        return ended("the model stopped without calling finish", True)
