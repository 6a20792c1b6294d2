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
                branch=event.branch, worktree_path=event.worktree_path, base_sha=event.base_sha
            )
            return _update(state, replace(view, workspaces={**view.workspaces, key: workspace}))
        case BranchMerged():
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, merged={**view.merged, key: event.merge_sha}))
        case MergeConflicted():
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, conflicted=view.conflicted | {key}))
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
        case AgentFailed() | TaskTimedOut() if not view.terminal:
            key = (event.task_id, event.attempt)
            return _update(state, replace(view, ended=view.ended | {key}))
        case BranchPushed() | BranchPushFailed():
            return _update(state, replace(view, delivered=True))
        case DeliveryRetryRequested() if view.completion is not None:
            return _update(state, replace(view, retry=event, delivered=False))
        case _ if is_terminal(event):
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
                ),
            )
        case _:
            return state
