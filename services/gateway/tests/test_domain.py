"""The read model's folding, pure: given the rows, when this event arrives, then these rows."""

from __future__ import annotations

import msgspec
import pytest

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    BranchPushed,
    BranchPushFailed,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionCancelled,
    MissionFailed,
    MissionPaused,
    MissionResumed,
    PlanFailed,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    WaveStarted,
    WorkspaceReady,
)
from aether_gateway.domain import MissionView, fold, tasks_read


def play(events: list[Event], view: MissionView | None = None) -> MissionView:
    """Fold events the way the adapter does: apply each Changes to the rows."""
    view = view or MissionView()
    for event in events:
        changes = fold(view, event)
        if changes.mission is not None:
            view.mission = changes.mission
        for task_id in changes.removed_tasks:
            view.tasks.pop(task_id, None)
        for task in changes.tasks:
            view.tasks[task.task_id] = task
    return view


def test_a_mission_without_a_base_branch_shows_the_one_the_broker_used(script):
    view = play([script.requested()])
    assert view.mission.base_branch == ""
    view = play([script.prepared()], view)
    assert view.mission.base_branch == "main"
    named = play([script.requested(base_branch="release"), script.prepared()])
    assert named.mission.base_branch == "main"  # the broker's word is what happened


def test_mission_status_follows_the_happy_path(script):
    statuses = []
    view = MissionView()
    for event in script.happy_path():
        view = play([event], view)
        statuses.append(view.mission.status)
    assert statuses == [
        "requested",
        "preparing",
        "awaiting_approval",
        "running",
        "running",
        "running",
        "running",
        "completed",
    ]
    mission = view.mission
    assert mission.integration_branch == f"aether/{script.mission_id}"
    assert mission.base_sha == "a" * 40
    assert mission.final_sha == "e" * 40
    assert mission.plan_version == 1
    assert mission.approved_version == 1
    assert mission.offline is True
    assert mission.model == "offline-planner"
    assert mission.correlation_id == script.correlation_id


def test_task_status_follows_ready_workspace_agent_and_merge(script):
    view = play([script.requested(), script.prepared(), script.plan(), script.approved()])
    assert {t.task_id: t.status for t in view.tasks.values()} == {"t1": "pending", "t2": "pending"}

    view = play([script.task_ready("t1")], view)
    assert view.tasks["t1"].status == "ready"
    assert view.tasks["t1"].attempt == 1

    ready = script.task_ready("t1")
    workspace = WorkspaceReady(
        **script.meta(),
        task=ready.task,
        attempt=1,
        model="claude-test",
        branch="aether/x/t1",
        worktree_path="/tmp/wt",
        base_sha="b" * 40,
    )
    view = play([workspace], view)
    assert view.tasks["t1"].status == "running"
    assert view.tasks["t1"].branch == "aether/x/t1"
    assert view.tasks["t1"].base_sha == "b" * 40

    view = play([script.agent_completed("t1")], view)
    assert view.tasks["t1"].status == "completed"
    assert view.tasks["t1"].commit_sha == "c" * 40

    view = play([script.merged("t1")], view)
    assert view.tasks["t1"].status == "merged"
    assert view.tasks["t1"].merge_sha == "d" * 40
    assert view.tasks["t2"].status == "pending"
    assert view.tasks["t1"].resolution is False


def test_a_task_merged_by_a_resolution_attempt_says_so(script):
    view = play([script.requested(), script.prepared(), script.plan(), script.approved()])
    view = play([script.task_ready("t1"), script.agent_completed("t1")], view)
    merged = msgspec.structs.replace(script.merged("t1"), resolution=True)
    view = play([merged], view)
    assert view.tasks["t1"].status == "merged"
    assert view.tasks["t1"].resolution is True


def test_a_merge_withheld_after_a_cancel_says_why_the_task_never_merged(script):
    view = play([script.requested(), script.plan(), script.approved(), script.task_ready("t1")])
    view = play(
        [
            AgentCompleted(
                **script.meta(), task_id="t1", attempt=1, commit_sha="c" * 40, branch=""
            ),
            MissionCancelled(**script.meta(), reason="changed my mind"),
            MergeWithheld(
                **script.meta(),
                task_id="t1",
                attempt=1,
                commit_sha="c" * 40,
                integration_sha="f" * 40,
                reason="the mission was cancelled: changed my mind",
            ),
        ],
        view,
    )
    assert view.mission is not None and view.mission.status == "cancelled"
    assert view.tasks["t1"].status == "completed"
    assert view.tasks["t1"].merge_sha is None
    assert view.tasks["t1"].error == "not merged: the mission was cancelled: changed my mind"


