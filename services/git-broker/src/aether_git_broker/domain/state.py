"""The git broker's projection: what it needs to know of every mission, and ``evolve``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from aether_events import (
    TERMINAL_TYPES,
    AgentCompleted,
    AgentFailed,
    BranchMerged,
    BranchPushed,
    BranchPushFailed,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionCancelled,
    MissionCompleted,
    MissionRequested,
    RepositoryPrepared,
    TaskReady,
    TaskTimedOut,
    WorkspaceFailed,
    WorkspaceReady,
    is_terminal,
)

TaskKey = tuple[str, int]


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
    # The attempt resolves a conflict: its workspace started from this commit's merge.
    resolve_sha: str | None = None


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
    # Attempts not merged because the mission was cancelled first (MergeWithheld).
    withheld: frozenset[TaskKey] = frozenset()
    # Attempts whose workspace the broker refused (WorkspaceFailed).
    refused: frozenset[TaskKey] = frozenset()
    # The triggers themselves, so a broker starting up can tell which still ask for work
    # (``pending``): the request, and each attempt's TaskReady and AgentCompleted.
    requested: MissionRequested | None = None
    ready: Mapping[TaskKey, TaskReady] = field(default_factory=dict)
    completed: Mapping[TaskKey, AgentCompleted] = field(default_factory=dict)
    # Attempts that are over (completed, failed, timed out): their push tokens are void.
    ended: frozenset[TaskKey] = frozenset()
    # The mission's completion, and whether its delivery is on the stream (BranchPushed,
    # or BranchPushFailed: given up): a completion not delivered is still owed a push.
    # A person's DeliveryRetryRequested after a failure owes it again.
    completion: MissionCompleted | None = None
    delivered: bool = False
    retry: DeliveryRetryRequested | None = None
    # Why the mission was cancelled, for people (``cancel_reason``), once it is; and the
    # results of its attempts that no merge outcome answered when it was (or that came
    # after it): each is still owed a MergeWithheld, which records why it never landed.
    cancelled: str | None = None
    unsettled: Mapping[TaskKey, AgentCompleted] = field(default_factory=dict)

    def attempt_live(self, key: TaskKey) -> bool:
        """Whether an attempt may still fetch and push: its workspace announced, no end."""
        return not self.terminal and key in self.workspaces and key not in self.ended


# Every event type ``evolve`` folds (the triggers among them); any other leaves the state
# as it is and asks for nothing, so the broker's consumer is filtered to these.
FOLDED: tuple[type[Event], ...] = (
    MissionRequested,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    WorkspaceFailed,
    AgentCompleted,
    AgentFailed,
    TaskTimedOut,
    BranchMerged,
    MergeConflicted,
    MergeWithheld,
    BranchPushed,
    BranchPushFailed,
    DeliveryRetryRequested,
    *sorted(TERMINAL_TYPES, key=lambda cls: cls.__name__),
)


@dataclass(frozen=True)
class BrokerState:
    missions: Mapping[str, MissionView] = field(default_factory=dict)

    def mission(self, mission_id: str) -> MissionView | None:
        return self.missions.get(mission_id)


def _update(state: BrokerState, view: MissionView) -> BrokerState:
    return BrokerState(missions={**state.missions, view.mission_id: view})


def cancel_reason(event: MissionCancelled) -> str:
    """What a merge withheld for the cancel says: who cancelled and why, when known."""
    reason = "the mission was cancelled"
    if event.requested_by:
        reason += f" by {event.requested_by}"
    return f"{reason}: {event.reason}" if event.reason else reason


def _settled(view: MissionView, key: TaskKey) -> MissionView:
    """``view`` once a merge outcome of attempt ``key`` is on the stream."""
    if key not in view.unsettled:
        return view
    return replace(view, unsettled={k: v for k, v in view.unsettled.items() if k != key})


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
                    requested=None if view.terminal else event,
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
                branch=event.branch,
                worktree_path=event.worktree_path,
                base_sha=event.base_sha,
                resolve_sha=event.resolve_sha,
            )
            return _update(state, replace(view, workspaces={**view.workspaces, key: workspace}))
        case BranchMerged():
            key = (event.task_id, event.attempt)
            view = _settled(view, key)
            return _update(state, replace(view, merged={**view.merged, key: event.merge_sha}))
        case MergeConflicted():
            key = (event.task_id, event.attempt)
            view = _settled(view, key)
            return _update(state, replace(view, conflicted=view.conflicted | {key}))
        case MergeWithheld():
            key = (event.task_id, event.attempt)
            view = _settled(view, key)
            if view.terminal:
                return _update(state, view)
            return _update(state, replace(view, withheld=view.withheld | {key}))
        case WorkspaceFailed():
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, refused=view.refused | {key}))
        case TaskReady() if not view.terminal:
            key = (event.task.id, event.attempt)
            return _update(state, replace(view, ready={**view.ready, key: event}))
        case AgentCompleted() if not view.terminal:
            key = (event.task_id, event.attempt)
            return _update(
                state,
                replace(view, completed={**view.completed, key: event}, ended=view.ended | {key}),
            )
        case AgentCompleted() if view.cancelled is not None:
            # A result that came after the cancel: never merged, owed its record too.
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, unsettled={**view.unsettled, key: event}))
        case AgentFailed() | TaskTimedOut() if not view.terminal:
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, ended=view.ended | {key}))
        case BranchPushed() | BranchPushFailed():
            return _update(state, replace(view, delivered=True))
        case DeliveryRetryRequested() if view.completion is not None:
            return _update(state, replace(view, retry=event, delivered=False))
        case _ if is_terminal(event):
            cancelled, unsettled = _cancelled(view, event)
            # Nothing is decided for a finished mission beyond cleaning up, so its
            # per-task records can go.
            return _update(
                state,
                replace(
                    view,
                    terminal=True,
                    workspaces={},
                    merged={},
                    conflicted=frozenset(),
                    withheld=frozenset(),
                    refused=frozenset(),
                    requested=None,
                    ready={},
                    completed={},
                    ended=frozenset(),
                    completion=(
                        event
                        if isinstance(event, MissionCompleted) and not view.terminal
                        else view.completion
                    ),
                    cancelled=cancelled,
                    unsettled=unsettled,
                ),
            )
        case _:
            return state


def _cancelled(
    view: MissionView, event: Event
) -> tuple[str | None, Mapping[TaskKey, AgentCompleted]]:
    """Why a mission ending with ``event`` was cancelled, and the attempts whose result no
    merge outcome answered then (merged, conflicted, or withheld as the broker heard the
    cancel ahead of its consumer). A mission that had ended already keeps what it had."""
    if view.terminal or not isinstance(event, MissionCancelled):
        return view.cancelled, view.unsettled
    answered = view.merged.keys() | view.conflicted | view.withheld
    unsettled = {key: done for key, done in view.completed.items() if key not in answered}
    return cancel_reason(event), unsettled
