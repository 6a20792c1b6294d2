"""The git broker's projection and decisions, free of I/O.

``evolve`` folds the mission events the broker cares about into ``BrokerState``. ``decide``
turns an incoming event into one ``Action`` for the repository adapter, judged against
that state so a redelivered or replayed event never repeats a step whose result is
already in the stream. The ``*_event`` builders turn the adapter's outcome into the
event to publish, with ids derived from the step so a repeat publishes the same id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from aether_events import (
    AgentCompleted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    RepoFile,
    RepositoryPrepared,
    TaskReady,
    WorkspaceFailed,
    WorkspaceReady,
    caused_by,
)
from aether_git_broker.naming import InvalidName, Naming, component_problem, ref_name_problem
from aether_git_broker.sources import (
    InvalidRepository,
    LocalSource,
    RemoteSource,
    parse_repository,
)

TaskKey = tuple[str, int]


@dataclass(frozen=True)
class Policy:
    """What this broker allows and does, from its configuration.

    ``repository_roots``: when not empty, local repositories must lie inside one of these
    directories; ``verify``: whether missions may ask for a verification command (it runs
    on the broker's machine); ``push_remote``: where a completed mission's integration
    branch is pushed (a URL, a path, or the name of a remote of the repository; ``origin``
    of a mission on a remote repository is the URL it was cloned from), or ``None``.
    """

    repository_roots: tuple[str, ...] = ()
    verify: bool = True
    push_remote: str | None = None


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
    verify_command: str | None = None
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
                state,
                replace(
                    view,
                    repository=event.repository,
                    base_branch=event.base_branch,
                    verify_command=(event.verify_command or "").strip() or None,
                ),
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
        case MissionCompleted() | MissionFailed() | MissionCancelled() | MissionAnswered():
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
    source: LocalSource | RemoteSource
    base_branch: str
    integration_branch: str


@dataclass(frozen=True)
class PrepareWorkspace:
    repository_path: str
    integration_branch: str
    branch: str
    worktree_path: str


@dataclass(frozen=True)
class FailWorkspace:
    """A task the broker cannot give a workspace; the rest of the mission goes on."""

    reason: str


@dataclass(frozen=True)
class MergeTask:
    repository_path: str
    integration_branch: str
    since_sha: str
    task_id: str
    attempt: int
    commit_sha: str
    worktree_path: str
    task_branch: str
    verify_command: str | None = None


@dataclass(frozen=True)
class Push:
    """Deliver the mission's result: the integration branch at ``sha``, to ``target``."""

    integration_branch: str
    sha: str
    target: str


@dataclass(frozen=True)
class FinishMission:
    """Clean up after a mission (its worktrees and task branches) and maybe deliver it.

    ``drop_pool``: no running mission uses the repository any more, so its pooled
    worktrees can go too.
    """

    repository_path: str
    worktrees_directory: str
    task_branches: str
    push: Push | None = None
    drop_pool: bool = False


Action = (
    Ignore
    | RejectMission
    | PrepareRepository
    | PrepareWorkspace
    | FailWorkspace
    | MergeTask
    | FinishMission
)


def decide(state: BrokerState, event: Event, naming: Naming, policy: Policy = Policy()) -> Action:
    """What to do about ``event``, given everything folded so far (``event`` included)."""
    view = state.mission(event.mission_id)
    match event:
        case MissionRequested():
            return _on_requested(view, event, naming, policy)
        case TaskReady():
            return _on_task_ready(view, event, naming)
        case AgentCompleted():
            return _on_agent_completed(view, event, naming)
        case MissionCompleted() | MissionFailed() | MissionCancelled() | MissionAnswered():
            if view is None or view.prepared is None:
                return Ignore("no repository was prepared for this mission")
            push = None
            if isinstance(event, MissionCompleted) and policy.push_remote:
                push = Push(
                    integration_branch=view.prepared.integration_branch,
                    sha=event.final_sha,
                    target=_push_target(policy.push_remote, view.repository),
                )
            path = view.prepared.path
            return FinishMission(
                repository_path=path,
                worktrees_directory=naming.mission_worktrees(event.mission_id),
                task_branches=naming.task_branches(event.mission_id),
                push=push,
                drop_pool=path not in _active_repositories(state),
            )
        case _:
            return Ignore("not an event the git broker acts on")


def _active_repositories(state: BrokerState) -> set[str]:
    return {
        view.prepared.path
        for view in state.missions.values()
        if view.prepared is not None and not view.terminal
    }


def _push_target(remote: str, repository: str) -> str:
    """``origin`` of a mission on a remote repository is the URL it came from."""
    if remote == "origin":
        try:
            source = parse_repository(repository)
        except InvalidRepository:
            return remote
        if isinstance(source, RemoteSource):
            return source.url
    return remote


def _on_requested(
    view: MissionView | None, event: MissionRequested, naming: Naming, policy: Policy
) -> Action:
    if view is not None and view.terminal:
        return Ignore("mission already finished")
    if view is not None and view.prepared is not None:
        return Ignore("repository already prepared")
    try:
        source = parse_repository(event.repository, policy.repository_roots)
    except InvalidRepository as error:
        return RejectMission(str(error))
    problem = ref_name_problem(event.base_branch)
    if problem is not None:
        return RejectMission(f"base branch {event.base_branch!r} is not a valid name: {problem}")
    problem = component_problem(event.mission_id)
    if problem is not None:
        return RejectMission(f"mission id {event.mission_id!r} cannot name a branch: {problem}")
    if (event.verify_command or "").strip() and not policy.verify:
        return RejectMission("this broker does not run verification commands (AETHER_VERIFY=0)")
    if "\0" in (event.verify_command or ""):
        return RejectMission("the verification command contains a NUL character")
    return PrepareRepository(
        source=source,
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
        return FailWorkspace(f"task id {event.task.id!r} cannot name a git branch: {problem}")
    if event.attempt < 0:
        return FailWorkspace(f"task {event.task.id!r} has a negative attempt {event.attempt}")
    try:
        branch = naming.task_branch(event.mission_id, event.task.id, event.attempt)
    except InvalidName as error:
        return FailWorkspace(str(error))
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
    if component_problem(event.task_id) is not None or event.attempt < 0:
        return Ignore("task id cannot name a git branch; it never had a workspace")
    workspace = view.workspaces.get(key)
    return MergeTask(
        repository_path=view.prepared.path,
        integration_branch=view.prepared.integration_branch,
        since_sha=view.prepared.base_sha,
        task_id=event.task_id,
        attempt=event.attempt,
        commit_sha=event.commit_sha,
        worktree_path=(
            workspace.worktree_path
            if workspace is not None
            else naming.worktree_path(event.mission_id, event.task_id, event.attempt)
        ),
        task_branch=(
            workspace.branch
            if workspace is not None
            else naming.task_branch(event.mission_id, event.task_id, event.attempt)
        ),
        verify_command=view.verify_command,
    )


# --- start-up ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """What a broker starting up keeps and removes, judged from the replayed stream.

    ``live_worktrees`` are the worktrees of running missions whose attempt is not merged
    (an agent may be at work in one); every other worktree under the worktrees directory
    is a leftover. ``repositories`` are all the repositories missions used, where
    leftover administrative entries are pruned; pooled worktrees are kept only for
    ``active_repositories``, the ones running missions use. ``finished`` are the
    task-branch namespaces of finished missions, and ``merged_branches`` the task
    branches of merged attempts: both are deleted if a crash left them behind.
    """

    live_worktrees: frozenset[str]
    repositories: tuple[str, ...]
    active_repositories: tuple[str, ...]
    finished: tuple[tuple[str, str], ...]
    merged_branches: tuple[tuple[str, str], ...]


def sweep(state: BrokerState, naming: Naming) -> Sweep:
    live: set[str] = set()
    repositories: set[str] = set()
    finished: list[tuple[str, str]] = []
    merged: list[tuple[str, str]] = []
    for view in state.missions.values():
        if view.prepared is None:
            continue
        path = view.prepared.path
        repositories.add(path)
        if view.terminal:
            finished.append((path, naming.task_branches(view.mission_id)))
            continue
        for key, workspace in view.workspaces.items():
            if key in view.merged:
                merged.append((path, workspace.branch))
            else:
                live.add(workspace.worktree_path)
    return Sweep(
        live_worktrees=frozenset(live),
        repositories=tuple(sorted(repositories)),
        active_repositories=tuple(sorted(_active_repositories(state))),
        finished=tuple(sorted(finished)),
        merged_branches=tuple(sorted(merged)),
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


def workspace_failed_event(
    cause: TaskReady, now: datetime, reason: str, *, retryable: bool
) -> WorkspaceFailed:
    return WorkspaceFailed(
        **caused_by(cause, now, "workspace_failed", cause.task.id, cause.attempt),
        task_id=cause.task.id,
        attempt=cause.attempt,
        reason=reason,
        retryable=retryable,
    )


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
