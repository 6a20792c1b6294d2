"""The planner's clarification and retry rules (``domain.decide``), given / when / then:
given a mission's history, when the model replies this, then the planner does that."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_events import (
    Event,
    MissionAnswered,
    MissionMessagePosted,
    MissionRequested,
    PlanClarificationRequested,
    PlanFailed,
    PlannedTask,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    Usage,
)
from aether_planner.domain import PlanSubmission, State, SubmittedTask, evolve
from aether_planner.domain.decide import (
    MAX_CLARIFICATION_ROUNDS,
    MAX_MODEL_CALLS,
    AskModel,
    Outcome,
    decide,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
M = "m-1"


@dataclass(frozen=True)
class Reply:
    """A model reply as the adapter reports it (without the raw message)."""

    kind: str
    usage: Usage = field(default_factory=Usage)
    submission: PlanSubmission | None = None
    questions: list[str] | None = None
    answer: str | None = None
    problem: str | None = None


def plan(*ids: str, depends: dict[str, list[str]] | None = None) -> Reply:
    tasks = [
        SubmittedTask(
            id=i, title=f"do {i}", description=i, depends_on=list((depends or {}).get(i, []))
        )
        for i in ids
    ]
    return Reply("plan", submission=PlanSubmission(tasks=tasks, rationale="because"))


def questions(*asked: str) -> Reply:
    return Reply("questions", questions=list(asked))


def answer(text: str) -> Reply:
    return Reply("answer", answer=text)


GARBLED = Reply("none", problem="the reply called no tool")


@dataclass
class Planning:
    """One mission under test: events given, replies in, the planner's next step out."""

    state: State = field(default_factory=State)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def meta(self) -> dict[str, Any]:
        return {
            "event_id": f"e{next(self._ids)}",
            "mission_id": M,
            "occurred_at": NOW,
            "correlation_id": "e0",
        }

    def given(self, *events: Event) -> Event:
        for event in events:
            self.state = evolve(self.state, event)
        return events[-1]

    def requested(self, max_tasks: int = 5) -> Event:
        return self.given(
            MissionRequested(**self.meta(), repository="/r", requirement="x", max_tasks=max_tasks),
            RepositoryPrepared(
                **self.meta(),
                repository_path="/r",
                base_branch="main",
                base_sha="0" * 40,
                integration_branch=f"aether/{M}",
            ),
        )

    def asked(self, trigger: Event) -> Event:
        self.given(
            PlanClarificationRequested(
                **self.meta(), causation_id=trigger.event_id, questions=["which?"]
            )
        )
        return self.given(MissionMessagePosted(**self.meta(), text="that one"))

    def planned(self, trigger: Event, version: int) -> None:
        self.given(
            PlanProduced(
                **self.meta(),
                causation_id=trigger.event_id,
                version=version,
                tasks=[PlannedTask(id="t1", title="t", description="d")],
            )
        )

    def revision(self) -> Event:
        return self.given(PlanRevisionRequested(**self.meta(), base_version=1, feedback="smaller"))

    def when(self, trigger: Event, *replies: Reply) -> AskModel | Outcome:
        mission = self.state.missions[M]
        return decide(mission, trigger, list(replies), NOW, model="m", offline=False)


def test_the_first_call_for_a_new_mission_allows_questions() -> None:
    p = Planning()
    prepared = p.requested()
    assert p.when(prepared) == AskModel(revising=False, plan_only=False)


def test_questions_become_a_clarification_request_caused_by_the_trigger() -> None:
    p = Planning()
    prepared = p.requested()
    out = p.when(prepared, questions("which database?"))
    assert isinstance(out, PlanClarificationRequested)
    assert out.questions == ["which database?"]
    assert out.causation_id == prepared.event_id
    assert out.event_id == p.when(prepared, questions("other")).event_id  # derived from the step


def test_an_answer_to_a_question_about_the_code_is_published_as_is() -> None:
    p = Planning()
    out = p.when(p.requested(), answer("it lives in src/"))
    assert isinstance(out, MissionAnswered)
    assert out.answer == "it lives in src/"


def test_after_the_last_round_of_questions_only_a_plan_will_do() -> None:
    p = Planning()
    trigger = p.requested()
    for _ in range(MAX_CLARIFICATION_ROUNDS):
        trigger = p.asked(trigger)
    assert p.when(trigger) == AskModel(revising=False, plan_only=True)
    retry = p.when(trigger, questions("one more?"))
    assert retry == AskModel(
        revising=False, plan_only=True, correction="- a plan is required now: call submit_plan"
    )


