"""Given these events, when this one arrives, then this action."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

import msgspec
import pytest

from aether_events import (
    ALL_TYPES,
    TERMINAL_TYPES,
    AgentCompleted,
    BranchMerged,
    BranchPushed,
    BranchPushFailed,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionPaused,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceFailed,
    WorkspaceReady,
    decode,
    derived_id,
)
from aether_git_broker.app import DELIVERED
from aether_git_broker.domain import (
    FOLDED,
    BrokerState,
    FailWorkspace,
    FinishMission,
    Ignore,
    MergeOutcome,
    MergeTask,
    Policy,
    PrepareRepository,
    PrepareWorkspace,
    Push,
    RejectMission,
    WorkspaceOutcome,
    decide,
    evolve,
    merge_event,
    pending,
    sweep,
    withheld_reason,
    workspace_ready_event,
)
from aether_git_broker.naming import Naming
from aether_git_broker.sources import LocalSource, RemoteSource
from aether_runtime.roles import only_published_by

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NAMING = Naming(branch_prefix="aether", worktrees_dir="/wt")
M = "m-1"


def meta(event_id: str) -> dict[str, object]:
    return {"event_id": event_id, "mission_id": M, "occurred_at": NOW, "correlation_id": "c-1"}


def requested(
    repository: str = "/repos/demo", base_branch: str = "main", verify: str | None = None
) -> MissionRequested:
    return MissionRequested(
        **meta("e-req"),
        repository=repository,
        requirement="do it",
        base_branch=base_branch,
        verify_command=verify,
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
        source=LocalSource("/repos/demo"), base_branch="main", integration_branch="aether/m-1"
    )


def test_a_prepared_repository_announces_where_the_mission_will_be_delivered() -> None:
    event = requested()
    assert decide(given(event), event, NAMING).delivery_remote == ""  # type: ignore[union-attr]
    mirror = Policy(push_remote="https://bot:tok@example.com/mirror.git")
    action = decide(given(event), event, NAMING, mirror)
    assert isinstance(action, PrepareRepository)
    assert action.delivery_remote == "https://bot:***@example.com/mirror.git"
    # "origin" of a mission on a remote repository is where it was cloned from.
    remote = requested(repository="https://x:secret@example.com/org/repo.git")
    action = decide(given(remote), remote, NAMING, Policy(push_remote="origin"))
    assert isinstance(action, PrepareRepository)
    assert action.delivery_remote == "https://x:***@example.com/org/repo.git"


@pytest.mark.parametrize(
    ("url", "display"),
    [
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://x:secret@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("ssh://git@host/repo", "ssh://git@host/repo"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
    ],
)
def test_a_remote_repository_is_cloned(url: str, display: str) -> None:
    event = requested(repository=url)
    action = decide(given(event), event, NAMING)
    assert isinstance(action, PrepareRepository)
    assert isinstance(action.source, RemoteSource)
    assert (action.source.url, action.source.display) == (url, display)


def test_a_repository_outside_the_allowed_roots_is_rejected() -> None:
    event = requested(repository="/etc/secret-repo")
    action = decide(given(event), event, NAMING, Policy(repository_roots=("/repos",)))
    assert isinstance(action, RejectMission)
    assert "outside the directories" in action.reason
    inside = requested(repository="/repos/demo")
    assert isinstance(
        decide(given(inside), inside, NAMING, Policy(repository_roots=("/repos",))),
        PrepareRepository,
    )


def test_a_verify_command_is_refused_where_verification_is_off() -> None:
    event = requested(verify="make test")
    action = decide(given(event), event, NAMING, Policy(verify=False))
    assert isinstance(action, RejectMission)
    assert "verification" in action.reason


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


@pytest.mark.parametrize(
    "task_id", ["has space", "a..b", "-dash", "x.lock", "a/b", "t~1", "c:d", "$(id)", "a\nb"]
)
def test_a_task_id_git_refuses_fails_its_workspace(task_id: str) -> None:
    event = task_ready(task_id)
    action = decide(given(requested(), PREPARED, event), event, NAMING)
    assert isinstance(action, FailWorkspace)
    assert repr(task_id) in action.reason


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
        task_branch="aether-tasks/m-1/t1/a1",
    )


def test_the_merge_of_a_resolution_attempt_says_it_resolved_a_conflict() -> None:
    ready = msgspec.structs.replace(task_ready(attempt=2), resolve_sha="e" * 40)
    workspace = WorkspaceReady(
        **meta("e-ws-t1-2"),
        task=ready.task,
        attempt=2,
        model="claude",
        branch="aether-tasks/m-1/t1/a2",
        worktree_path="/wt/m-1/t1-a2",
        base_sha="b" * 40,
        resolve_sha="e" * 40,
    )
    event = completed(attempt=2)
    merged = MergeOutcome(kind="merged", sha="d" * 40)
    for given_events in ([ready], [workspace], [ready, workspace]):
        action = decide(given(requested(), PREPARED, *given_events, event), event, NAMING)
        assert isinstance(action, MergeTask) and action.resolution
        published = merge_event(event, NOW, "aether/m-1", merged, resolution=action.resolution)
        assert isinstance(published, BranchMerged) and published.resolution
    # An ordinary attempt's merge says it was not one.
    first = completed()
    action = decide(given(requested(), PREPARED, task_ready(), first), first, NAMING)
    assert isinstance(action, MergeTask) and not action.resolution
    published = merge_event(first, NOW, "aether/m-1", merged, resolution=action.resolution)
    assert isinstance(published, BranchMerged) and not published.resolution


def test_a_mission_with_a_verify_command_verifies_every_merge() -> None:
    event = completed()
    action = decide(given(requested(verify="  make test "), PREPARED, event), event, NAMING)
    assert isinstance(action, MergeTask)
    assert action.verify_command == "make test"


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


def test_a_refused_merge_says_why_on_its_event() -> None:
    event = completed()
    outcomes = {
        "conflict_markers": MergeOutcome(
            kind="conflict",
            sha="d" * 40,
            detail="conflict markers left in …",
            refusal="conflict_markers",
        ),
        "verification_failed": MergeOutcome(kind="verify_failed", sha="d" * 40, detail="x"),
    }
    for refusal, outcome in outcomes.items():
        published = merge_event(event, NOW, "aether/m-1", outcome)
        assert isinstance(published, MergeConflicted)
        assert (published.files, published.refusal) == ([], refusal)


def test_nothing_is_done_for_a_cancelled_mission_except_cleaning_up() -> None:
    cancelled = MissionCancelled(**meta("e-cancel"))
    state = given(requested(), PREPARED, cancelled)
    assert isinstance(decide(state, task_ready(), NAMING), Ignore)
    assert isinstance(decide(state, completed(), NAMING), Ignore)
    assert isinstance(decide(state, requested(), NAMING), Ignore)
    assert decide(state, cancelled, NAMING) == FinishMission(
        repository_path="/repos/demo",
        worktrees_directory="/wt/m-1",
        task_branches="aether-tasks/m-1/",
        drop_pool=True,
    )


def test_a_repository_another_mission_still_uses_keeps_its_pooled_worktrees() -> None:
    other = [
        MissionRequested(
            event_id="o1",
            mission_id="m-2",
            occurred_at=NOW,
            correlation_id="c",
            repository="/repos/demo",
            requirement="x",
        ),
        RepositoryPrepared(
            event_id="o2",
            mission_id="m-2",
            occurred_at=NOW,
            correlation_id="c",
            repository_path="/repos/demo",
            base_branch="main",
            base_sha="b" * 40,
            integration_branch="aether/m-2",
        ),
    ]
    cancelled = MissionCancelled(**meta("e-cancel"))
    action = decide(given(requested(), PREPARED, *other, cancelled), cancelled, NAMING)
    assert isinstance(action, FinishMission)
    assert not action.drop_pool


def test_a_completed_mission_is_pushed_where_a_remote_is_configured() -> None:
    done = MissionCompleted(
        **meta("e-done"), final_sha="f" * 40, integration_branch="aether/m-1", tasks_merged=2
    )
    state = given(requested(), PREPARED, done)
    assert decide(state, done, NAMING).push is None  # type: ignore[union-attr]
    action = decide(state, done, NAMING, Policy(push_remote="origin"))
    assert isinstance(action, FinishMission)
    assert action.push == Push(integration_branch="aether/m-1", sha="f" * 40, target="origin")
    # "origin" of a mission on a remote repository is where it was cloned from.
    url = "https://x:tok@example.com/org/repo.git"
    remote = given(requested(repository=url), PREPARED, done)
    action = decide(remote, done, NAMING, Policy(push_remote="origin"))
    assert isinstance(action, FinishMission) and action.push is not None
    assert action.push.target == url


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
    assert ready.runtime is None
    chosen = msgspec.structs.replace(event, runtime="claude-code")
    assert workspace_ready_event(chosen, NOW, outcome).runtime == "claude-code"


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
    assert evolve(state, PlanApproved(**meta("e-approved"), version=1)) is state
    assert evolve(state, MissionPaused(**meta("e-paused"))) is state


def ready_workspace(ready: TaskReady) -> WorkspaceReady:
    branch = f"aether-tasks/m-1/{ready.task.id}/a{ready.attempt}"
    worktree = f"/wt/m-1/{ready.task.id}-a{ready.attempt}"
    return workspace_ready_event(ready, NOW, WorkspaceOutcome(branch, worktree, "b" * 40, True))


def test_a_mission_requested_before_the_broker_started_is_owed() -> None:
    assert pending(given(requested()), NAMING) == ["e-req"]
    assert pending(given(requested(), PREPARED), NAMING) == []


def test_a_request_the_broker_must_refuse_is_owed_its_refusal() -> None:
    state = given(requested("/elsewhere"))
    assert pending(state, NAMING, Policy(repository_roots=("/repos",))) == ["e-req"]
    failed = MissionFailed(**meta("e-failed"), reason="outside the roots")
    assert pending(evolve(state, failed), NAMING) == []


def test_ready_tasks_without_a_workspace_and_completed_agents_not_merged_are_owed() -> None:
    t1, t2, t3 = task_ready("t1"), task_ready("t2"), task_ready("t3")
    refused = WorkspaceFailed(**meta("e-refused"), task_id="t3", attempt=1, reason="disk")
    state = given(
        requested(), PREPARED, t1, t2, t3, ready_workspace(t1), ready_workspace(t2), refused
    )
    assert pending(state, NAMING) == []
    assert isinstance(decide(state, t3, NAMING), Ignore)  # refused once is refused
    state = given(requested(), PREPARED, t1, t2, ready_workspace(t1), completed("t1"))
    assert pending(state, NAMING) == ["e-ready-t2-1", "e-done-t1-1"]
    merged = merge_event(
        completed("t1"), NOW, "aether/m-1", MergeOutcome(kind="merged", sha="d" * 40)
    )
    assert pending(evolve(state, merged), NAMING) == ["e-ready-t2-1"]
    conflicted = merge_event(
        completed("t1"),
        NOW,
        "aether/m-1",
        MergeOutcome(kind="conflict", sha="b" * 40, files=("a",)),
    )
    assert pending(evolve(state, conflicted), NAMING) == ["e-ready-t2-1"]


def test_a_finished_mission_owes_nothing_and_forgets_its_triggers() -> None:
    t1 = task_ready("t1")
    done = MissionCompleted(
        **meta("e-completed"), final_sha="d" * 40, integration_branch="aether/m-1", tasks_merged=1
    )
    state = given(requested(), PREPARED, t1, completed("t1"), done)
    assert pending(state, NAMING) == []
    view = state.mission(M)
    assert view is not None and not view.ready and not view.completed and not view.requested


@pytest.mark.parametrize("recorded", [BranchPushed, BranchPushFailed])
def test_a_completion_is_owed_its_push_until_the_stream_records_the_delivery(
    recorded: type[BranchPushed] | type[BranchPushFailed],
) -> None:
    """A broker whose consumer starts after a mission completed (its first start, or a
    durable made again) still pushes the result; once the delivery, or giving it up, is
    on the stream, the completion owes nothing and handled again pushes nothing."""
    done = MissionCompleted(
        **meta("e-completed"), final_sha="d" * 40, integration_branch="aether/m-1", tasks_merged=1
    )
    remote = Policy(push_remote="origin")
    state = given(requested(), PREPARED, task_ready("t1"), completed("t1"), done)
    assert pending(state, NAMING) == []  # no remote: nothing to deliver
    assert pending(state, NAMING, remote) == ["e-completed"]
    where = {"integration_branch": "aether/m-1", "sha": "d" * 40, "remote": "origin"}
    extra = {"reason": "refused"} if recorded is BranchPushFailed else {}
    state = evolve(state, recorded(**meta("e-delivery"), **where, **extra))
    assert pending(state, NAMING, remote) == []
    again = decide(state, done, NAMING, remote)
    assert isinstance(again, FinishMission) and again.push is None


def test_a_delivery_given_up_is_owed_again_once_a_person_asks() -> None:
    done = MissionCompleted(
        **meta("e-completed"), final_sha="d" * 40, integration_branch="aether/m-1", tasks_merged=1
    )
    remote = Policy(push_remote="origin")
    where = {"integration_branch": "aether/m-1", "sha": "d" * 40, "remote": "origin"}
    failed = BranchPushFailed(**meta("e-failed"), **where, reason="refused")
    state = given(requested(), PREPARED, done, failed)
    retry = DeliveryRetryRequested(**meta("e-retry"))
    # Nothing to deliver again without a remote, nor for a mission that did not complete.
    assert isinstance(decide(evolve(state, retry), retry, NAMING), Ignore)
    assert isinstance(decide(given(requested(), PREPARED, retry), retry, NAMING, remote), Ignore)
    state = evolve(state, retry)
    assert pending(state, NAMING, remote) == ["e-retry"]
    action = decide(state, retry, NAMING, remote)
    assert isinstance(action, FinishMission)
    assert action.push == Push(integration_branch="aether/m-1", sha="d" * 40, target="origin")
    state = evolve(state, BranchPushed(**meta("e-pushed"), **where))
    assert pending(state, NAMING, remote) == []
    assert isinstance(decide(state, retry, NAMING, remote), Ignore)


def test_the_start_up_sweep_keeps_live_worktrees_and_lists_leftovers() -> None:
    t1, t2 = task_ready("t1"), task_ready("t2")
    ws = [
        workspace_ready_event(
            t,
            NOW,
            WorkspaceOutcome(
                f"aether-tasks/m-1/{t.task.id}/a1", f"/wt/m-1/{t.task.id}-a1", "b" * 40, True
            ),
        )
        for t in (t1, t2)
    ]
    merged = merge_event(
        completed("t1"), NOW, "aether/m-1", MergeOutcome(kind="merged", sha="d" * 40)
    )
    other = MissionRequested(
        event_id="e-o",
        mission_id="m-2",
        occurred_at=NOW,
        correlation_id="c",
        repository="/r2",
        requirement="x",
    )
    other_prepared = RepositoryPrepared(
        event_id="e-op",
        mission_id="m-2",
        occurred_at=NOW,
        correlation_id="c",
        repository_path="/r2",
        base_branch="main",
        base_sha="b" * 40,
        integration_branch="aether/m-2",
    )
    cancelled = MissionCancelled(
        event_id="e-oc", mission_id="m-2", occurred_at=NOW, correlation_id="c"
    )
    state = given(requested(), PREPARED, *ws, merged, other, other_prepared, cancelled)
    plan = sweep(state, NAMING)
    assert plan.live_worktrees == frozenset({"/wt/m-1/t2-a1"})
    assert plan.repositories == ("/r2", "/repos/demo")
    assert plan.active_repositories == ("/repos/demo",)
    assert plan.finished == (("/r2", "aether-tasks/m-2/"),)
    assert plan.merged_branches == (("/repos/demo", "aether-tasks/m-1/t1/a1"),)


SAMPLES = Path(__file__).resolve().parents[3] / "libs" / "events" / "tests" / "samples" / "v1"


def test_the_consumer_filter_leaves_out_only_events_that_change_nothing() -> None:
    """The broker's consumer delivers only FOLDED types; every other type, arriving for a
    mission under way, must neither change the state nor ask for work."""
    samples = [decode(path.read_bytes()) for path in sorted(SAMPLES.glob("*.json"))]
    assert len(samples) >= len(ALL_TYPES) - 1
    under_way = [
        s for s in samples if isinstance(s, MissionRequested | RepositoryPrepared | TaskReady)
    ]
    state = given(*under_way)
    assert state.missions
    for sample in samples:
        if isinstance(sample, FOLDED):
            continue
        assert evolve(state, sample) == state, type(sample)
        assert isinstance(decide(state, sample, NAMING), Ignore), type(sample)


def test_the_consumer_leaves_out_the_brokers_own_events_which_ask_for_nothing() -> None:
    """The broker applies each event it publishes as the stream stores it, so its
    consumer does not deliver them back (a BranchMerged delivered back held up the
    TaskReady it freed); nothing is decided on one of them, and the replay still folds
    them. Every type the broker acts on is delivered."""
    own = only_published_by("git-broker")
    assert {BranchMerged, WorkspaceReady, RepositoryPrepared} <= own
    assert not own & set(DELIVERED)
    assert set(DELIVERED) | own >= set(FOLDED) - {MissionFailed}
    assert {MissionRequested, TaskReady, AgentCompleted, *TERMINAL_TYPES} <= set(DELIVERED)
    samples = [decode(path.read_bytes()) for path in sorted(SAMPLES.glob("*.json"))]
    under_way = [
        s for s in samples if isinstance(s, MissionRequested | RepositoryPrepared | TaskReady)
    ]
    state = given(*under_way)
    for sample in samples:
        if type(sample) in own:
            assert isinstance(decide(evolve(state, sample), sample, NAMING), Ignore), sample


# --- a cancel heard ahead of the ordered consumer ------------------------------------------

CANCELLED = MissionCancelled(**meta("e-cancel"), reason="wrong repository", requested_by="alice")
WHY = "the mission was cancelled by alice: wrong repository"


def withheld(event: AgentCompleted) -> MergeWithheld:
    outcome = MergeOutcome(kind="withheld", sha="b" * 40, detail=WHY)
    answer = merge_event(event, NOW, "aether/m-1", outcome)
    assert isinstance(answer, MergeWithheld)
    return answer


def test_a_result_of_a_mission_whose_cancel_was_heard_ahead_is_withheld() -> None:
    """The consumer reaches the result before the cancel stored after it: the cancel the
    broker heard ahead (``cancels``) keeps the merge out, for the cancel's reason."""
    event = completed()
    state = given(requested(), PREPARED, event)
    action = decide(state, event, NAMING, cancels={M: WHY})
    assert isinstance(action, MergeTask) and action.withheld == WHY
    assert withheld_reason(state, M, {M: WHY}) == WHY
    # Without the cancel heard, the same result is merged; another mission's cancel
    # changes nothing.
    action = decide(state, event, NAMING, cancels={"m-other": WHY})
    assert isinstance(action, MergeTask) and action.withheld is None
    assert withheld_reason(state, M, {"m-other": WHY}) is None


