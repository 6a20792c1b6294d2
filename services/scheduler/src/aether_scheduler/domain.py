"""The mission state machine, pure: ``evolve`` folds events, ``decide`` says what happens next.

Decisions are level-triggered: ``decide`` looks at the whole state and returns every event
that *should* exist now and does not, so handling the same event twice (after a crash or a
redelivery) decides nothing new. Ids of decided events are derived from the logical step
(``task_ready``/task/attempt, …), so even a decision repeated before its event came back
is dropped by the stream's duplicate window.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanFailed,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    Usage,
    UsageRecorded,
    caused_by,
)

TaskStatus = Literal["pending", "ready", "running", "completed", "merged", "failed"]
MissionStatus = Literal["planning", "active", "paused", "completed", "failed", "cancelled"]
IN_FLIGHT: frozenset[str] = frozenset({"ready", "running", "completed"})


@dataclass(frozen=True)
class Config:
    """Scheduling settings (from the environment in production, literal in tests)."""

    tier_models: dict[str, str]
    max_attempts: int = 3
    global_concurrency: int = 64


@dataclass(frozen=True)
class TaskState:
    spec: PlannedTask
    wave: int
    status: TaskStatus = "pending"
    attempt: int = 0
    merge_sha: str | None = None
    last_failure: str = ""


@dataclass(frozen=True)
class MissionState:
    request: MissionRequested
    status: MissionStatus = "planning"
    base_sha: str | None = None
    integration_branch: str | None = None
    integration_head: str | None = None
    plans: dict[int, PlanProduced] = field(default_factory=dict)
    approved_version: int | None = None
    tasks: dict[str, TaskState] = field(default_factory=dict)
    # Known to be zero until a call is recorded; unknown once any call's price is unknown.
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))


@dataclass(frozen=True)
class State:
    missions: dict[str, MissionState] = field(default_factory=dict)


# --- evolve ------------------------------------------------------------------------


def waves_of(tasks: list[PlannedTask]) -> dict[str, int]:
    """Each task's wave: 0 for tasks with no dependencies, else 1 + the deepest dependency."""
    by_id = {t.id: t for t in tasks}
    waves: dict[str, int] = {}

    def wave(task_id: str, trail: frozenset[str]) -> int:
        if task_id in waves:
            return waves[task_id]
        deps = [d for d in by_id[task_id].depends_on if d in by_id and d not in trail]
        value = 1 + max((wave(d, trail | {task_id}) for d in deps), default=-1)
        waves[task_id] = value
        return value

    for task in tasks:
        wave(task.id, frozenset())
    return waves


def _sum(a: Usage, b: Usage) -> Usage:
    cost = None if a.cost_usd is None or b.cost_usd is None else a.cost_usd + b.cost_usd
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_creation_input_tokens=a.cache_creation_input_tokens + b.cache_creation_input_tokens,
        cache_read_input_tokens=a.cache_read_input_tokens + b.cache_read_input_tokens,
        cost_usd=cost,
    )


def _with_task(mission: MissionState, task_id: str, **changes: object) -> MissionState:
    task = mission.tasks.get(task_id)
    if task is None:
        return mission
    return replace(mission, tasks={**mission.tasks, task_id: replace(task, **changes)})  # type: ignore[arg-type]


def evolve(state: State, event: Event) -> State:
    """Fold one event into the state."""
    if isinstance(event, MissionRequested):
        if event.mission_id in state.missions:
            return state
        return State(missions={**state.missions, event.mission_id: MissionState(request=event)})
    mission = state.missions.get(event.mission_id)
    if mission is None:
        return state
    updated = _evolve_mission(mission, event)
    if updated is mission:
        return state
    return State(missions={**state.missions, event.mission_id: updated})


def _evolve_mission(m: MissionState, event: Event) -> MissionState:
    match event:
        case RepositoryPrepared():
            return replace(
                m,
                base_sha=event.base_sha,
                integration_branch=event.integration_branch,
                integration_head=m.integration_head or event.base_sha,
            )
        case PlanProduced():
            return replace(m, plans={**m.plans, event.version: event})
        case PlanApproved():
            plan = m.plans.get(event.version)
            if plan is None or m.approved_version is not None:
                return m
            waves = waves_of(plan.tasks)
            tasks = {t.id: TaskState(spec=t, wave=waves[t.id]) for t in plan.tasks}
            status: MissionStatus = "paused" if m.status == "paused" else "active"
            return replace(m, approved_version=event.version, tasks=tasks, status=status)
        case TaskReady():
            return _with_task(m, event.task.id, status="ready", attempt=event.attempt)
        case AgentStarted():
            if _is_current(m, event.task_id, event.attempt, "ready"):
                return _with_task(m, event.task_id, status="running")
            return m
        case AgentCompleted():
            if _is_current(m, event.task_id, event.attempt, "ready", "running"):
                return _with_task(m, event.task_id, status="completed")
            return m
        case BranchMerged():
            if not _is_current(m, event.task_id, event.attempt, "ready", "running", "completed"):
                return m
            m = replace(m, integration_head=event.merge_sha)
            return _with_task(m, event.task_id, status="merged", merge_sha=event.merge_sha)
        case AgentFailed() | MergeConflicted():
            if not _is_current(m, event.task_id, event.attempt, "ready", "running", "completed"):
                return m
            reason = (
                event.reason
                if isinstance(event, AgentFailed)
                else "merge conflict in " + ", ".join(event.files)
            )
            return _with_task(m, event.task_id, status="failed", last_failure=reason)
        case UsageRecorded():
            return replace(m, usage=_sum(m.usage, event.usage))
        case MissionPaused():
            return m if _terminal(m) else replace(m, status="paused")
        case MissionResumed():
            if m.status != "paused":
                return m
            return replace(m, status="active" if m.approved_version is not None else "planning")
        case MissionCompleted():
            return replace(m, status="completed")
        case MissionFailed():
            return replace(m, status="failed")
        case MissionCancelled():
            return replace(m, status="cancelled")
    return m


