"""What the adapters report, and the events those outcomes become.

Event ids are derived from the step (mission, kind, task, attempt), so a repeated step
publishes the same id and the stream drops the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from aether_events import (
    CARRIED_TEXT_BYTES,
    AgentCompleted,
    BranchMerged,
    BranchPushed,
    BranchPushFailed,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionFailed,
    MissionRequested,
    RepoFile,
    RepositoryPrepared,
    TaskReady,
    WorkspaceFailed,
    WorkspaceReady,
    bounded,
    bounded_paths,
    caused_by,
    step_ids,
)

# What the broker's events carry of text and paths an attempt chose (its commit's paths,
# what its code printed under the mission's verification, an error naming them) is cut
# (``aether_events.bounds``), so no attempt can make one larger than the bus takes. A
# verification's account keeps more: the next attempt reads it to fix what failed.
VERIFICATION_BYTES = 4 * CARRIED_TEXT_BYTES


@dataclass(frozen=True)
class RepositoryOutcome:
    path: str
    base_branch: str
    base_sha: str
    integration_branch: str
    files: tuple[RepoFile, ...]
    file_count: int
    files_truncated: bool


@dataclass(frozen=True)
class WorkspaceOutcome:
    branch: str
    worktree_path: str
    base_sha: str
    created: bool
    # A resolution attempt's workspace: the files left with conflict markers.
    conflicted_files: tuple[str, ...] = ()
    git_dir: str = ""
    push_token: str = ""


MergeKind = Literal[
    "merged", "fast_forward", "already_merged", "conflict", "verify_failed", "withheld"
]
# How a verification command ended; ``stopped``: by a stop order (its mission was
# cancelled), not by the command or a limit.
VerificationResult = Literal["passed", "failed", "timed_out", "stopped"]


@dataclass(frozen=True)
class MergeOutcome:
    """What merging one task attempt did.

    ``sha`` is the integration head after the merge (or, for a conflict or a failed
    verification, the head that was left untouched); ``files`` are the paths changed by
    the merge or the conflicted ones; ``detail`` says why a merge did not happen
    (``withheld``: the mission was cancelled before the branch moved).
    """

    kind: MergeKind
    sha: str
    files: tuple[str, ...] = ()
    fast_forward: bool = False
    detail: str = ""
    # Files both sides had changed, merged line by line.
    lines_merged: tuple[str, ...] = ()
    # Why a ``conflict`` was refused (``MergeConflicted.refusal``): ``conflict``,
    # ``unsafe_paths``, ``conflict_markers``, ``missing_commit`` or ``too_large``.
    refusal: str = ""
    # ``withheld`` after a verification the cancel stopped: what it said (its account and
    # output, as a failed verification's ``detail``).
    verification: str = ""


def repository_prepared_event(
    cause: MissionRequested, now: datetime, outcome: RepositoryOutcome, delivery_remote: str = ""
) -> RepositoryPrepared:
    return RepositoryPrepared(
        **caused_by(cause, now, step_ids.repository_prepared()),
        repository_path=outcome.path,
        base_branch=outcome.base_branch,
        base_sha=outcome.base_sha,
        integration_branch=outcome.integration_branch,
        files=list(outcome.files),
        file_count=outcome.file_count,
        files_truncated=outcome.files_truncated,
        delivery_remote=delivery_remote,
    )


def mission_failed_event(cause: Event, now: datetime, reason: str) -> MissionFailed:
    """The broker failing a mission; one per mission whatever the cause."""
    return MissionFailed(
        **caused_by(cause, now, step_ids.mission_failed("git-broker")), reason=bounded(reason)
    )


def workspace_failed_event(
    cause: TaskReady, now: datetime, reason: str, *, retryable: bool
) -> WorkspaceFailed:
    return WorkspaceFailed(
        **caused_by(cause, now, step_ids.workspace_failed(cause.task.id, cause.attempt)),
        task_id=cause.task.id,
        attempt=cause.attempt,
        reason=bounded(reason),
        retryable=retryable,
    )


def workspace_ready_event(
    cause: TaskReady, now: datetime, outcome: WorkspaceOutcome
) -> WorkspaceReady:
    return WorkspaceReady(
        **caused_by(cause, now, step_ids.workspace_ready(cause.task.id, cause.attempt)),
        task=cause.task,
        attempt=cause.attempt,
        model=cause.model,
        branch=outcome.branch,
        worktree_path=outcome.worktree_path,
        base_sha=outcome.base_sha,
        requirement=cause.requirement,
        git_dir=outcome.git_dir,
        push_token=outcome.push_token,
        max_cost_usd=cause.max_cost_usd,
        context=cause.context,
        runtime=cause.runtime,
        resolve_sha=cause.resolve_sha,
        conflicted_files=bounded_paths(outcome.conflicted_files),
    )


def merge_event(
    cause: AgentCompleted,
    now: datetime,
    integration_branch: str,
    outcome: MergeOutcome,
    *,
    resolution: bool = False,
) -> BranchMerged | MergeConflicted | MergeWithheld:
    if outcome.kind == "withheld":
        return MergeWithheld(
            **caused_by(cause, now, step_ids.merge_withheld(cause.task_id, cause.attempt)),
            task_id=cause.task_id,
            attempt=cause.attempt,
            commit_sha=cause.commit_sha,
            integration_sha=outcome.sha,
            reason=bounded(outcome.detail),
            verification=bounded(outcome.verification, VERIFICATION_BYTES),
        )
    if outcome.kind in ("conflict", "verify_failed"):
        # A failed verification is reported like a conflict: the task runs again on the
        # current head, with the command's output as its context.
        return MergeConflicted(
            **caused_by(cause, now, step_ids.merge_conflicted(cause.task_id, cause.attempt)),
            task_id=cause.task_id,
            attempt=cause.attempt,
            files=bounded_paths(outcome.files),
            integration_sha=outcome.sha,
            detail=bounded(outcome.detail, VERIFICATION_BYTES),
            refusal="verification_failed" if outcome.kind == "verify_failed" else outcome.refusal,
        )
    return BranchMerged(
        **caused_by(cause, now, step_ids.branch_merged(cause.task_id, cause.attempt)),
        task_id=cause.task_id,
        attempt=cause.attempt,
        merge_sha=outcome.sha,
        integration_branch=integration_branch,
        fast_forward=outcome.fast_forward,
        files_changed=bounded_paths(outcome.files),
        lines_merged=bounded_paths(outcome.lines_merged),
        resolution=resolution,
    )


def delivered_event(
    cause: Event, now: datetime, branch: str, sha: str, remote: str, *, already_there: bool
) -> BranchPushed:
    """The completed mission ``cause`` (or the retry asked for) was delivered to ``remote``
    (no credentials in it)."""
    return BranchPushed(
        **caused_by(cause, now, step_ids.branch_pushed(_retry(cause))),
        integration_branch=branch,
        sha=sha,
        remote=remote,
        already_there=already_there,
    )


def delivery_failed_event(
    cause: Event, now: datetime, branch: str, sha: str, remote: str, reason: str
) -> BranchPushFailed:
    """Delivering the completed mission ``cause`` (or the retry asked for) was given up,
    for ``reason``."""
    return BranchPushFailed(
        **caused_by(cause, now, step_ids.branch_push_failed(_retry(cause))),
        integration_branch=branch,
        sha=sha,
        remote=remote,
        reason=bounded(reason),
    )


def _retry(cause: Event) -> str:
    """What tells a retry's delivery from the completion's: the retry's own id."""
    return cause.event_id if isinstance(cause, DeliveryRetryRequested) else ""
