"""The contract of the ``PlanningModel`` port, held by the real adapter and the fake.

Every test runs twice: against ``PlannerModel`` calling a scripted Messages API server
through the anthropic SDK over HTTP (``aether_llm.MessagesServer``), and against
``aether_planner.testing.ScriptedPlannerModel``. Both are given the same script. A handler
test on the fake may rely on what is asserted here, and only on that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import new_event_id
from aether_llm import ApiError, LLMSettings, MessagesServer, Reply, tool_use_block
from aether_llm.client import LazyClient
from aether_llm.messages_server import text_block
from aether_planner.adapters.journal import CallJournal
from aether_planner.adapters.model import Decision, ModelUnavailable, PlannerModel
from aether_planner.ports import PlanningModel
from aether_planner.testing import Asked, ScriptedPlannerModel

from .conftest import Script, good_tasks, plan_reply

MODEL = "claude-opus-5-5"
CONTEXT = "<repository>README.md: Converts CSV to JSON.</repository>"
MISSION = "Add a --json flag to export"


@dataclass
class World:
    model: PlanningModel
    script: Callable[..., None]
    # What the model was asked, call by call.
    asked: Callable[[], list[Asked]]


def _asked(request: dict[str, Any]) -> Asked:
    """A request the server received, read back into what the fake records."""
    first = request["messages"][0]["content"]
    correction = None
    if len(request["messages"]) > 1:
        last = request["messages"][-1]["content"]
        correction = last if isinstance(last, str) else last[0]["content"]
    return Asked(
        model=request["model"],
        context=first[0]["text"],
        mission=first[1]["text"],
        plan_only=request["tool_choice"] == {"type": "tool", "name": "submit_plan"},
        correction=correction,
    )


@pytest.fixture(params=["scripted", "sdk"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "scripted":
        fake = ScriptedPlannerModel()
        yield World(fake, lambda *replies: fake.replies.extend(replies), lambda: fake.asked)
        return
    script = Script()
    server = MessagesServer(script).start()
    try:
        # Built at the first call, as the planner's bootstrap holds it.
        client = LazyClient(LLMSettings(api_key="k", base_url=server.url, max_retries=0))
        yield World(
            PlannerModel(client),
            lambda *replies: script.replies.extend(replies),
            lambda: [_asked(r) for r in script.requests],
        )
    finally:
        server.stop()


async def ask(
    world: World, key: str = "step-1", *, plan_only: bool = False, correction: Any = None
) -> Decision:
    return await world.model.call(
        key=key,
        model=MODEL,
        context=CONTEXT,
        mission=MISSION,
        plan_only=plan_only,
        correction=correction,
    )


def tool(name: str, payload: dict[str, Any]) -> Reply:
    return Reply([tool_use_block(name, payload)], "tool_use", 500, 40)


async def test_a_plan_is_decoded_with_its_priced_usage(world: World) -> None:
    world.script(
        plan_reply(
            good_tasks(),
            input_tokens=1000,
            output_tokens=200,
            cache_creation_input_tokens=300,
            cache_read_input_tokens=400,
        )
    )
    decision = await ask(world)
    assert decision.kind == "plan" and not decision.replayed and decision.problem is None
    assert decision.submission is not None
    assert [t.id for t in decision.submission.tasks] == ["t1", "t2"]
    assert decision.submission.rationale == "because"
    usage = decision.usage
    assert (usage.input_tokens, usage.output_tokens) == (1000, 200)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (300, 400)
    assert usage.cost_usd == pytest.approx(0.00958)  # the price table's, as on the bus
    assert world.asked() == [Asked(MODEL, CONTEXT, MISSION, plan_only=False)]


async def test_questions_are_trimmed_and_at_most_five_and_an_answer_is_taken(
    world: World,
) -> None:
    asked = ["  Which format? ", "", *[f"q{n}" for n in range(6)]]
    world.script(
        tool("ask_clarifying_questions", {"questions": asked}),
        tool("answer_question", {"answer": " In src/export.py. "}),
    )
    questions = await ask(world, "step-1")
    assert (questions.kind, questions.questions) == (
        "questions",
        ["Which format?", "q0", "q1", "q2", "q3"],
    )
    answer = await ask(world, "step-2")
    assert (answer.kind, answer.answer) == ("answer", "In src/export.py.")
    assert answer.usage.input_tokens == 500


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (Reply([text_block("I would rather chat.")], "end_turn", 10, 5), "called no tool"),
        (tool("ask_clarifying_questions", {"questions": [" ", ""]}), "no questions were asked"),
        (tool("answer_question", {"answer": "   "}), "the answer is empty"),
        (tool("submit_plan", {"tasks": "all of them"}), "does not fit its schema"),
        (tool("delete_everything", {}), "unknown tool 'delete_everything'"),
    ],
)
async def test_a_reply_that_does_not_fit_is_a_decision_of_none_with_the_problem(
    world: World, reply: Reply, problem: str
) -> None:
    world.script(reply)
    decision = await ask(world)
    assert decision.kind == "none" and decision.problem is not None
    assert problem in decision.problem
    assert decision.usage.input_tokens == reply.input_tokens


async def test_a_correction_carries_the_errors_and_a_revision_may_force_a_plan(
    world: World,
) -> None:
    world.script(plan_reply([]), plan_reply(good_tasks()))
    rejected = await ask(world, "step-1")
    fixed = await ask(
        world, "step-2", plan_only=True, correction=(rejected.message, "the plan has no tasks")
    )
    assert fixed.kind == "plan"
    first, second = world.asked()
    assert (first.plan_only, first.correction) == (False, None)
    assert second.plan_only and second.correction is not None
    assert "the plan has no tasks" in second.correction
    assert (second.context, second.mission) == (CONTEXT, MISSION)


@pytest.mark.parametrize("status", [400, 500, 529])
async def test_an_error_reply_is_model_unavailable_naming_the_status(
    world: World, status: int
) -> None:
    world.script(ApiError(status, "api_error", "not today"))
    with pytest.raises(ModelUnavailable, match=f"answered {status}"):
        await ask(world)


async def test_a_journaled_step_is_replayed_and_not_asked_again(
    world: World, nc: NatsClient
) -> None:
    js = nc.jetstream()
    world.model.journal = await CallJournal.open(js)
    key = f"contract-{new_event_id()}"  # the session's bucket outlives the test
    world.script(plan_reply(good_tasks()), plan_reply(good_tasks()[:1]))
    first = await ask(world, key)
    again = await ask(world, key)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.kind == "plan" and again.submission == first.submission
    assert again.usage == first.usage
    assert len(world.asked()) == 1
    other = await ask(world, f"{key}-next")
    assert other.submission is not None and len(other.submission.tasks) == 1
