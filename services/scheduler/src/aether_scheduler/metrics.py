"""The scheduler's metrics: missions and tasks by state, spend and reservations, read from
the projection when Prometheus scrapes (so they are right after a restart, as soon as the
stream is replayed), and mission and task durations observed as they end."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import get_args

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aether_events import TIERS, BranchMerged, Event
from aether_events.status import MISSION_PHASES
from aether_runtime.metrics import at_zero
from aether_scheduler.domain import MissionState, State
from aether_scheduler.domain.model import TaskStatus

MISSION_STATES: tuple[str, ...] = MISSION_PHASES
TASK_STATES: tuple[str, ...] = get_args(TaskStatus)

MISSION_SECONDS = Histogram(
    "aether_mission_duration_seconds",
    "Time from a mission's request to its end, by outcome (completed, failed, cancelled)",
    ["outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400),
)
TASK_SECONDS = Histogram(
    "aether_task_duration_seconds",
    "Time from a task's first TaskReady to its merge, retries included, by tier",
    ["tier"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
at_zero(MISSION_SECONDS, outcome=("completed", "failed", "cancelled"))
at_zero(TASK_SECONDS, tier=TIERS)


def mission_state(mission: MissionState) -> str:
    """A mission's state as the metrics show it: its phase, paused told apart from active."""
    return mission.status


class StateCollector(Collector):
    """Gauges computed from the scheduler's state at scrape time."""

    def __init__(
        self, state: Callable[[], State], clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.state = state
        self._clock = clock

    def describe(self) -> list[GaugeMetricFamily]:
        # Described without values, so registering never reads a state that is not built.
        return list(self._families(State(), datetime(2000, 1, 1, tzinfo=UTC)))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families(self.state(), self._clock())

    def _families(self, state: State, now: datetime) -> Iterator[GaugeMetricFamily]:
        missions = GaugeMetricFamily(
            "aether_missions", "Missions the scheduler knows, by state", labels=["state"]
        )
        tasks = GaugeMetricFamily(
            "aether_tasks",
            "Tasks of missions that have not ended, by state",
            labels=["state"],
        )
        by_mission: Tally[str] = Tally(mission_state(m) for m in state.missions.values())
        by_task: Tally[str] = Tally(
            task.status
            for m in state.missions.values()
            if not m.terminal
            for task in m.tasks.values()
        )
        for name in MISSION_STATES:
            missions.add_metric([name], by_mission[name])
        for name in TASK_STATES:
            tasks.add_metric([name], by_task[name])
        yield missions
        yield tasks

        spent = GaugeMetricFamily(
            "aether_spent_usd",
            "Known spend across all missions in the current UTC day and month",
            labels=["period"],
        )
        spent.add_metric(["day"], state.daily_spent.get(now.strftime("%Y-%m-%d"), 0.0))
        spent.add_metric(["month"], state.monthly_spent.get(now.strftime("%Y-%m"), 0.0))
        yield spent
        yield GaugeMetricFamily(
            "aether_budget_reserved_usd",
            "Estimated cost of running tasks, reserved from their missions' budgets",
            value=sum(m.reserved_usd for m in state.missions.values() if not m.terminal),
        )


_registered: list[StateCollector] = []


def register(state: Callable[[], State]) -> StateCollector:
    """Export the state gauges of ``state`` from the default registry (a second call, as
    when a test builds the service twice in one process, re-points the same collector)."""
    if _registered:
        _registered[0].state = state
        return _registered[0]
    collector = StateCollector(state)
    REGISTRY.register(collector)
    _registered.append(collector)
    return collector


def observe(before: State, after: State, event: Event) -> None:
    """Record the durations of what ``event`` ended: its mission, or a task it merged."""
    mission = after.missions.get(event.mission_id)
    if mission is None:
        return
    previous = before.missions.get(event.mission_id)
    if mission.terminal and (previous is None or not previous.terminal):
        elapsed = (event.occurred_at - mission.request.occurred_at).total_seconds()
        MISSION_SECONDS.labels(mission.status).observe(max(elapsed, 0.0))
    # Only a BranchMerged merges a task: the one it names is the only one to look at.
    if not isinstance(event, BranchMerged):
        return
    task = mission.tasks.get(event.task_id)
    if task is None or task.status != "merged":
        return
    if task.first_ready_at is None or task.merged_at is None:
        return
    old = previous.tasks.get(task.spec.id) if previous is not None else None
    if old is not None and old.status == "merged":
        return
    elapsed = (task.merged_at - task.first_ready_at).total_seconds()
    TASK_SECONDS.labels(task.spec.tier).observe(max(elapsed, 0.0))
