"""The read model, pure: how one event changes a mission's rows.

``fold(view, event)`` takes the rows the event can touch (the mission and its tasks) and
returns the rows to write. It does no I/O and reads no clock, so every status rule below
is tested with plain values; the PostgreSQL adapter loads the view, calls ``fold`` and
writes the ``Changes`` together with the stream position in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec
from msgspec.structs import replace

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
    PlanRevisionRequested,
    RepositoryPrepared,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskTimedOut,
    UsageRecorded,
    WorkspaceReady,
)

MissionStatus = Literal[
    "requested",
    "preparing",
    "awaiting_approval",
    "plan_failed",
    "running",
    "paused",
    "completed",
    "failed",
    "cancelled",
]
TaskStatus = Literal["pending", "ready", "running", "completed", "merged", "conflicted", "failed"]

MISSION_STATUSES: Final[tuple[str, ...]] = MissionStatus.__args__  # type: ignore[attr-defined]
TASK_STATUSES: Final[tuple[str, ...]] = TaskStatus.__args__  # type: ignore[attr-defined]
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"completed", "failed", "cancelled"})


class Mission(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``missions``."""

    id: str
    status: MissionStatus
    repository: str
    base_branch: str
    requirement: str
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    auto_approve: bool = False
    budget_usd: float | None = None
    max_concurrency: int = 4
    max_tasks: int = 20
    requested_by: str | None = None
    integration_branch: str | None = None
    base_sha: str | None = None
    final_sha: str | None = None
    plan_version: int | None = None
    approved_version: int | None = None
    offline: bool = False
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cache_read: int = 0
    tokens_cache_write: int = 0
    # The sum of the costs that are known; ``None`` until one is. ``cost_complete`` turns
    # false once a model call of unknown price is recorded, so a partial sum never
    # passes for the whole cost.
    cost_usd: float | None = None
    cost_complete: bool = True
    error: str | None = None


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``plans``: a version of a mission's plan."""

    mission_id: str
    version: int
    tasks: list[PlannedTask]
    produced_at: datetime
    rationale: str = ""
    model: str = ""
    offline: bool = False
    repairs: list[str] = msgspec.field(default_factory=list)


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``tasks``: where a planned task stands now."""

    mission_id: str
    task_id: str
    title: str
    updated_at: datetime
    position: int = 0
    description: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    depends_on: list[str] = msgspec.field(default_factory=list)
    tier: str = "standard"
    status: TaskStatus = "pending"
    attempt: int = 0
    model: str | None = None
    branch: str | None = None
    base_sha: str | None = None
    commit_sha: str | None = None
    merge_sha: str | None = None
    error: str | None = None


class MissionView(msgspec.Struct, kw_only=True):
    """The rows an event may change: the mission (if known) and its tasks by id."""

    mission: Mission | None = None
    tasks: dict[str, Task] = msgspec.field(default_factory=dict)


class Changes(msgspec.Struct, kw_only=True):
    """What to write for one event; empty when the event changes nothing."""

    mission: Mission | None = None
    plan: Plan | None = None
    tasks: list[Task] = msgspec.field(default_factory=list)
    removed_tasks: list[str] = msgspec.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return (
            self.mission is None and self.plan is None and not self.tasks and not self.removed_tasks
        )


# --- mission status -------------------------------------------------------------------


def resumed_status(mission: Mission) -> MissionStatus:
    """Where a paused mission goes back to, judged from how far it had come."""
    if mission.approved_version is not None:
        return "running"
    if mission.plan_version is not None:
        return "awaiting_approval"
    if mission.integration_branch is not None:
        return "preparing"
    return "requested"


def next_status(mission: Mission, event: Event) -> MissionStatus:
    """The mission's status after ``event``.

    A finished mission (completed, failed or cancelled) stays finished whatever arrives
    late; a paused one stays paused until it is resumed or finished.
    """
    current = mission.status
    if current in TERMINAL_STATUSES:
        return current
    match event:
        case MissionCompleted():
            return "completed"
        case MissionFailed():
            return "failed"
        case MissionCancelled():
            return "cancelled"
        case MissionPaused():
            return "paused"
        case MissionResumed():
            return resumed_status(mission) if current == "paused" else current
    if current == "paused":
        return current
    match event:
        case RepositoryPrepared():
            return "preparing" if current == "requested" else current
        case PlanRevisionRequested():
            return "preparing"
        case PlanProduced(version=version):
            if mission.approved_version is not None and version <= mission.approved_version:
                return current
            return "awaiting_approval"
        case PlanFailed():
            return "plan_failed"
        case PlanApproved():
            return "running"
    return current


# --- folding ---------------------------------------------------------------------------


def fold(view: MissionView, event: Event) -> Changes:
    """The rows ``event`` changes, given the rows it may touch."""
    if isinstance(event, MissionRequested):
        if view.mission is not None:
            return Changes()  # the mission exists; a second request for the id is ignored
        return Changes(mission=_requested(event))
    mission = view.mission
    if mission is None:
        return Changes()  # an event for a mission we never saw requested: history only
    changes = _fold_tasks(view, event)
    updated = _fold_mission(mission, event)
    status = next_status(updated, event)
    updated = replace(updated, status=status, updated_at=max(mission.updated_at, event.occurred_at))
    if updated != mission:
        changes.mission = updated
    return changes


def _requested(event: MissionRequested) -> Mission:
    return Mission(
        id=event.mission_id,
        status="requested",
        repository=event.repository,
        base_branch=event.base_branch,
        requirement=event.requirement,
        correlation_id=event.correlation_id,
        auto_approve=event.auto_approve,
        budget_usd=event.budget_usd,
        max_concurrency=event.max_concurrency,
        max_tasks=event.max_tasks,
        requested_by=event.requested_by,
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


def _fold_mission(mission: Mission, event: Event) -> Mission:
    """Every mission column except ``status`` and ``updated_at``."""
    match event:
        case RepositoryPrepared():
            return replace(
                mission, integration_branch=event.integration_branch, base_sha=event.base_sha
            )
        case PlanProduced():
            if mission.plan_version is not None and event.version <= mission.plan_version:
                return mission
            return replace(
                mission,
                plan_version=event.version,
                model=event.model or mission.model,
                offline=mission.offline or event.offline,
                error=None,
            )
        case PlanFailed():
            return replace(mission, error=event.reason)
        case PlanApproved():
            if mission.approved_version is not None and event.version <= mission.approved_version:
                return mission
            return replace(mission, approved_version=event.version)
        case UsageRecorded():
            return _add_usage(mission, event)
        case MissionCompleted():
            return replace(
                mission, final_sha=event.final_sha, integration_branch=event.integration_branch
            )
        case MissionFailed():
            return replace(mission, error=event.reason)
        case MissionCancelled():
            return replace(mission, error=event.reason or "cancelled")
    return mission


def _add_usage(mission: Mission, event: UsageRecorded) -> Mission:
    usage = event.usage
    cost = mission.cost_usd
    if usage.cost_usd is not None:
        cost = (cost or 0.0) + usage.cost_usd
    return replace(
        mission,
        tokens_in=mission.tokens_in + usage.input_tokens,
        tokens_out=mission.tokens_out + usage.output_tokens,
        tokens_cache_read=mission.tokens_cache_read + usage.cache_read_input_tokens,
        tokens_cache_write=mission.tokens_cache_write + usage.cache_creation_input_tokens,
        cost_usd=cost,
        cost_complete=mission.cost_complete and usage.cost_usd is not None,
        offline=mission.offline or event.offline,
    )


def _plan_task(mission_id: str, planned: PlannedTask, position: int, now: datetime) -> Task:
    return Task(
        mission_id=mission_id,
        task_id=planned.id,
        title=planned.title,
        description=planned.description,
        files=list(planned.files),
        depends_on=list(planned.depends_on),
        tier=planned.tier,
        position=position,
        updated_at=now,
    )


def _fold_plan(view: MissionView, event: PlanProduced) -> Changes:
    """A new plan version replaces the task list; tasks already under way are kept."""
    mission = view.mission
    assert mission is not None
    plan = Plan(
        mission_id=event.mission_id,
        version=event.version,
        tasks=list(event.tasks),
        rationale=event.rationale,
        model=event.model,
        offline=event.offline,
        repairs=list(event.repairs),
        produced_at=event.occurred_at,
    )
    changes = Changes(plan=plan)
    if mission.plan_version is not None and event.version <= mission.plan_version:
        return changes  # an older version arriving late is kept as history only
    planned_ids = {task.id for task in event.tasks}
    for position, planned in enumerate(event.tasks):
        fresh = _plan_task(event.mission_id, planned, position, event.occurred_at)
        existing = view.tasks.get(planned.id)
        if existing is not None:
            fresh = replace(
                existing,
                title=fresh.title,
                description=fresh.description,
                files=fresh.files,
                depends_on=fresh.depends_on,
                tier=fresh.tier,
                position=position,
                updated_at=event.occurred_at,
            )
        changes.tasks.append(fresh)
    changes.removed_tasks = sorted(
        task_id
        for task_id, task in view.tasks.items()
        if task_id not in planned_ids and task.status == "pending"
    )
    return changes


def _fold_tasks(view: MissionView, event: Event) -> Changes:
    if isinstance(event, PlanProduced):
        return _fold_plan(view, event)
    updated = _fold_task(view, event)
    return Changes(tasks=[updated] if updated is not None else [])


def _fold_task(view: MissionView, event: Event) -> Task | None:
    """The task row after a task event, or ``None`` when nothing changes.

    Events from an attempt older than the task's current one are late news and ignored,
    and a merged task stays merged: its work is on the integration branch.
    """
    match event:
        case TaskReady() | WorkspaceReady():
            task_id, attempt = event.task.id, event.attempt
        case (
            AgentStarted()
            | AgentCompleted()
            | AgentFailed()
            | BranchMerged()
            | MergeConflicted()
            | TaskRetried()
            | TaskTimedOut()
            | TaskEscalated()
        ):
            task_id, attempt = event.task_id, event.attempt
        case _:
            return None
    task = view.tasks.get(task_id)
    if task is None:
        if not isinstance(event, TaskReady | WorkspaceReady):
            return None  # news of a task the plan never listed
        task = _plan_task(event.mission_id, event.task, len(view.tasks), event.occurred_at)
    if attempt < task.attempt or task.status == "merged":
        return None
    task = replace(task, attempt=attempt, updated_at=event.occurred_at)
    match event:
        case TaskReady():
            return replace(task, status="ready", model=event.model, error=None)
        case WorkspaceReady():
            return replace(
                task,
                status="running",
                model=event.model,
                branch=event.branch,
                base_sha=event.base_sha,
                error=None,
            )
        case AgentStarted():
            return replace(task, status="running", model=event.model)
        case AgentCompleted():
            return replace(
                task, status="completed", commit_sha=event.commit_sha, branch=event.branch
            )
        case AgentFailed():
            return replace(task, status="failed", error=event.reason)
        case BranchMerged():
            return replace(task, status="merged", merge_sha=event.merge_sha, error=None)
        case MergeConflicted():
            files = ", ".join(event.files) or "unknown files"
            return replace(task, status="conflicted", error=f"merge conflict in {files}")
        case TaskRetried():
            return replace(task, status="pending", error=event.reason)
        case TaskTimedOut():
            return replace(task, status="failed", error="timed out")
        case TaskEscalated():
            return replace(task, status="failed", error=f"escalated: {event.reason}")
    return None