def test_merge_conflict_and_agent_failure_mark_the_task(script):
    view = play([script.requested(), script.plan(), script.approved(), script.task_ready("t1")])
    conflicted = MergeConflicted(
        **script.meta(), task_id="t1", attempt=1, files=["a.py", "b.py"], integration_sha="f" * 40
    )
    view = play([conflicted], view)
    assert view.tasks["t1"].status == "conflicted"
    assert "a.py, b.py" in view.tasks["t1"].error

    view = play([script.task_ready("t1", attempt=2)], view)
    assert view.tasks["t1"].status == "ready"
    assert view.tasks["t1"].attempt == 2
    assert view.tasks["t1"].error is None

    view = play([AgentFailed(**script.meta(), task_id="t1", attempt=2, reason="tests fail")], view)
    assert view.tasks["t1"].status == "failed"
    assert view.tasks["t1"].error == "tests fail"

    view = play([TaskRetried(**script.meta(), task_id="t1", attempt=3, reason="retry")], view)
    assert view.tasks["t1"].status == "pending"
    assert view.tasks["t1"].attempt == 3


def test_a_merge_refused_without_conflicting_files_says_why_not_unknown_files(script):
    start = [script.requested(), script.plan(), script.approved(), script.task_ready("t1")]
    for refusal, detail in (
        ("conflict_markers", "conflict markers left in 1 file(s): a.py:3\nResolve them."),
        ("verification_failed", "verification failed: `make test` exited with 2 after 1.0s"),
        ("", "verification failed: `make test` exited with 2 after 1.0s\n--- output ---"),
    ):
        refused = MergeConflicted(
            **script.meta(),
            task_id="t1",
            attempt=1,
            files=[],
            integration_sha="f" * 40,
            detail=detail,
            refusal=refusal,
        )
        view = play([refused], play(start))
        assert view.tasks["t1"].status == "conflicted"
        # As the command line and the board's task page tell it: not a conflict.
        assert view.tasks["t1"].error == f"not merged: {detail.splitlines()[0]}"
    unsafe = MergeConflicted(
        **script.meta(),
        task_id="t1",
        attempt=1,
        files=["../x.py"],
        integration_sha="f" * 40,
        detail="paths…",
        refusal="unsafe_paths",
    )
    view = play([unsafe], play(start))
    assert view.tasks["t1"].error == "not merged: paths no checkout may write: ../x.py"


def test_news_from_an_older_attempt_is_ignored(script):
    view = play([script.requested(), script.plan(), script.task_ready("t1", attempt=2)])
    late = AgentFailed(**script.meta(), task_id="t1", attempt=1, reason="old news")
    assert fold(view, late).tasks == []


def test_a_merged_task_stays_merged(script):
    view = play([script.requested(), script.plan(), script.task_ready("t1"), script.merged("t1")])
    late = AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r", model="m")
    assert fold(view, late).tasks == []
    assert view.tasks["t1"].status == "merged"


def test_plan_failure_and_revision(script):
    view = play([script.requested(), script.prepared()])
    view = play([PlanFailed(**script.meta(), reason="model refused")], view)
    assert view.mission.status == "plan_failed"
    assert view.mission.error == "model refused"

    view = play([script.plan(version=2)], view)
    assert view.mission.status == "awaiting_approval"
    assert view.mission.error is None


def test_a_new_plan_version_replaces_pending_tasks(script):
    view = play([script.requested(), script.plan(version=1, task_ids=("t1", "t2"))])
    changes = fold(view, script.plan(version=2, task_ids=("t1", "t3")))
    assert changes.plan is not None
    assert changes.plan.version == 2
    assert changes.removed_tasks == ["t2"]
    assert [t.task_id for t in changes.tasks] == ["t1", "t3"]
    view = play([script.plan(version=2, task_ids=("t1", "t3"))], view)
    assert view.mission.plan_version == 2
    assert sorted(view.tasks) == ["t1", "t3"]


def test_an_older_plan_arriving_late_is_history_only(script):
    view = play([script.requested(), script.plan(version=2, task_ids=("t1",))])
    changes = fold(view, script.plan(version=1, task_ids=("t9",)))
    assert changes.plan is not None
    assert changes.tasks == []
    assert changes.mission is not None
    assert changes.mission.plan_version == 2


def test_pause_and_resume_return_to_where_the_mission_was(script):
    view = play([script.requested(), script.plan(), script.approved()])
    view = play([MissionPaused(**script.meta(), reason="lunch")], view)
    assert view.mission.status == "paused"
    view = play([script.task_ready("t1")], view)
    assert view.mission.status == "paused"
    view = play([MissionResumed(**script.meta())], view)
    assert view.mission.status == "running"

    other = play([script.requested(), script.plan(), MissionPaused(**script.meta())])
    other = play([MissionResumed(**script.meta())], other)
    assert other.mission.status == "awaiting_approval"


def test_a_completed_mission_shows_where_its_result_was_delivered(script):
    completed = play(script.happy_path())
    assert completed.mission.delivery is None
    branch, sha = completed.mission.integration_branch, completed.mission.final_sha
    where = {"integration_branch": branch, "sha": sha, "remote": "https://git.example/app"}
    failed = BranchPushFailed(**script.meta(), **where, reason="the remote refused it")
    view = play([failed], completed)
    assert view.mission.status == "completed"
    delivery = view.mission.delivery
    assert (delivery.status, delivery.reason, delivery.sha) == (
        "failed",
        "the remote refused it",
        sha,
    )
    # Pushed later (a retry asked for by a person, another broker): the push is shown.
    view = play([BranchPushed(**script.meta(), **where, already_there=True)], view)
    delivery = view.mission.delivery
    assert (delivery.status, delivery.reason, delivery.already_there) == ("pushed", None, True)
    assert (delivery.branch, delivery.remote) == (branch, "https://git.example/app")
    # A failure recorded after a push does not hide that the result was delivered.
    assert play([failed], view).mission.delivery == delivery
    assert view.mission.status == "completed"