def _is_current(m: MissionState, task_id: str, attempt: int, *statuses: str) -> bool:
    task = m.tasks.get(task_id)
    return task is not None and task.attempt == attempt and task.status in statuses


def _terminal(m: MissionState) -> bool:
    return m.status in ("completed", "failed", "cancelled")


# --- decide ------------------------------------------------------------------------


def decide(state: State, event: Event, now: datetime, config: Config) -> list[Event]:
    """Everything that should happen now for the mission ``event`` belongs to."""
    mission = state.missions.get(event.mission_id)
    if mission is None or _terminal(mission):
        return []
    if isinstance(event, PlanFailed):
        reason = f"planning failed: {event.reason}"
        return [MissionFailed(**caused_by(event, now, "mission_failed"), reason=reason)]
    if isinstance(event, PlanProduced) and mission.request.auto_approve:
        if mission.approved_version is None and event.version == max(mission.plans):
            step = ("plan_approved", event.version)
            return [
                PlanApproved(**caused_by(event, now, *step), version=event.version, automatic=True)
            ]
        return []
    if mission.approved_version is None or mission.status != "active":
        return []
    return _progress(mission, state, event, now, config)


def _progress(
    m: MissionState, state: State, event: Event, now: datetime, config: Config
) -> list[Event]:
    tasks = m.tasks
    if (tasks and all(t.status == "merged" for t in tasks.values())) or not tasks:
        return [_completed(m, event, now)]
    failed = [t for t in tasks.values() if t.status == "failed"]
    decided: list[Event] = []
    for task in failed:
        if task.attempt >= config.max_attempts:
            reason = f"task {task.spec.id} failed {task.attempt} times; last: {task.last_failure}"
            return [MissionFailed(**caused_by(event, now, "mission_failed"), reason=reason)]
        decided.append(_ready(m, task, task.attempt + 1, event, now, config, task.last_failure))
    running = sum(1 for t in tasks.values() if t.status in IN_FLIGHT) + len(decided)
    everywhere = running + sum(
        1
        for other in state.missions.values()
        if other is not m and other.status == "active"
        for t in other.tasks.values()
        if t.status in IN_FLIGHT
    )
    room = min(m.request.max_concurrency - running, config.global_concurrency - everywhere)
    for task in sorted(tasks.values(), key=lambda t: (t.wave, _order(m, t.spec.id))):
        if room <= 0:
            break
        if task.status != "pending":
            continue
        if all(tasks[d].status == "merged" for d in task.spec.depends_on if d in tasks):
            decided.append(_ready(m, task, 1, event, now, config, ""))
            room -= 1
    return decided


def _order(m: MissionState, task_id: str) -> int:
    assert m.approved_version is not None
    ids = [t.id for t in m.plans[m.approved_version].tasks]
    return ids.index(task_id)


def _ready(
    m: MissionState,
    task: TaskState,
    attempt: int,
    cause: Event,
    now: datetime,
    config: Config,
    context: str,
) -> TaskReady:
    model = m.request.model_overrides.get(task.spec.tier) or config.tier_models[task.spec.tier]
    return TaskReady(
        **caused_by(cause, now, "task_ready", task.spec.id, attempt),
        task=task.spec,
        attempt=attempt,
        model=model,
        requirement=m.request.requirement,
        wave=task.wave,
        context=f"Previous attempt failed: {context}" if context else "",
    )


def _completed(m: MissionState, cause: Event, now: datetime) -> MissionCompleted:
    started = m.request.occurred_at
    return MissionCompleted(
        **caused_by(cause, now, "mission_completed"),
        final_sha=m.integration_head or m.base_sha or "",
        integration_branch=m.integration_branch or "",
        tasks_merged=sum(1 for t in m.tasks.values() if t.status == "merged"),
        usage=m.usage,
        duration_seconds=max(0.0, (now - started).total_seconds()),
    )
