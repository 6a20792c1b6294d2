"""The git broker's projection and decisions, free of I/O.

``evolve`` folds the mission events the broker cares about into ``BrokerState``. ``decide``
turns an incoming event into one ``Action`` for the repository adapter, judged against
that state so a redelivered or replayed event never repeats a step whose result is
already in the stream. The ``*_event`` builders turn the adapter's outcome into the
event to publish, with ids derived from the step so a repeat publishes the same id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from aether_events import (
    AgentCompleted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    RepoFile,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    caused_by,
)
from aether_git_broker.naming import InvalidName, Naming, component_problem, ref_name_problem

TaskKey = tuple[str, int]

REMOTE_NOT_SUPPORTED = "cloning remote repositories is not supported yet"

# scheme://… or scp-like user@host:path
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[^/\s]+@[^/\s]+:)")

# --- state -------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRepo:
    path: str
    base_branch: str
    base_sha: str
    integration_branch: str


@dataclass(frozen=True)
class Workspace:
    branch: str
    worktree_path: str
    base_sha: str


@dataclass(frozen=True)
class MissionView:
    mission_id: str
    repository: str = ""
    base_branch: str = "main"
    prepared: PreparedRepo | None = None
    terminal: bool = False
    workspaces: Mapping[TaskKey, Workspace] = field(default_factory=dict)
    merged: Mapping[TaskKey, str] = field(default_factory=dict)
    conflicted: frozenset[TaskKey] = frozenset()


@dataclass(frozen=True)
class BrokerState:
    missions: Mapping[str, MissionView] = field(default_factory=dict)

    def mission(self, mission_id: str) -> MissionView | None:
        return self.missions.get(mission_id)


def _update(state: BrokerState, view: MissionView) -> BrokerState:
    return BrokerState(missions={**state.missions, view.mission_id: view})


def evolve(state: BrokerState, event: Event) -> BrokerState:
    """Fold one event into the state; events the broker does not need leave it as is."""
    view = state.mission(event.mission_id) or MissionView(mission_id=event.mission_id)
    match event:
        case MissionRequested():
            return _update(
                state, replace(view, repository=event.repository, base_branch=event.base_branch)
            )
        case RepositoryPrepared():
            prepared = PreparedRepo(
                path=event.repository_path,
                base_branch=event.base_branch,
                base_sha=event.base_sha,
                integration_branch=event.integration_branch,
            )
            return _update(state, replace(view, prepared=prepared))
        case WorkspaceReady():
            key = (event.task.id, event.attempt)
            workspace = Workspace(
                branch=event.branch, worktree_path=event.worktree_path, base_sha=event.base_sha
            )
            return _update(state, replace(view, workspaces={**view.workspaces, key: workspace}))
        case BranchMerged():
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, merged={**view.merged, key: event.merge_sha}))
        case MergeConflicted():
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, conflicted=view.conflicted | {key}))
        case MissionCompleted() | MissionFailed() | MissionCancelled():
            # Nothing is decided for a finished mission beyond cleaning up, so its
            # per-task records can go.
            return _update(
                state,
                replace(view, terminal=True, workspaces={}, merged={}, conflicted=frozenset()),
            )
        case _:
            return state


# --- actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class RejectMission:
    reason: str


@dataclass(frozen=True)
class PrepareRepository:
    repository: str
    base_branch: str
    integration_branch: str


@dataclass(frozen=True)
class PrepareWorkspace:
    repository_path: str
    integration_branch: str
    branch: str
    worktree_path: str


@dataclass(frozen=True)
class MergeTask:
    repository_path: str
    integration_branch: str
    since_sha: str
    task_id: str
    attempt: int
    commit_sha: str
    worktree_path: str


@dataclass(frozen=True)
class RemoveWorktrees:
    repository_path: str
    directory: str


Action = Ignore | RejectMission | PrepareRepository | PrepareWorkspace | MergeTask | RemoveWorktrees


def is_remote(repository: str) -> bool:
    """Whether ``repository`` names a remote (a URL or ``user@host:path``), not a path."""
    return bool(_URL.match(repository)) and not repository.startswith("file://")


def decide(state: BrokerState, event: Event, naming: Naming) -> Action:
    """What to do about ``event``, given everything folded so far (``event`` included)."""
    view = state.mission(event.mission_id)
    match event:
        case MissionRequested():
            return _on_requested(view, event, naming)
        case TaskReady():
            return _on_task_ready(view, event, naming)
        case AgentCompleted():
            return _on_agent_completed(view, event, naming)
        case MissionCompleted() | MissionFailed() | MissionCancelled():
            if view is None or view.prepared is None:
                return Ignore("no repository was prepared for this mission")
            return RemoveWorktrees(
                repository_path=view.prepared.path,
                directory=naming.mission_worktrees(event.mission_id),
            )
        case _:
            return Ignore("not an event the git broker acts on")


def _on_requested(view: MissionView | None, event: MissionRequested, naming: Naming) -> Action:
    if view is not None and view.terminal:
        return Ignore("mission already finished")
    if view is not None and view.prepared is not None:
        return Ignore("repository already prepared")
    if is_remote(event.repository):
        return RejectMission(f"{REMOTE_NOT_SUPPORTED}: {event.repository}")
    if not event.repository.strip():
        return RejectMission("no repository was given")
    problem = ref_name_problem(event.base_branch)
    if problem is not None:
        return RejectMission(f"base branch {event.base_branch!r} is not a valid name: {problem}")
    problem = component_problem(event.mission_id)
    if problem is not None:
        return RejectMission(f"mission id {event.mission_id!r} cannot name a branch: {problem}")
    return PrepareRepository(
        repository=event.repository,
        base_branch=event.base_branch,
        integration_branch=naming.integration_branch(event.mission_id),
    )


def _on_task_ready(view: MissionView | None, event: TaskReady, naming: Naming) -> Action:
    if view is None or view.prepared is None:
        return Ignore("no repository prepared for this mission")
    if view.terminal:
        return Ignore("mission already finished")
    key = (event.task.id, event.attempt)
    if key in view.workspaces:
        return Ignore("workspace already published")
    if key in view.merged or key in view.conflicted:
        return Ignore("attempt already merged or conflicted")
    problem = component_problem(event.task.id)
    if problem is not None:
        return RejectMission(f"task id {event.task.id!r} cannot name a git branch: {problem}")
    if event.attempt < 0:
        return RejectMission(f"task {event.task.id!r} has a negative attempt {event.attempt}")
    try:
        branch = naming.task_branch(event.mission_id, event.task.id, event.attempt)
    except InvalidName as error:
        return RejectMission(str(error))
    return PrepareWorkspace(
        repository_path=view.prepared.path,
        integration_branch=view.prepared.integration_branch,
        branch=branch,
        worktree_path=naming.worktree_path(event.mission_id, event.task.id, event.attempt),
    )


def _on_agent_completed(view: MissionView | None, event: AgentCompleted, naming: Naming) -> Action:
    if view is None or view.prepared is None:
        return Ignore("no repository prepared for this mission")
    if view.terminal:
        return Ignore("mission already finished")
    key = (event.task_id, event.attempt)
    if key in view.merged:
        return Ignore("attempt already merged")
    if key in view.conflicted:
        return Ignore("attempt already reported as conflicting")
    if component_problem(event.task_id) is not None:
        return Ignore("task id cannot name a git branch; it never had a workspace")
    workspace = view.workspaces.get(key)
    worktree = (
        workspace.worktree_path
        if workspace is not None
        else naming.worktree_path(event.mission_id, event.task_id, event.attempt)
    )
    return MergeTask(
        repository_path=view.prepared.path,
        integration_branch=view.prepared.integration_branch,
        since_sha=view.prepared.base_sha,
        task_id=event.task_id,
        attempt=event.attempt,
        commit_sha=event.commit_sha,
        worktree_path=worktree,
    )


# --- outcomes of the adapter, and the events they become ----------------------------


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


MergeKind = Literal["merged", "fast_forward", "already_merged", "conflict", "verify_failed"]


@dataclass(frozen=True)
class MergeOutcome:
    """What merging one task attempt did.

    ``sha`` is the integration head after the merge (or, for a conflict or a failed
    verification, the head that was left untouched); ``files`` are the paths changed by
    the merge or the conflicted ones; ``detail`` says why a merge did not happen.
    """

    kind: MergeKind
    sha: str
    files: tuple[str, ...] = ()
    fast_forward: bool = False
    detail: str = ""


def repository_prepared_event(
    cause: MissionRequested, now: datetime, outcome: RepositoryOutcome
) -> RepositoryPrepared:
    return RepositoryPrepared(
        **caused_by(cause, now, "repository_prepared"),
        repository_path=outcome.path,
        base_branch=outcome.base_branch,
        base_sha=outcome.base_sha,
        integration_branch=outcome.integration_branch,
        files=list(outcome.files),
        file_count=outcome.file_count,
        files_truncated=outcome.files_truncated,
    )


def mission_failed_event(cause: Event, now: datetime, reason: str) -> MissionFailed:
    """The broker failing a mission; one per mission whatever the cause."""
    return MissionFailed(**caused_by(cause, now, "mission_failed", "git-broker"), reason=reason)


def workspace_ready_event(
    cause: TaskReady, now: datetime, outcome: WorkspaceOutcome
) -> WorkspaceReady:
    return WorkspaceReady(
        **caused_by(cause, now, "workspace_ready", cause.task.id, cause.attempt),
        task=cause.task,
        attempt=cause.attempt,
        model=cause.model,
        branch=outcome.branch,
        worktree_path=outcome.worktree_path,
        base_sha=outcome.base_sha,
        requirement=cause.requirement,
        max_cost_usd=cause.max_cost_usd,
        context=cause.context,
    )


def merge_event(
    cause: AgentCompleted, now: datetime, integration_branch: str, outcome: MergeOutcome
) -> BranchMerged | MergeConflicted:
    if outcome.kind in ("conflict", "verify_failed"):
        # A failed verification is reported like a conflict: the task runs again on the
        # current head, with the command's output as its context.
        return MergeConflicted(
            **caused_by(cause, now, "merge_conflicted", cause.task_id, cause.attempt),
            task_id=cause.task_id,
            attempt=cause.attempt,
            files=list(outcome.files),
            integration_sha=outcome.sha,
            detail=outcome.detail,
        )
    return BranchMerged(
        **caused_by(cause, now, "branch_merged", cause.task_id, cause.attempt),
        task_id=cause.task_id,
        attempt=cause.attempt,
        merge_sha=outcome.sha,
        integration_branch=integration_branch,
        fast_forward=outcome.fast_forward,
        files_changed=list(outcome.files),
    )