def test_a_withheld_merge_is_recorded_once_with_why_and_the_head_it_left() -> None:
    event = completed()
    answer = withheld(event)
    assert answer.event_id == derived_id(M, "merge_withheld", "t1", 1)
    assert (answer.commit_sha, answer.integration_sha, answer.reason) == ("c" * 40, "b" * 40, WHY)
    # Redelivered before the consumer reaches the cancel: nothing more.
    state = given(requested(), PREPARED, event, answer)
    assert isinstance(decide(state, event, NAMING, cancels={M: WHY}), Ignore)
    # Nor after it, nor after a restart's replay (answer stored after the cancel).
    for order in ((answer, CANCELLED), (CANCELLED, answer)):
        state = given(requested(), PREPARED, event, *order)
        assert isinstance(decide(state, event, NAMING), Ignore)
        assert pending(state, NAMING) == []


def test_a_broker_killed_between_hearing_a_cancel_and_recording_owes_the_record() -> None:
    """Restarted, the broker replays the cancel with the result before it unanswered: the
    result is owed its MergeWithheld (never a merge), and nothing once it is stored."""
    event = completed()
    state = given(requested(), PREPARED, task_ready(), event, CANCELLED)
    action = decide(state, event, NAMING)
    assert isinstance(action, MergeTask) and action.withheld == WHY
    assert withheld_reason(state, M) == WHY
    assert pending(state, NAMING) == [event.event_id]
    after = evolve(state, withheld(event))
    assert isinstance(decide(after, event, NAMING), Ignore)
    assert pending(after, NAMING) == []


