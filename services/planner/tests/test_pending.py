"""``pending``: the triggers a planner starting up still owes a decision, from its state."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aether_events import (
    ALL_TYPES,
    Event,
    MissionMessagePosted,
    MissionRequested,
    PlanApproved,
    PlanClarificationRequested,
    PlanFailed,
    PlannedTask,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    decode,
)
from aether_planner.domain import FOLDED, State, evolve, pending, wants_model

M = "m-1"


def meta(step: str, cause: str | None = None) -> dict[str, Any]:
    return {
        "event_id": step,
        "mission_id": M,
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "correlation_id": "requested",
        "causation_id": cause,
    }


REQUESTED = MissionRequested(**meta("requested"), repository="/r", requirement="do it")
PREPARED = RepositoryPrepared(
    **meta("prepared"),
    repository_path="/r",
    base_branch="main",
    base_sha="0" * 40,
    integration_branch=f"aether/{M}",
)
TASK = PlannedTask(id="t1", title="t", description="d")


def fold(events: list[Event]) -> State:
    state = State()
    for event in events:
        state = evolve(state, event)
    return state


def test_a_prepared_repository_nobody_planned_is_due() -> None:
    assert pending(fold([REQUESTED, PREPARED])) == ["prepared"]


def test_a_planned_mission_owes_nothing() -> None:
    plan = PlanProduced(**meta("plan", "prepared"), version=1, tasks=[TASK])
    assert pending(fold([REQUESTED, PREPARED, plan])) == []


def test_an_unanswered_revision_and_an_answer_are_due_until_answered() -> None:
    asked = PlanClarificationRequested(**meta("questions", "prepared"), questions=["which?"])
    answer = MissionMessagePosted(**meta("answer"), text="this one", author="a")
    state = fold([REQUESTED, PREPARED, asked, answer])
    assert pending(state) == ["answer"]
    plan = PlanProduced(**meta("plan", "answer"), version=1, tasks=[TASK])
    revision = PlanRevisionRequested(**meta("revision"), feedback="smaller", base_version=1)
    state = fold([REQUESTED, PREPARED, asked, answer, plan, revision])
    assert pending(state) == ["revision"]
    approved = PlanApproved(**meta("approved"), version=1)
    assert pending(evolve(state, approved)) == []


def test_a_failed_plan_ends_the_mission_s_planning() -> None:
    failed = PlanFailed(**meta("failed", "prepared"), reason="no", version=1)
    assert pending(fold([REQUESTED, PREPARED, failed])) == []


def _stories() -> st.SearchStrategy[list[Event]]:
    """Random conversations: the order of triggers and outcomes, some answered."""
    step = st.sampled_from(["questions", "answer", "note", "plan", "revision", "approve", "fail"])

    @st.composite
    def build(draw: st.DrawFn) -> list[Event]:
        events: list[Event] = [REQUESTED]
        if draw(st.booleans()):
            events.append(PREPARED)
        triggers = ["prepared"]
        version = 0
        for index, kind in enumerate(draw(st.lists(step, max_size=10))):
            cause = draw(st.sampled_from(triggers))
            name = f"{kind}-{index}"
            match kind:
                case "questions":
                    events.append(PlanClarificationRequested(**meta(name, cause), questions=["?"]))
                case "answer" | "note":
                    events.append(MissionMessagePosted(**meta(name), text="x", author="a"))
                    triggers.append(name)
                case "plan":
                    version += 1
                    events.append(PlanProduced(**meta(name, cause), version=version, tasks=[TASK]))
                case "revision":
                    events.append(
                        PlanRevisionRequested(**meta(name), feedback="x", base_version=version)
                    )
                    triggers.append(name)
                case "approve":
                    events.append(PlanApproved(**meta(name), version=max(version, 1)))
                case "fail":
                    events.append(PlanFailed(**meta(name, cause), reason="x", version=version + 1))
        return events

    return build()


@settings(max_examples=300, deadline=None)
@given(_stories())
def test_pending_is_exactly_the_folded_triggers_the_planner_would_answer(
    events: list[Event],
) -> None:
    state = fold(events)
    wanted = {event.event_id for event in events if wants_model(state, event)}
    assert set(pending(state)) == wanted
    assert len(pending(state)) == len(wanted)


SAMPLES = Path(__file__).resolve().parents[3] / "libs" / "events" / "tests" / "samples" / "v1"


def test_the_consumer_filter_leaves_out_only_events_that_change_nothing() -> None:
    """The planner's consumer delivers only FOLDED types; every other type, arriving for a
    mission being planned, must neither change the state nor ask for a model decision."""
    samples = [decode(path.read_bytes()) for path in sorted(SAMPLES.glob("*.json"))]
    assert len(samples) >= len(ALL_TYPES) - 1
    being_planned = [s for s in samples if isinstance(s, MissionRequested | RepositoryPrepared)]
    state = State()
    for event in being_planned:
        state = evolve(state, event)
    assert state.missions
    for sample in samples:
        if isinstance(sample, FOLDED):
            continue
        assert evolve(state, sample) == state, type(sample)
        assert not wants_model(state, sample), type(sample)
