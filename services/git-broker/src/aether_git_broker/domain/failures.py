"""What the broker does when repository work fails, free of I/O.

The handler catches what an adapter raised and names it (``Refused``: the repository, its
remote or a path said no, and asking again cannot change that; ``DiskFailed``: the
broker's own disk failed, which may pass). These rules decide what follows:

- a refused step fails the mission (``MissionFailed``, one per mission);
- a disk failure while creating a task's worktree fails only that attempt, retryable, so
  the scheduler may run the task again; elsewhere the delivery is retried;
- a push that fails is retried by redelivery until ``PUSH_ATTEMPTS`` deliveries have
  failed, then given up: the mission's result stays on the integration branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from aether_events import Event, MissionFailed, TaskReady, WorkspaceFailed
from aether_git_broker.domain.decisions import Action, PrepareWorkspace
from aether_git_broker.domain.outcomes import mission_failed_event, workspace_failed_event

# Deliveries of one MissionCompleted whose push may fail before the push is given up.
PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class Refused:
    """The repository, its remote or a path refused the step; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class DiskFailed:
    """The broker's disk failed the step; ``error`` is what the system said."""

    error: str


Failure = Refused | DiskFailed


def failure_event(
    cause: Event, action: Action, failure: Failure, now: datetime
) -> MissionFailed | WorkspaceFailed | None:
    """The event answering a failed step, or ``None`` when the delivery should be retried
    instead (the failure may pass and nothing was decided)."""
    if isinstance(failure, Refused):
        return mission_failed_event(cause, now, failure.reason)
    if isinstance(action, PrepareWorkspace) and isinstance(cause, TaskReady):
        # The disk, not the mission: the scheduler may try the task again.
        reason = f"could not create the worktree {action.worktree_path}: {failure.error}"
        return workspace_failed_event(cause, now, reason, retryable=True)
    return None


def after_push_failure(deliveries: int) -> Literal["retry", "give_up"]:
    """Whether a failed push is tried again (by redelivering its trigger) after it failed
    on the ``deliveries``-th delivery."""
    return "retry" if deliveries < PUSH_ATTEMPTS else "give_up"
