"""A mission's status, as a pure function of its row and the next event."""

from __future__ import annotations

from aether_events import (
    Event,
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
)
from aether_gateway.domain.model import TERMINAL_STATUSES, Mission, MissionStatus


def resumed_status(mission: Mission) -> MissionStatus:
    """Where a paused mission goes back to, judged from how far it had come."""
    if mission.approved_version is not None:
        return "running"
    if mission.plan_version is not None:
        return "awaiting_approval"
    if mission.questions:
        return "awaiting_input"
    if mission.integration_branch is not None:
        return "preparing"
    return "requested"


def next_status(mission: Mission, event: Event) -> MissionStatus:
    """The mission's status after ``event``.

    A finished mission (completed, answered, failed or cancelled) stays finished whatever
    arrives late; a paused one stays paused until it is resumed or finished.
    """
    current = mission.status
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
            return resumed_status(mission) if current == "paused" else current
    if current == "paused":
        return current
    match event:
        case RepositoryPrepared():
            return "preparing" if current == "requested" else current
        case PlanClarificationRequested():
            return "awaiting_input" if mission.approved_version is None else current
        case MissionMessagePosted():
            # Answers to the planner's questions: it plans again.
            return "preparing" if current == "awaiting_input" else current
        case PlanRevisionRequested():
            return "preparing" if mission.approved_version is None else current
        case PlanProduced(version=version):
            if mission.approved_version is not None and version <= mission.approved_version:
                return current
            return "awaiting_approval"
        case PlanFailed():
            return "plan_failed"
        case PlanApproved():
            return "running"
    return current