def test_a_delivery_announced_at_preparation_is_pending_until_the_push_is_reported(script):
    remote = "https://git.example/app"
    view = play([script.requested(), script.prepared(delivery_remote=remote)])
    announced = view.mission.delivery
    assert (announced.status, announced.remote, announced.sha) == ("pending", remote, "")
    assert announced.branch == f"aether/{script.mission_id}"
    rest = [script.plan(task_ids=("t1",)), script.approved(), script.task_ready("t1")]
    done = script.completed()
    view = play([*rest, script.agent_completed("t1"), script.merged("t1"), done], view)
    pushing = view.mission.delivery
    assert (pushing.status, pushing.sha, pushing.at) == (
        "pending",
        done.final_sha,
        done.occurred_at,
    )
    # A retry cannot be asked for (nor folded) while the broker has not reported.
    assert play([DeliveryRetryRequested(**script.meta())], view).mission.delivery == pushing
    where = {"integration_branch": done.integration_branch, "sha": done.final_sha, "remote": remote}
    pushed = play([BranchPushed(**script.meta(), **where)], view).mission.delivery
    assert (pushed.status, pushed.sha) == ("pushed", done.final_sha)
    # A broker that pushes nowhere announces nothing.
    assert play([script.requested(), script.prepared()]).mission.delivery is None


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda s: MissionFailed(**s.meta(), reason="budget"), "failed"),
        (lambda s: MissionCancelled(**s.meta(), reason="by user"), "cancelled"),
        (lambda s: s.completed(), "completed"),
    ],
)
def test_a_finished_mission_stays_finished(script, make, status):
    view = play([script.requested(), script.plan(), script.approved(), make(script)])
    assert view.mission.status == status
    view = play([script.plan(version=2), MissionPaused(**script.meta())], view)
    assert view.mission.status == status


def test_cost_stays_unknown_until_a_price_is_known(script):
    view = play([script.requested(), script.usage(None, tokens=100)])
    assert view.mission.cost_usd is None
    assert view.mission.cost_complete is False
    assert view.mission.tokens_in == 100
    assert view.mission.tokens_out == 50

    view = play([script.usage(0.25), script.usage(0.5)], view)
    assert view.mission.cost_usd == pytest.approx(0.75)
    assert view.mission.cost_complete is False
    assert view.mission.tokens_in == 300


def test_known_costs_add_up_and_stay_complete(script):
    view = play([script.requested(), script.usage(0.1), script.usage(0.2)])
    assert view.mission.cost_usd == pytest.approx(0.3)
    assert view.mission.cost_complete is True


def test_events_of_an_unknown_mission_change_no_rows(script):
    assert fold(MissionView(), script.plan()).empty


def test_a_second_request_for_the_same_mission_is_ignored(script):
    view = play([script.requested(), script.plan()])
    assert fold(view, script.requested(requirement="something else")).empty


def only_read(view: MissionView, event: Event) -> MissionView:
    """The view the adapter loads for ``event``: the mission and the rows it reads."""
    wanted = tasks_read(event)
    if wanted is None:
        return MissionView(mission=view.mission, tasks=dict(view.tasks))
    tasks = {t: view.tasks[t] for t in wanted if t in view.tasks}
    count = None if set(wanted) <= tasks.keys() else len(view.tasks)
    return MissionView(mission=view.mission, tasks=tasks, task_count=count)


def test_folding_only_the_rows_an_event_reads_changes_what_the_whole_mission_would(script):
    events: list[Event] = [
        script.requested(),
        script.prepared(),
        script.plan(task_ids=("t1", "t2", "t3")),
        script.approved(),
        WaveStarted(**script.meta(), wave=1, task_ids=["t1", "t2", "t9"]),
        script.task_ready("t1"),
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r", model="m"),
        script.usage(0.5),
        msgspec.structs.replace(script.usage(0.25), task_id="t1"),
        script.agent_completed("t1"),
        script.merged("t1"),
        script.task_ready("t9"),  # a task the plan never listed
        script.task_ready("t2"),
        AgentFailed(**script.meta(), task_id="t2", attempt=1, reason="no"),
        TaskRetryRequested(**script.meta(), task_id="t2"),
        TaskSkipped(**script.meta(), task_id="t3", reason="not needed"),
        MergeConflicted(
            **script.meta(), task_id="t9", attempt=1, files=["a"], integration_sha="f" * 40
        ),
        script.plan(version=2, task_ids=("t1", "t4")),
        MissionPaused(**script.meta()),
        script.completed(),
    ]
    view = MissionView()
    for event in events:
        assert fold(only_read(view, event), event) == fold(view, event), event
        view = play([event], view)
    assert view.tasks["t9"].position == 3  # placed after the three planned tasks
    assert view.tasks["t1"].cost_usd == 0.25
