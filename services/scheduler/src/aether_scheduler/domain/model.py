"""The scheduler's state: missions, their tasks, budgets and timers (all plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from aether_events import (
    CARRIED_TEXT_BYTES,
    ZERO_USAGE,
    MissionPhase,
    MissionProgress,
    MissionRequested,
    PlannedTask,
    PlanProduced,
    TaskReady,
    TaskRetried,
    Usage,
    known_cost,
    phase_of,
)
from aether_events.estimates import DEFAULT_ESTIMATES_USD

# What the scheduler keeps of text an attempt or a model chose (``aether_events.bounds``):
# an attempt's summary (a resolution's context lists several), the broker's account of a
# refused merge (a failed verification's output, which the next attempt reads), and the
# most a TaskReady's context or a MissionFailed's reason made of such texts may take. Each
# is cut where it is folded, so neither the state nor the events decided from it grow
# with what an attempt sends.
SUMMARY_BYTES = 1024
DETAIL_BYTES = 3 * CARRIED_TEXT_BYTES
CONTEXT_BYTES = 4 * CARRIED_TEXT_BYTES

TaskStatus = Literal[
    "pending",  # waiting for dependencies, a slot, the budget or a scope to free up
    "ready",  # TaskReady published; no agent has reported yet
    "running",  # an agent started
    "completed",  # the agent committed; waiting for the merge train
    "merged",
    "retry_wait",  # an attempt failed; the next one starts at not_before
    "escalated",  # retries exhausted: a person must retry, skip or cancel
    "failed",  # failed in a way a retry cannot help; blocks its dependents
    "skipped",  # a person skipped it; dependents go on without it
]

IN_FLIGHT: frozenset[str] = frozenset({"ready", "running"})
UNMERGED_WORK: frozenset[str] = frozenset({"ready", "running", "completed"})
DONE: frozenset[str] = frozenset({"merged", "skipped"})
# The statuses whose tasks a mission keeps by status (see ``MissionState.tracked``): the
# few a decision looks for, neither waiting for their turn nor done.
TRACKED: tuple[str, ...] = ("ready", "running", "completed", "retry_wait", "escalated", "failed")

_T = TypeVar("_T")


def changed(value: _T, **changes: Any) -> _T:
    """A copy of the frozen dataclass ``value`` with ``changes``: what
    ``dataclasses.replace`` gives, at a fraction of its cost (it re-runs ``__init__``
    field by field, which was most of the start-up replay). ``__post_init__`` is not run:
    the state's indexes are kept by ``evolve``, not recomputed on every copy."""
    fields = value.__dict__
    if not changes.keys() <= fields.keys():
        raise TypeError(f"{type(value).__name__} has no field {set(changes) - set(fields)}")
    copy = object.__new__(type(value))
    copy.__dict__.update(fields)
    copy.__dict__.update(changes)
    return copy


@dataclass(frozen=True)
class Config:
    """Scheduling settings (from the environment in production, literal in tests)."""

    tier_models: dict[str, str]
    max_attempts: int = 3
    global_concurrency: int = 64
    # What a task is expected to cost before it runs, by tier (reserved from the budget).
    estimate_usd: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ESTIMATES_USD))
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    heartbeat_timeout_seconds: float = 120.0
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    warn_fraction: float = 0.8


@dataclass(frozen=True)
class TaskState:
    spec: PlannedTask
    wave: int
    order: int
    status: TaskStatus = "pending"
    attempt: int = 0
    # Automatic retries count from here (a person's retry grants a fresh allowance).
    attempts_base: int = 0
    merge_sha: str | None = None
    last_failure: str = ""
    context: str = ""
    # A merge conflict or a person's retry runs again at once; failures back off.
    immediate_retry: bool = False
    not_before: datetime | None = None
    last_seen: datetime | None = None
    reserved_usd: float = 0.0
    attempt_spent_usd: float = 0.0
    # The ids of the usage counted for the current attempt, so each counts once: a
    # resumed attempt may send one again inside its result (``carried_by``) after it was
    # stored alone, or the other way round, minutes apart, while the projection knows an
    # event by its id only until its position passes it (seconds).
    usage_ids: frozenset[str] = frozenset()
    ready_event: TaskReady | None = None
    retry_event: TaskRetried | None = None
    first_ready_at: datetime | None = None
    merged_at: datetime | None = None
    # Files its attempts changed outside the planned scope (scope drift): claimed with
    # the planned scope until it merges, and by its later attempts.
    drift: tuple[str, ...] = ()
    # The last attempt's commit and summary, and what its merge changed: a conflicting
    # attempt is resolved from its commit, and the prompt names the work it met.
    last_commit: str | None = None
    summary: str = ""
    merged_files: tuple[str, ...] = ()
    # Set after a true merge conflict: the next attempt resolves this commit's conflicts.
    resolve_sha: str | None = None

    @property
    def claims(self) -> list[str]:
        """The file scope this task holds a lease on: planned, plus any drift seen."""
        return [*self.spec.files, *self.drift] if self.drift else self.spec.files


