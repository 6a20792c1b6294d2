"""Decisions, free of I/O: ``decide`` turns an event into one ``Action`` for the adapters.

Each decision is judged against the state folded so far (the event included), so a
redelivered or replayed event never repeats a step whose result is already in the stream.
``pending`` is what a broker starting up still owes, ``sweep`` what a crash left behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aether_events import (
    AgentCompleted,
    DeliveryRetryRequested,
    Event,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    TaskReady,
)
from aether_git_broker.domain.state import BrokerState, MissionView, TaskKey
from aether_git_broker.naming import InvalidName, Naming, component_problem, ref_name_problem
from aether_git_broker.sources import (
    InvalidRepository,
    LocalSource,
    RemoteSource,
    parse_repository,
    redact,
)


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
    # Announced in RepositoryPrepared: where the completed mission will be pushed.
    delivery_remote: str = ""


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
    """Merge an attempt's commit, unless the integration branch has it already.

    ``withheld``: why it must not land (its mission was cancelled): the attempt is still
    reported merged when the branch has it (a merge a killed broker made and did not
    record), and otherwise withheld, nothing written."""

    repository_path: str
    integration_branch: str
    since_sha: str
    task_id: str
    attempt: int
    commit_sha: str
    worktree_path: str
    task_branch: str
    verify_command: str | None = None
    withheld: str | None = None
    # The attempt resolves a conflict (its TaskReady asked for a resolution workspace).
    resolution: bool = False


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


def decide(
    state: BrokerState,
    event: Event,
    naming: Naming,
    policy: Policy = Policy(),
    cancels: Mapping[str, str] | None = None,
) -> Action:
    """What to do about ``event``, given everything folded so far (``event`` included)
    and ``cancels``: the missions whose cancel the broker heard ahead of its ordered
    consumer (stored, not folded yet), with the reason (``cancel_reason``)."""
    view = state.mission(event.mission_id)
    match event:
        case MissionRequested():
            return _on_requested(view, event, naming, policy)
        case TaskReady():
            return _on_task_ready(view, event, naming)
        case AgentCompleted():
            heard = (cancels or {}).get(event.mission_id)
            return _on_agent_completed(view, event, naming, heard)
        case MissionCompleted() | MissionFailed() | MissionCancelled() | MissionAnswered():
            if view is None or view.prepared is None:
                return Ignore("no repository was prepared for this mission")
            # Delivered already (or given up): a completion handled again pushes nothing.
            completed = event if isinstance(event, MissionCompleted) else None
            return _finish(state, view, naming, _push(view, completed, policy))
        case DeliveryRetryRequested():
            if view is None or view.prepared is None or view.completion is None:
                return Ignore("the mission has not completed")
            push = _push(view, view.completion, policy)
            if push is None:
                why = "no push remote is configured" if not policy.push_remote else "delivered"
                return Ignore(f"nothing to deliver again: {why}")
            return _finish(state, view, naming, push)
        case _:
            return Ignore("not an event the git broker acts on")


def _push(view: MissionView, completed: MissionCompleted | None, policy: Policy) -> Push | None:
    """The push a completion owes: none without a remote, or once its delivery (or
    giving it up, with no retry asked for since) is on the stream."""
    if completed is None or not policy.push_remote or view.delivered or view.prepared is None:
        return None
    return Push(
        integration_branch=view.prepared.integration_branch,
        sha=completed.final_sha,
        target=_push_target(policy.push_remote, view.repository),
    )


def _finish(state: BrokerState, view: MissionView, naming: Naming, push: Push | None) -> Action:
    assert view.prepared is not None
    path = view.prepared.path
    return FinishMission(
        repository_path=path,
        worktrees_directory=naming.mission_worktrees(view.mission_id),
        task_branches=naming.task_branches(view.mission_id),
        push=push,
        drop_pool=path not in _active_repositories(state),
    )


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
    # No base branch: the repository's default, read when the repository is prepared.
    problem = ref_name_problem(event.base_branch) if event.base_branch else None
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
        delivery_remote=(
            redact(_push_target(policy.push_remote, event.repository)) if policy.push_remote else ""
        ),
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
    if key in view.refused:
        return Ignore("workspace already refused")
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


def withheld_reason(
    state: BrokerState, mission_id: str, cancels: Mapping[str, str] | None = None
) -> str | None:
    """Why no merge of ``mission_id`` may land now (its cancel, heard ahead in
    ``cancels`` or folded), or ``None``: asked again just before the integration branch
    moves, since a cancel may be heard while a merge is under way."""
    heard = (cancels or {}).get(mission_id)
    if heard is not None:
        return heard
    view = state.mission(mission_id)
    return None if view is None else view.cancelled


def _on_agent_completed(
    view: MissionView | None, event: AgentCompleted, naming: Naming, heard: str | None
) -> Action:
    if view is None or view.prepared is None:
        return Ignore("no repository prepared for this mission")
    key = (event.task_id, event.attempt)
    if view.terminal:
        if key in view.unsettled and view.cancelled is not None:
            # Its record was owed when the broker stopped (or it came after the cancel).
            return _merge_task(view, event, naming, view.cancelled)
        return Ignore("mission already finished")
    if key in view.merged:
        return Ignore("attempt already merged")
    if key in view.conflicted:
        return Ignore("attempt already reported as conflicting")
    if key in view.withheld:
        return Ignore("attempt already withheld: its mission was cancelled")
    return _merge_task(view, event, naming, heard)


def _merge_task(
    view: MissionView, event: AgentCompleted, naming: Naming, withheld: str | None
) -> Action:
    assert view.prepared is not None
    key = (event.task_id, event.attempt)
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
        withheld=withheld,
        resolution=_resolves(view, key),
    )


def _resolves(view: MissionView, key: TaskKey) -> bool:
    """Whether attempt ``key`` resolves a conflict, by its workspace or its TaskReady."""
    workspace = view.workspaces.get(key)
    ready = view.ready.get(key)
    return bool(
        (workspace is not None and workspace.resolve_sha)
        or (ready is not None and ready.resolve_sha)
    )


def pending(state: BrokerState, naming: Naming, policy: Policy = Policy()) -> list[str]:
    """The ids of every folded trigger ``decide`` would still act on: a repository to
    prepare (or a request to reject), a workspace to create, an agent's branch to merge.
    What a broker starting up owes, whenever the trigger was published.

    The end of a mission is in it only when its result is still to be pushed (a remote is
    configured, and neither BranchPushed nor BranchPushFailed is on the stream, or a
    person asked for it again since, DeliveryRetryRequested): the start-up ``sweep`` does
    the clean-up.
    """
    due: list[str] = []
    for view in state.missions.values():
        triggers: list[Event] = [
            *view.ready.values(),
            *view.completed.values(),
            *view.unsettled.values(),
        ]
        if view.requested is not None:
            triggers.insert(0, view.requested)
        due.extend(
            trigger.event_id
            for trigger in triggers
            if not isinstance(decide(state, trigger, naming, policy), Ignore)
        )
        trigger = view.retry or view.completion
        if trigger is not None:
            finish = decide(state, trigger, naming, policy)
            if isinstance(finish, FinishMission) and finish.push is not None:
                due.append(trigger.event_id)
    return due


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
