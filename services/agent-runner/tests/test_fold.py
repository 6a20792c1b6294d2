"""The runner's fold is a pure function: folding an event returns a new state and leaves
the one it was given as it was, whatever the events and their order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aether_agent_runner.domain import State, evolve, pending, settled, why_not_run
from aether_agent_runner.domain.frozenmap import FrozenMap
from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    MissionCancelled,
    PlannedTask,
    TaskSkipped,
    TaskTimedOut,
    WorkspaceReady,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MISSIONS = ("m1", "m2")
TASKS = ("t1", "t2")
ATTEMPTS = (1, 2)


def meta(mission: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "mission_id": mission, "occurred_at": NOW, "correlation_id": "c"}


def ready(mission: str, task: str, attempt: int, event_id: str) -> WorkspaceReady:
    return WorkspaceReady(
        **meta(mission, event_id),
        task=PlannedTask(id=task, title=task),
        attempt=attempt,
        model="claude",
        branch=f"aether-tasks/{mission}/{task}/a{attempt}",
        worktree_path=f"/wt/{mission}/{task}-a{attempt}",
        base_sha="b" * 40,
    )


@st.composite
def events(draw: st.DrawFn) -> Event:
    mission = draw(st.sampled_from(MISSIONS))
    task = draw(st.sampled_from(TASKS))
    attempt = draw(st.sampled_from(ATTEMPTS))
    event_id = f"e{draw(st.integers(0, 10_000))}"
    kind = draw(st.sampled_from(("ready", "completed", "failed", "timeout", "skip", "cancel")))
    match kind:
        case "ready":
            return ready(mission, task, attempt, event_id)
        case "completed":
            return AgentCompleted(
                **meta(mission, event_id), task_id=task, attempt=attempt, commit_sha="s", branch="b"
            )
        case "failed":
            return AgentFailed(**meta(mission, event_id), task_id=task, attempt=attempt, reason="x")
        case "timeout":
            return TaskTimedOut(**meta(mission, event_id), task_id=task, attempt=attempt)
        case "skip":
            return TaskSkipped(**meta(mission, event_id), task_id=task)
    return MissionCancelled(**meta(mission, event_id))


@given(st.lists(events(), max_size=30))
def test_folding_never_changes_the_state_it_was_given(history: list[Event]) -> None:
    state = State()
    for event in history:
        before = snapshot(state)
        after = evolve(state, event)
        assert snapshot(state) == before
        state = after


@given(st.lists(events(), max_size=30))
def test_what_is_owed_is_every_announced_attempt_that_may_still_run(history: list[Event]) -> None:
    state = State()
    for event in history:
        state = evolve(state, event)
    # The last announcement of each attempt names it; it is owed while it may run.
    announced: dict[tuple[str, str, int], str] = {}
    for event in history:
        if isinstance(event, WorkspaceReady) and why_not_run(state, key(event)) is None:
            announced[key(event)] = event.event_id
    assert sorted(pending(state)) == sorted(announced.values())


def snapshot(state: State) -> tuple[Any, ...]:
    return tuple(
        (name, m.ended, set(m.settled), set(m.abandoned), set(m.skipped_tasks), dict(m.ready))
        for name, m in sorted(state.missions.items())
    )


def key(event: WorkspaceReady) -> tuple[str, str, int]:
    return (event.mission_id, event.task.id, event.attempt)


def test_given_an_owed_attempt_when_it_completes_then_it_is_settled_and_no_longer_owed() -> None:
    given_state = evolve(State(), ready("m1", "t1", 1, "r1"))
    when = AgentCompleted(**meta("m1", "c1"), task_id="t1", attempt=1, commit_sha="s", branch="b")
    then = evolve(given_state, when)
    assert settled(then, ("m1", "t1", 1)) and pending(then) == []
    assert pending(given_state) == ["r1"] and not settled(given_state, ("m1", "t1", 1))


def test_the_same_announcement_again_returns_the_same_state() -> None:
    state = evolve(State(), ready("m1", "t1", 1, "r1"))
    assert evolve(state, ready("m1", "t1", 1, "r1")) is state


@given(st.lists(st.tuples(st.integers(-1000, 1000), st.integers()), max_size=200))
def test_a_frozen_map_reads_like_the_dict_of_its_settings_and_never_changes(
    settings: list[tuple[int, int]],
) -> None:
    expected: dict[int, int] = {}
    current: FrozenMap[int, int] = FrozenMap()
    for key, value in settings:
        earlier, earlier_items = current, dict(current.items())
        current = current.set(key, value)
        expected[key] = value
        assert dict(earlier.items()) == earlier_items
    assert dict(current.items()) == expected and len(current) == len(expected)
    assert all(key in current and current[key] == value for key, value in expected.items())
    assert 1001 not in current
