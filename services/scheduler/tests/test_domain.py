"""Given these events, when this one arrives, then these are decided."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aether_events import (
    AgentFailed,
    BranchMerged,
    Event,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
)
from aether_scheduler.domain import Config, State, decide, evolve, waves_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = Config(tier_models={"small": "s", "standard": "m", "complex": "l"}, max_attempts=2)
M = "m-test"


def meta(n: int) -> dict[str, object]:
    return {
        "event_id": f"e{n}",
        "mission_id": M,
        "occurred_at": T0 + timedelta(seconds=n),
        "correlation_id": "e0",
    }


def given(*events: Event) -> State:
    state = State()
    for event in events:
        state = evolve(state, event)
    return state


def when(state: State, event: Event) -> tuple[State, list[Event]]:
    """Fold ``event``, decide, and fold the decisions (as the handler does)."""
    state = evolve(state, event)
    decided = decide(state, event, T0 + timedelta(minutes=5), CONFIG)
    for out in decided:
        state = evolve(state, out)
    return state, decided


def diamond_plan(concurrency: int = 4, auto: bool = False) -> list[Event]:
    tasks = [
        PlannedTask(id="a", title="A", files=["a.txt"]),
        PlannedTask(id="b", title="B", files=["b.txt"], tier="small"),
        PlannedTask(id="c", title="C", files=["c.txt"], depends_on=["a", "b"]),
    ]
    return [
        MissionRequested(
            **meta(0),
            repository="/r",
            requirement="do it",
            max_concurrency=concurrency,
            auto_approve=auto,
        ),
        RepositoryPrepared(
            **meta(1),
            repository_path="/r",
            base_branch="main",
            base_sha="base",
            integration_branch="aether/m-test",
        ),
        PlanProduced(**meta(2), version=1, tasks=tasks),
    ]


def ready_ids(events: list[Event]) -> list[str]:
    return [e.task.id for e in events if isinstance(e, TaskReady)]


def merged(n: int, task: str, sha: str, attempt: int = 1) -> BranchMerged:
    return BranchMerged(
        **meta(n), task_id=task, attempt=attempt, merge_sha=sha, integration_branch="aether/m-test"
    )


def test_approval_readies_tasks_without_dependencies_only() -> None:
    state = given(*diamond_plan())
    _, decided = when(state, PlanApproved(**meta(3), version=1))
    assert ready_ids(decided) == ["a", "b"]
    by_id = {e.task.id: e for e in decided if isinstance(e, TaskReady)}
    assert by_id["b"].model == "s" and by_id["a"].model == "m"
    assert all(e.attempt == 1 and e.wave == 0 for e in by_id.values())


def test_dependent_task_waits_for_every_dependency_to_merge() -> None:
    state, _ = when(given(*diamond_plan()), PlanApproved(**meta(3), version=1))
    state, decided = when(state, merged(4, "a", "sha-a"))
    assert ready_ids(decided) == []
    state, decided = when(state, merged(5, "b", "sha-b"))
    assert ready_ids(decided) == ["c"]
    assert decided[0].causation_id == "e5"


def test_concurrency_limit_holds_back_ready_tasks() -> None:
    state, decided = when(given(*diamond_plan(concurrency=1)), PlanApproved(**meta(3), version=1))
    assert ready_ids(decided) == ["a"]
    _, decided = when(state, merged(4, "a", "sha-a"))
    assert ready_ids(decided) == ["b"]


def test_redelivered_event_decides_nothing_new() -> None:
    state, _ = when(given(*diamond_plan()), PlanApproved(**meta(3), version=1))
    state, _ = when(state, merged(4, "a", "sha-a"))
    event = merged(5, "b", "sha-b")
    state, first = when(state, event)
    again = decide(state, event, T0, CONFIG)
    assert ready_ids(first) == ["c"] and again == []


def test_mission_completes_with_the_last_merge_as_final_sha() -> None:
    state, _ = when(given(*diamond_plan()), PlanApproved(**meta(3), version=1))
    for n, (task, sha) in enumerate([("a", "sha-a"), ("b", "sha-b")], start=4):
        state, _ = when(state, merged(n, task, sha))
    _, decided = when(state, merged(9, "c", "sha-c"))
    assert len(decided) == 1 and isinstance(decided[0], MissionCompleted)
    done = decided[0]
    assert done.final_sha == "sha-c" and done.tasks_merged == 3
    assert done.integration_branch == "aether/m-test"


def test_auto_approve_approves_the_produced_plan() -> None:
    events = diamond_plan(auto=True)
    state = given(*events[:-1])
    state, decided = when(state, events[-1])
    assert [type(e) for e in decided] == [PlanApproved]
    assert isinstance(decided[0], PlanApproved) and decided[0].automatic


def test_failed_attempt_is_retried_then_fails_the_mission() -> None:
    state, _ = when(given(*diamond_plan()), PlanApproved(**meta(3), version=1))
    state, decided = when(state, AgentFailed(**meta(4), task_id="a", attempt=1, reason="boom"))
    assert [(e.task.id, e.attempt) for e in decided if isinstance(e, TaskReady)] == [("a", 2)]
    _, decided = when(state, AgentFailed(**meta(5), task_id="a", attempt=2, reason="boom"))
    assert len(decided) == 1 and isinstance(decided[0], MissionFailed)
    assert "failed 2 times" in decided[0].reason


def test_stale_attempt_results_are_ignored() -> None:
    state, _ = when(given(*diamond_plan()), PlanApproved(**meta(3), version=1))
    state, _ = when(state, AgentFailed(**meta(4), task_id="a", attempt=1, reason="boom"))
    state, decided = when(state, merged(5, "a", "old", attempt=1))
    assert state.missions[M].tasks["a"].status == "ready" and decided == []


def test_waves_are_graph_layers() -> None:
    tasks = [
        PlannedTask(id="a", title="A"),
        PlannedTask(id="b", title="B", depends_on=["a"]),
        PlannedTask(id="c", title="C", depends_on=["a", "b"]),
        PlannedTask(id="d", title="D"),
    ]
    assert waves_of(tasks) == {"a": 0, "b": 1, "c": 2, "d": 0}


def test_completion_totals_usage_and_an_unknown_price_makes_the_cost_unknown() -> None:
    from aether_events import Usage, UsageRecorded

    def used(n: int, cost: float | None) -> UsageRecorded:
        return UsageRecorded(
            **meta(n),
            service="agent-runner",
            model="x",
            step="s",
            usage=Usage(input_tokens=10, output_tokens=5, cost_usd=cost),
        )

    state, _ = when(given(*diamond_plan()), PlanApproved(**meta(3), version=1))
    state, _ = when(state, used(4, 0.25))
    state, _ = when(state, used(5, 0.5))
    assert state.missions[M].usage.cost_usd == 0.75
    assert state.missions[M].usage.input_tokens == 20
    state, _ = when(state, used(6, None))
    assert state.missions[M].usage.cost_usd is None