def test_a_result_merged_or_conflicted_before_the_cancel_owes_nothing() -> None:
    event = completed()
    merged = merge_event(event, NOW, "aether/m-1", MergeOutcome(kind="merged", sha="d" * 40))
    conflict = merge_event(event, NOW, "aether/m-1", MergeOutcome(kind="conflict", sha="d" * 40))
    for answer in (merged, conflict):
        # Stored before the cancel, or after it (a merge under way as it was stored).
        for order in ((answer, CANCELLED), (CANCELLED, answer)):
            state = given(requested(), PREPARED, event, *order)
            assert isinstance(decide(state, event, NAMING), Ignore), order
            assert pending(state, NAMING) == []


def test_a_result_stored_after_the_cancel_is_withheld_too() -> None:
    event = completed()
    state = given(requested(), PREPARED, CANCELLED, event)
    action = decide(state, event, NAMING)
    assert isinstance(action, MergeTask) and action.withheld == WHY


def test_only_a_cancel_withholds_a_finished_missions_results() -> None:
    event = completed()
    failed = MissionFailed(**meta("e-failed"), reason="budget")
    state = given(requested(), PREPARED, event, failed)
    assert decide(state, event, NAMING) == Ignore("mission already finished")
    assert withheld_reason(state, M) is None
    # A cancel after the end changes nothing either.
    assert isinstance(decide(evolve(state, CANCELLED), event, NAMING), Ignore)
