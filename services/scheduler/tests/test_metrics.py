"""The scheduler's state gauges and duration histograms, from the pure state."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aether_events import BranchMerged, MissionCancelled, MissionPaused
from aether_scheduler import metrics
from aether_scheduler.domain import State, evolve

from .scenario import T0, Scenario, task

Samples = dict[tuple[str, str], float]


def gauges(state: State) -> Samples:
    """Every state gauge sample, keyed by (name, the value of its one label or "")."""
    registry = CollectorRegistry()
    registry.register(metrics.StateCollector(lambda: state, clock=lambda: T0))
    out: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            label = next(iter(sample.labels.values()), "")
            out[(sample.name, label)] = sample.value
    return out


def test_missions_are_counted_by_state_with_paused_told_apart() -> None:
    active, paused, cancelled = Scenario("m-a"), Scenario("m-p"), Scenario("m-c")
    active.start(task("a"))
    paused.start(task("a"))
    paused.when(MissionPaused(**paused.meta()))
    cancelled.start(task("a"))
    cancelled.when(MissionCancelled(**cancelled.meta(), reason="no"))
    state = State(
        missions={
            **active.state.missions,
            **paused.state.missions,
            **cancelled.state.missions,
        }
    )
    got = gauges(state)
    assert got[("aether_missions", "active")] == 1
    assert got[("aether_missions", "paused")] == 1
    assert got[("aether_missions", "cancelled")] == 1
    assert got[("aether_missions", "completed")] == 0


def test_tasks_are_counted_by_state_while_their_mission_is_open() -> None:
    s = Scenario()
    s.start(task("a"), task("b"), task("c", "a", "b"))
    s.started("a")
    got = gauges(s.state)
    assert got[("aether_tasks", "running")] == 1
    assert got[("aether_tasks", "ready")] == 1
    assert got[("aether_tasks", "pending")] == 1
    s.when(MissionCancelled(**s.meta(), reason="no"))
    assert gauges(s.state)[("aether_tasks", "running")] == 0


def test_spend_is_shown_for_the_current_day_and_month() -> None:
    s = Scenario()
    s.start(task("a"))
    s.used("a", 0.25)
    got = gauges(s.state)
    assert got[("aether_spent_usd", "day")] == 0.25
    assert got[("aether_spent_usd", "month")] == 0.25


def test_a_merge_observes_the_task_duration_once_and_the_last_one_the_mission() -> None:
    s = Scenario()
    s.start(task("a", tier="complex"))
    s.started("a")
    s.completed("a")
    s.now += timedelta(seconds=42)
    merge = BranchMerged(
        **s.meta(), task_id="a", attempt=1, merge_sha="m", integration_branch="aether/m-test"
    )
    before = s.state
    after = evolve(before, merge)

    def total(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    task_before = total("aether_task_duration_seconds_sum", tier="complex")
    metrics.observe(before, after, merge)
    metrics.observe(after, after, merge)  # the same merge seen again adds nothing
    assert total("aether_task_duration_seconds_sum", tier="complex") - task_before == 42

    completed_before = total("aether_mission_duration_seconds_count", outcome="completed")
    decided = s.when(merge)
    final = decided[-1]
    metrics.observe(after, evolve(after, final), final)
    assert total("aether_mission_duration_seconds_count", outcome="completed") == (
        completed_before + 1
    )
