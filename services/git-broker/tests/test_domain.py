"""Given these events, when this one arrives, then this action."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import reduce

import pytest

from aether_events import (
    AgentCompleted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionCancelled,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    derived_id,
)
from aether_git_broker.domain import (
    REMOTE_NOT_SUPPORTED,
    BrokerState,
    Ignore,
    MergeOutcome,
    MergeTask,
    PrepareRepository,
    PrepareWorkspace,
    RejectMission,
    RemoveWorktrees,
    WorkspaceOutcome,
    decide,
    evolve,
    is_remote,
    merge_event,
    workspace_ready_event,
)
from aether_git_broker.naming import Naming

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NAMING = Naming(branch_prefix="aether", worktrees_dir="/wt")
M = "m-1"


def meta(event_id: str) -> dict[str, object]:
    return {"event_id": event_id, "mission_id": M, "occurred_at": NOW, "correlation_id": "c-1"}


def requested(repository: str = "/repos/demo", base_branch: str = "main") -> MissionRequested:
    return MissionRequested(
        **meta("e-req"), repository=repository, requirement="do it", base_branch=base_branch
    )


PREPARED = RepositoryPrepared(
    **meta("e-prep"),
    repository_path="/repos/demo",
    base_branch="main",
    base_sha="b" * 40,
    integration_branch="aether/m-1",
)


def task_ready(task_id: str = "t1", attempt: int = 1) -> TaskReady:
    return TaskReady(
        **meta(f"e-ready-{task_id}-{attempt}"),
        task=PlannedTask(id=task_id, title="a task"),
        attempt=attempt,
        model="claude",
        requirement="do it",
        max_cost_usd=1.5,
        context="ctx",
    )


def completed(task_id: str = "t1", attempt: int = 1) -> AgentCompleted:
    return AgentCompleted(
        **meta(f"e-done-{task_id}-{attempt}"),
        task_id=task_id,
        attempt=attempt,
        commit_sha="c" * 40,
        branch=f"aether-tasks/m-1/{task_id}/a{attempt}",
    )


def given(*events: Event) -> BrokerState:
    return reduce(evolve, events, BrokerState())


def test_a_requested_mission_prepares_its_repository() -> None:
    event = requested()
    assert decide(given(event), event, NAMING) == PrepareRepository(
        repository="/repos/demo", base_branch="main", integration_branch="aether/m-1"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "ssh://git@host/repo",
        "git@github.com:org/repo.git",
    ],
)
def test_a_remote_repository_is_rejected_for_now(url: str) -> None:
    event = requested(repository=url)
    action = decide(given(event), event, NAMING)
    assert isinstance(action, RejectMission)
    assert action.reason.startswith(REMOTE_NOT_SUPPORTED)


def test_local_paths_are_not_remote() -> None:
    assert not is_remote("/home/me/repo")
    assert not is_remote("file:///home/me/repo")
    assert not is_remote("relative/dir")
    assert not is_remote("C:/repo")


def test_a_base_branch_git_refuses_is_rejected() -> None:
    event = requested(base_branch="bad..name")
    action = decide(given(event), event, NAMING)
    assert isinstance(action, RejectMission)
    assert "'..'" in action.reason


def test_a_redelivered_request_after_preparation_does_nothing() -> None:
    event = requested()
    assert isinstance(decide(given(event, PREPARED), event, NAMING), Ignore)


def test_a_ready_task_gets_a_branch_and_worktree_at_the_integration_branch() -> None:
    event = task_ready("t1", 2)
    action = decide(given(requested(), PREPARED, event), event, NAMING)
    assert action == PrepareWorkspace(
        repository_path="/repos/demo",
        integration_branch="aether/m-1",
        branch="aether-tasks/m-1/t1/a2",
        worktree_path="/wt/m-1/t1-a2",
    )


@pytest.mark.parametrize("task_id", ["has space", "a..b", "-dash", "x.lock", "a/b", "t~1", "c:d"])
def test_a_task_id_git_refuses_fails_the_mission(task_id: str) -> None:
    event = task_ready(task_id)
    action = decide(given(requested(), PREPARED, event), event, NAMING)
    assert isinstance(action, RejectMission)
    assert task_id in action.reason


def test_a_task_whose_workspace_was_announced_is_not_prepared_again() -> None:
    event = task_ready()
    announced = workspace_ready_event(
        event, NOW, WorkspaceOutcome("aether-tasks/m-1/t1/a1", "/wt/m-1/t1-a1", "b" * 40, True)
    )
    action = decide(given(requested(), PREPARED, event, announced), event, NAMING)
    assert action == Ignore("workspace already published")


def test_a_task_before_the_repository_is_prepared_is_ignored() -> None:
    event = task_ready()
    assert isinstance(decide(given(requested(), event), event, NAMING), Ignore)


def test_a_completed_agent_is_merged() -> None:
    event = completed()
    action = decide(given(requested(), PREPARED, event), event, NAMING)
    assert action == MergeTask(
        repository_path="/repos/demo",
        integration_branch="aether/m-1",
        since_sha="b" * 40,
        task_id="t1",
        attempt=1,
        commit_sha="c" * 40,
        worktree_path="/wt/m-1/t1-a1",
    )


def test_a_merged_attempt_is_never_merged_again() -> None:
    event = completed()
    merged = merge_event(event, NOW, "aether/m-1", MergeOutcome(kind="merged", sha="d" * 40))
    state = given(requested(), PREPARED, event, merged)
    assert decide(state, event, NAMING) == Ignore("attempt already merged")


def test_a_conflicted_attempt_is_not_merged_again() -> None:
    event = completed()
    conflict = merge_event(
        event, NOW, "aether/m-1", MergeOutcome(kind="conflict", sha="d" * 40, files=("a",))
    )
    assert isinstance(conflict, MergeConflicted)
    state = given(requested(), PREPARED, event, conflict)
    assert isinstance(decide(state, event, NAMING), Ignore)


def test_nothing_is_done_for_a_cancelled_mission_except_cleaning_up() -> None:
    cancelled = MissionCancelled(**meta("e-cancel"))
    state = given(requested(), PREPARED, cancelled)
    assert isinstance(decide(state, task_ready(), NAMING), Ignore)
    assert isinstance(decide(state, completed(), NAMING), Ignore)
    assert isinstance(decide(state, requested(), NAMING), Ignore)
    assert decide(state, cancelled, NAMING) == RemoveWorktrees(
        repository_path="/repos/demo", directory="/wt/m-1"
    )


def test_a_mission_that_never_got_a_repository_has_nothing_to_clean() -> None:
    cancelled = MissionCancelled(**meta("e-cancel"))
    assert isinstance(decide(given(requested(), cancelled), cancelled, NAMING), Ignore)


def test_workspace_ready_carries_the_task_and_a_step_derived_id() -> None:
    event = task_ready("t1", 3)
    outcome = WorkspaceOutcome("aether-tasks/m-1/t1/a3", "/wt/m-1/t1-a3", "b" * 40, True)
    ready = workspace_ready_event(event, NOW, outcome)
    assert isinstance(ready, WorkspaceReady)
    assert ready.event_id == derived_id(M, "workspace_ready", "t1", 3)
    assert ready.causation_id == event.event_id
    assert (ready.task, ready.attempt, ready.model) == (event.task, 3, "claude")
    assert (ready.requirement, ready.max_cost_usd, ready.context) == ("do it", 1.5, "ctx")
    assert (ready.branch, ready.worktree_path, ready.base_sha) == (
        outcome.branch,
        outcome.worktree_path,
        outcome.base_sha,
    )


def test_merge_events_have_one_id_per_attempt_whatever_the_outcome_sha() -> None:
    event = completed("t1", 2)
    first = merge_event(event, NOW, "aether/m-1", MergeOutcome(kind="merged", sha="d" * 40))
    again = merge_event(event, NOW, "aether/m-1", MergeOutcome(kind="already_merged", sha="e" * 40))
    assert isinstance(first, BranchMerged)
    assert first.event_id == again.event_id == derived_id(M, "branch_merged", "t1", 2)
    ff = merge_event(
        event, NOW, "aether/m-1", MergeOutcome(kind="fast_forward", sha="c" * 40, fast_forward=True)
    )
    assert isinstance(ff, BranchMerged)
    assert ff.fast_forward
    conflict = merge_event(
        event, NOW, "aether/m-1", MergeOutcome(kind="conflict", sha="d" * 40, files=("x",))
    )
    assert isinstance(conflict, MergeConflicted)
    assert conflict.event_id == derived_id(M, "merge_conflicted", "t1", 2)
    assert (conflict.files, conflict.integration_sha) == (["x"], "d" * 40)


def test_evolve_ignores_events_it_does_not_need() -> None:
    state = given(requested(), PREPARED)
    assert evolve(state, task_ready()) is state
    assert evolve(state, completed()) is state
