"""Where a mission and its tasks stand, derived from their events: the one statement of
these rules, used by the gateway's read model, the scheduler, the other services and the
command line.

A mission's status moves on lifecycle events only. A finished mission (completed,
answered, failed or cancelled) stays finished whatever arrives late; a paused one stays
paused until it is resumed (it then goes back to where its facts say it had come) or
finished. ``MissionProgress`` holds the few facts the rules need, so any projection can
carry it next to its own state and fold it with ``advance``.

Pure: standard library and the catalogue only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal, get_args

from aether_events.catalogue import (
    TERMINAL_TYPES,
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    BranchMerged,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionMessagePosted,
    MissionPaused,
    MissionResumed,
    PlanApproved,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    TaskTimedOut,
    WorkspaceFailed,
    WorkspaceReady,
)

MissionStatus = Literal[
    "requested",
    "preparing",
    "awaiting_input",
    "awaiting_approval",
    "plan_failed",
    "running",
    "paused",
    "completed",
    "answered",
    "failed",
    "cancelled",
]
TaskStatus = Literal[
    "pending",
    "ready",
    "running",
    "completed",
    "merged",
    "conflicted",
    "failed",
    "escalated",
    "skipped",
]
# The coarse view metrics and dashboards count missions by (``aether_missions{state}``).
MissionPhase = Literal["planning", "active", "paused", "completed", "failed", "cancelled"]

MISSION_STATUSES: Final[tuple[MissionStatus, ...]] = get_args(MissionStatus)
TASK_STATUSES: Final[tuple[TaskStatus, ...]] = get_args(TaskStatus)
MISSION_PHASES: Final[tuple[MissionPhase, ...]] = get_args(MissionPhase)
TERMINAL_STATUSES: Final[frozenset[MissionStatus]] = frozenset(
    {"completed", "answered", "failed", "cancelled"}
)
# A mission in one of these waits for a person: answers to the planner's questions, or
# the plan's approval. (A task waits for one when it is escalated.)
NEEDS_PERSON_STATUSES: Final[frozenset[MissionStatus]] = frozenset(
    {"awaiting_input", "awaiting_approval"}
)
# A task in one of these is settled: its work is merged, or a person said it is not needed.
SETTLED_TASK_STATUSES: Final[frozenset[TaskStatus]] = frozenset({"merged", "skipped"})
NEEDS_PERSON_TASK_STATUSES: Final[frozenset[TaskStatus]] = frozenset({"escalated"})
# A person may run a task in one of these again, or skip it.
RETRYABLE_TASK_STATUSES: Final[frozenset[TaskStatus]] = frozenset({"escalated", "failed"})

_PHASES: Final[dict[MissionStatus, MissionPhase]] = {
    "running": "active",
    "paused": "paused",
    "completed": "completed",
    "answered": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def is_terminal(event: Event) -> bool:
    """Whether ``event`` ends its mission (completed, answered, failed or cancelled)."""
    return type(event) in TERMINAL_TYPES


def phase_of(status: MissionStatus) -> MissionPhase:
    """The coarse phase of a status: everything before the plan's approval is planning."""
    return _PHASES.get(status, "planning")


@dataclass(frozen=True)
class MissionProgress:
    """What the status rules need to know of a mission, besides its status."""

    status: MissionStatus = "requested"
    prepared: bool = False
    plan_version: int | None = None
    approved_version: int | None = None
    # The planner asked questions nobody has answered yet.
    asking: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    @property
    def needs_person(self) -> bool:
        return self.status in NEEDS_PERSON_STATUSES


def advance(progress: MissionProgress, event: Event) -> MissionProgress:
    """The mission's progress after ``event`` (the mission's own ``MissionRequested``
    starts it at ``MissionProgress()``)."""
    facts = _facts(progress, event)
    status = next_status(facts, event)
    if facts is progress and status == progress.status:
        return progress
    return replace(facts, status=status)


def _facts(p: MissionProgress, event: Event) -> MissionProgress:
    match event:
        case RepositoryPrepared() if not p.prepared:
            return replace(p, prepared=True)
        case PlanClarificationRequested(questions=questions):
            return replace(p, asking=bool(questions))
        case MissionMessagePosted() | MissionAnswered() if p.asking:
            return replace(p, asking=False)
        case PlanProduced(version=version):
            if p.plan_version is not None and version <= p.plan_version:
                return p
            return replace(p, plan_version=version, asking=False)
        case PlanApproved(version=version):
            if p.approved_version is not None and version <= p.approved_version:
                return p
            return replace(p, approved_version=version)
    return p


def resumed_status(progress: MissionProgress) -> MissionStatus:
    """Where a paused mission goes back to, judged from how far it had come."""
    if progress.approved_version is not None:
        return "running"
    if progress.plan_version is not None:
        return "awaiting_approval"
    if progress.asking:
        return "awaiting_input"
    if progress.prepared:
        return "preparing"
    return "requested"


def next_status(progress: MissionProgress, event: Event) -> MissionStatus:
    """The status after ``event``, given the progress *including* ``event``'s facts
    (``advance`` folds both; a projection that stores the facts itself calls this)."""
    current = progress.status
    if current in TERMINAL_STATUSES:
        return current
    match event:
        case MissionCompleted():
            return "completed"
        case MissionAnswered():
            return "answered"
        case MissionFailed():
            return "failed"
        case MissionCancelled():
            return "cancelled"
        case MissionPaused():
            return "paused"
        case MissionResumed():
            return resumed_status(progress) if current == "paused" else current
    if current == "paused":
        return current
    match event:
        case RepositoryPrepared():
            return "preparing" if current == "requested" else current
        case PlanClarificationRequested():
            return "awaiting_input" if progress.approved_version is None else current
        case MissionMessagePosted():
            # Answers to the planner's questions: it plans again.
            return "preparing" if current == "awaiting_input" else current
        case PlanRevisionRequested():
            return "preparing" if progress.approved_version is None else current
        case PlanProduced(version=version):
            if progress.approved_version is not None and version <= progress.approved_version:
                return current
            return "awaiting_approval"
        case PlanFailed():
            return "plan_failed"
        case PlanApproved():
            return "running"
    return current


def task_status_after(current: TaskStatus, event: Event) -> TaskStatus | None:
    """The status a task moves to on ``event``, or ``None`` when the event does not move
    it. ``event`` is about the task's current attempt (news of an older attempt is for
    the caller to drop); a settled task (merged or skipped) moves no more, and a person's
    retry applies only to a task that stopped (escalated or failed)."""
    if current in SETTLED_TASK_STATUSES:
        return None
    match event:
        case TaskReady():
            return "ready"
        case WorkspaceReady() | AgentStarted():
            return "running"
        case AgentCompleted() | MergeWithheld():
            # Withheld: committed and never merged, its mission cancelled first.
            return "completed"
        case AgentFailed() | WorkspaceFailed() | TaskTimedOut():
            return "failed"
        case BranchMerged():
            return "merged"
        case MergeConflicted():
            return "conflicted"
        case TaskRetried():
            return "pending"
        case TaskEscalated():
            return "escalated"
        case TaskSkipped():
            return "skipped"
        case TaskRetryRequested():
            return "pending" if current in RETRYABLE_TASK_STATUSES else None
    return None