@dataclass(frozen=True)
class MissionState:
    request: MissionRequested
    # Where the mission stands, by the rules every service shares (``aether_events.status``).
    progress: MissionProgress = field(default_factory=MissionProgress)
    budget_usd: float | None = None
    # Every model call of the mission added up (``aether_events.usage``).
    usage: Usage = ZERO_USAGE
    # When the mission ended, as the event that ended it says (its ``occurred_at``, not
    # when it was folded: a replay finds the same): its attempts still running may
    # report their stop until a grace after it (``aether_scheduler.app.attempt_stopping``).
    ended_at: datetime | None = None
    warned_at_budget: float | None = None
    exceeded_at_budget: float | None = None
    global_exceeded: frozenset[str] = frozenset()
    base_sha: str | None = None
    integration_branch: str | None = None
    integration_head: str | None = None
    plans: dict[int, PlanProduced] = field(default_factory=dict)
    # Why planning gave up, once it has: the mission fails on it.
    plan_failure: str | None = None
    approved_version: int | None = None
    tasks: dict[str, TaskState] = field(default_factory=dict)
    waves_started: frozenset[int] = frozenset()
    waves_completed: frozenset[int] = frozenset()
    # Indexes of ``tasks``, set when the plan is approved and kept by ``evolve`` as tasks
    # move, so that deciding after an event looks at the few tasks that matter instead of
    # every task of the mission (which made each task of a large mission dearer):
    # the ids of the tasks in each ``TRACKED`` status;
    tracked: dict[str, frozenset[str]] = field(default_factory=dict)
    # the pending tasks whose dependencies are all done (what could start next);
    startable: frozenset[str] = frozenset()
    # each task's dependents, and each wave's tasks in the order a WaveStarted names them;
    dependents: dict[str, tuple[str, ...]] = field(default_factory=dict)
    wave_tasks: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # how many tasks are not done (merged or skipped), in all and in each wave.
    undone: int = 0
    undone_in_wave: dict[int, int] = field(default_factory=dict)

    def with_status(self, *statuses: str) -> frozenset[str]:
        """The ids of the tasks in any of ``statuses`` (each one of ``TRACKED``)."""
        empty: frozenset[str] = frozenset()
        if len(statuses) == 1:
            return self.tracked.get(statuses[0], empty)
        return empty.union(*(self.tracked.get(s, empty) for s in statuses))

    @property
    def spent_usd(self) -> float:
        """What the mission is known to have spent: what its budget counts."""
        return known_cost(self.usage)

    @property
    def reserved_usd(self) -> float:
        # Only a task that is ready or running holds a reservation: every way out of
        # those statuses releases it (``evolve``), so the others need not be looked at.
        return sum(self.tasks[t].reserved_usd for t in self.with_status(*IN_FLIGHT))

    @property
    def terminal(self) -> bool:
        return self.progress.terminal

    @property
    def paused(self) -> bool:
        return self.progress.paused

    @property
    def status(self) -> MissionPhase:
        """The coarse phase (planning, active, paused or how it ended)."""
        return phase_of(self.progress.status)


@dataclass(frozen=True)
class State:
    missions: dict[str, MissionState] = field(default_factory=dict)
    # Known spend across every mission, by UTC day (YYYY-MM-DD) and month (YYYY-MM).
    daily_spent: dict[str, float] = field(default_factory=dict)
    monthly_spent: dict[str, float] = field(default_factory=dict)
    # The missions that have not ended, in the order they were requested (kept by
    # ``evolve``): the passing of time, a start and the global concurrency look only at
    # these, however many finished missions the history holds.
    live: dict[str, None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A state built from missions directly (not folded) gets its index here.
        if self.missions and not self.live:
            live = {mid: None for mid, m in self.missions.items() if not m.terminal}
            object.__setattr__(self, "live", live)