def test_before_the_last_round_more_questions_are_welcome() -> None:
    p = Planning()
    answered = p.asked(p.requested())
    assert p.when(answered) == AskModel(revising=False, plan_only=False)
    assert isinstance(p.when(answered, questions("and?")), PlanClarificationRequested)


def test_a_revision_request_asks_for_a_revised_plan_only() -> None:
    p = Planning()
    prepared = p.requested()
    p.planned(prepared, version=1)
    revision = p.revision()
    assert p.when(revision) == AskModel(revising=True, plan_only=True)
    out = p.when(revision, plan("a", "b"))
    assert isinstance(out, PlanProduced)
    assert out.version == 2
    assert [t.id for t in out.tasks] == ["a", "b"]


def test_a_revision_request_before_any_plan_is_a_first_plan() -> None:
    p = Planning()
    p.requested()
    assert p.when(p.revision()) == AskModel(revising=False, plan_only=False)


def test_an_unusable_reply_is_sent_back_once_with_its_problems() -> None:
    p = Planning()
    prepared = p.requested()
    retry = p.when(prepared, GARBLED)
    assert retry == AskModel(
        revising=False, plan_only=False, correction="- the reply called no tool"
    )
    out = p.when(prepared, GARBLED, plan("t1"))
    assert isinstance(out, PlanProduced)
    assert out.version == 1


def test_a_second_unusable_reply_fails_the_planning() -> None:
    p = Planning()
    prepared = p.requested()
    out = p.when(prepared, GARBLED, plan("a", "b", depends={"a": ["b"], "b": ["a"]}))
    assert isinstance(out, PlanFailed)
    assert out.reason == "the model's plan was rejected twice: dependency cycle: a -> b -> a"
    assert out.version == 1
    assert out.causation_id == prepared.event_id


def test_a_plan_over_the_task_limit_is_corrected_then_repaired_plans_pass() -> None:
    p = Planning()
    prepared = p.requested(max_tasks=2)
    retry = p.when(prepared, plan("a", "b", "c"))
    assert retry == AskModel(
        revising=False,
        plan_only=False,
        correction="- the plan has 3 tasks; the mission allows 2",
    )
    out = p.when(prepared, plan("a", "b", "c"), plan("a b", "c", depends={"c": ["1"]}))
    assert isinstance(out, PlanProduced)
    assert [t.id for t in out.tasks] == ["a-b", "c"]
    assert out.tasks[1].depends_on == ["a-b"]
    assert out.repairs  # each repair is reported with the plan


@pytest.mark.parametrize("reply", [questions("q?"), answer("a"), plan("t1")])
def test_every_outcome_of_one_trigger_shares_one_step_id(reply: Reply) -> None:
    p = Planning()
    prepared = p.requested()
    out = p.when(prepared, reply)
    assert not isinstance(out, AskModel)
    failed = p.when(prepared, GARBLED, GARBLED)
    assert not isinstance(failed, AskModel)
    # One outcome per trigger: a retried trigger can never publish two.
    assert out.event_id == failed.event_id


CYCLE = plan("a", "b", depends={"a": ["b"], "b": ["a"]})
REPLIES = [GARBLED, questions("q?"), answer("a"), plan("t1"), CYCLE]


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.integers(min_value=0, max_value=MAX_CLARIFICATION_ROUNDS + 1),
    planned=st.booleans(),
    replies=st.lists(st.sampled_from(REPLIES), min_size=MAX_MODEL_CALLS, max_size=4),
)
def test_any_replies_end_in_one_outcome_within_the_call_limit(
    rounds: int, planned: bool, replies: list[Reply]
) -> None:
    p = Planning()
    trigger = p.requested()
    for _ in range(rounds):
        trigger = p.asked(trigger)
    if planned:
        p.planned(trigger, version=1)
        trigger = p.revision()
    given_replies: list[Reply] = []
    step = p.when(trigger)
    while isinstance(step, AskModel):
        assert len(given_replies) < MAX_MODEL_CALLS
        given_replies.append(replies[len(given_replies)])
        step = p.when(trigger, *given_replies)
    assert step.causation_id == trigger.event_id
    if planned or rounds >= MAX_CLARIFICATION_ROUNDS:
        assert isinstance(step, PlanProduced | PlanFailed)
