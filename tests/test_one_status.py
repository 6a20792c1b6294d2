"""The gateway's read model, the scheduler and the command line's board derive the same
mission status from the same history: all use ``aether_events.status``, the gateway
reading the facts from its own rows, the scheduler and the board folding them with
``advance``. Checked over random histories, after every event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aether.client import SseEvent
from aether.watch import Board
from aether_events import (
    TERMINAL_STATUSES,
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionMessagePosted,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanClarificationRequested,
    PlanFailed,
    PlannedTask,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    TaskTimedOut,
    Usage,
    UsageRecorded,
    WorkspaceFailed,
    WorkspaceReady,
    encode,
    phase_of,
    tag_of,
)
from aether_gateway.domain.commands import approve
from aether_gateway.domain.fold import MissionView, fold
from aether_scheduler.domain import Config, State, decide, evolve

M = "m-0123456789abcdef"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASKS = [PlannedTask(id="t1", title="one"), PlannedTask(id="t2", title="two", depends_on=["t1"])]

# Event builders, each given the fields hypothesis draws.
KINDS: dict[str, Any] = {
    "prepared": lambda v: RepositoryPrepared(
        **_meta(),
        repository_path="/r",
        base_branch="main",
        base_sha="0" * 40,
        integration_branch="aether/x",
    ),
    "questions": lambda v: PlanClarificationRequested(**_meta(), questions=["why?"] * (v % 2)),
    "message": lambda v: MissionMessagePosted(**_meta(), text="because"),
    "revision": lambda v: PlanRevisionRequested(**_meta(), feedback="more", base_version=v),
    "plan": lambda v: PlanProduced(**_meta(), version=v, tasks=TASKS),
    "approved": lambda v: PlanApproved(**_meta(), version=v),
    "plan_failed": lambda v: PlanFailed(**_meta(), reason="no"),
    "paused": lambda v: MissionPaused(**_meta()),
    "resumed": lambda v: MissionResumed(**_meta()),
    "usage": lambda v: UsageRecorded(
        **_meta(), service="planner", model="x", step="s", usage=Usage(cost_usd=0.1 * v)
    ),
    "completed": lambda v: MissionCompleted(
        **_meta(), final_sha="1" * 40, integration_branch="aether/x", tasks_merged=2
    ),
    "answered": lambda v: MissionAnswered(**_meta(), answer="42"),
    "failed": lambda v: MissionFailed(**_meta(), reason="broke"),
    "cancelled": lambda v: MissionCancelled(**_meta()),
}
_counter = iter(range(10**9))


def _meta() -> dict[str, Any]:
    n = next(_counter)
    return {
        "event_id": f"e{n}",
        "mission_id": M,
        "occurred_at": T0 + timedelta(seconds=n % 1000),
        "correlation_id": "c",
    }


ENDINGS = {"completed", "answered", "failed", "cancelled"}
# The mission's end is drawn rarely, so most histories get far before it.
WEIGHTED = [kind for kind in sorted(KINDS) for _ in range(1 if kind in ENDINGS else 6)]
histories = st.lists(
    st.tuples(st.sampled_from(WEIGHTED), st.integers(1, 3)), min_size=1, max_size=25
)


@settings(max_examples=400, deadline=None)
@example(
    history=[("prepared", 1), ("questions", 1), ("paused", 1), ("resumed", 1)], auto_approve=False
)
@example(history=[("plan", 2), ("paused", 1), ("approved", 2), ("resumed", 1)], auto_approve=True)
@given(
    history=histories,
    auto_approve=st.booleans(),
)
def test_gateway_scheduler_and_cli_derive_the_same_mission_status(
    history: list[tuple[str, int]], auto_approve: bool
) -> None:
    request = MissionRequested(
        **_meta(), repository="/r", requirement="do it", auto_approve=auto_approve
    )
    view = MissionView()
    state = State()
    board = Board(M)
    events: list[Event] = [request, *(KINDS[kind](value) for kind, value in history)]
    for event in events:
        board.apply(SseEvent(None, tag_of(type(event)), msgspec.json.decode(encode(event))))
        changes = fold(view, event)
        if changes.mission is not None:
            view = MissionView(mission=changes.mission, tasks=view.tasks)
        state = evolve(state, event)
        assert view.mission is not None
        gateway = view.mission.status
        scheduled = state.missions[M]
        assert scheduled.progress.status == gateway, [type(e).__name__ for e in events]
        assert scheduled.status == phase_of(gateway)
        assert scheduled.terminal == (gateway in TERMINAL_STATUSES)
        assert scheduled.paused == (gateway == "paused")
        assert board.status == gateway


def test_a_finished_mission_stays_finished_in_both() -> None:
    request = MissionRequested(**_meta(), repository="/r", requirement="do it")
    cancelled = MissionCancelled(**_meta())
    late = KINDS["completed"](1)
    view, state = MissionView(), State()
    for event in (request, cancelled, late):
        changes = fold(view, event)
        view = MissionView(mission=changes.mission or view.mission)
        state = evolve(state, event)
    assert view.mission is not None
    assert view.mission.status == state.missions[M].progress.status == "cancelled"


def test_a_persons_and_the_schedulers_approval_of_a_plan_share_one_event_id() -> None:
    """The stream keeps one approval per plan version, whoever approves it first."""
    request = MissionRequested(**_meta(), repository="/r", requirement="x", auto_approve=True)
    plan = PlanProduced(**_meta(), version=2, tasks=TASKS)
    view, state = MissionView(), State()
    for event in (request, plan):
        changes = fold(view, event)
        view = MissionView(mission=changes.mission or view.mission)
        state = evolve(state, event)
    config = Config(tier_models={"small": "s", "standard": "m", "complex": "l"})
    automatic = [e for e in decide(state, plan, T0, config) if isinstance(e, PlanApproved)]
    assert view.mission is not None
    by_person = approve(view.mission, None, T0, "ann")
    assert [e.event_id for e in automatic] == [by_person.event_id]


def _task_event(kind: str, attempt: int) -> Event:
    task, t = TASKS[0], TASKS[0].id
    match kind:
        case "ready":
            return TaskReady(**_meta(), task=task, attempt=attempt, model="x")
        case "workspace":
            return WorkspaceReady(
                **_meta(),
                task=task,
                attempt=attempt,
                model="x",
                branch="b",
                worktree_path="/w",
                base_sha="0" * 40,
            )
        case "started":
            return AgentStarted(**_meta(), task_id=t, attempt=attempt, runner_id="r", model="x")
        case "completed":
            return AgentCompleted(**_meta(), task_id=t, attempt=attempt, commit_sha="c", branch="b")
        case "failed":
            return AgentFailed(**_meta(), task_id=t, attempt=attempt, reason="no")
        case "workspace_failed":
            return WorkspaceFailed(**_meta(), task_id=t, attempt=attempt, reason="no")
        case "merged":
            return BranchMerged(
                **_meta(), task_id=t, attempt=attempt, merge_sha="m", integration_branch="i"
            )
        case "conflicted":
            return MergeConflicted(
                **_meta(), task_id=t, attempt=attempt, files=["a"], integration_sha="i"
            )
        case "retried":
            return TaskRetried(**_meta(), task_id=t, attempt=attempt, reason="again")
        case "timed_out":
            return TaskTimedOut(**_meta(), task_id=t, attempt=attempt)
        case "escalated":
            return TaskEscalated(**_meta(), task_id=t, attempt=attempt, reason="3 times")
        case "retry_requested":
            return TaskRetryRequested(**_meta(), task_id=t)
        case _:
            return TaskSkipped(**_meta(), task_id=t)


TASK_KINDS = [
    "ready",
    "workspace",
    "started",
    "completed",
    "failed",
    "workspace_failed",
    "merged",
    "conflicted",
    "retried",
    "timed_out",
    "escalated",
    "retry_requested",
    "skipped",
]


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(
        st.tuples(st.sampled_from(TASK_KINDS), st.integers(1, 3)), min_size=1, max_size=20
    )
)
def test_gateway_and_cli_derive_the_same_task_status(history: list[tuple[str, int]]) -> None:
    request = MissionRequested(**_meta(), repository="/r", requirement="do it")
    plan = PlanProduced(**_meta(), version=1, tasks=TASKS)
    view, board = MissionView(), Board(M)
    for event in [request, plan]:
        board.apply(SseEvent(None, tag_of(type(event)), msgspec.json.decode(encode(event))))
        changes = fold(view, event)
        tasks = {task.task_id: task for task in changes.tasks}
        view = MissionView(mission=changes.mission or view.mission, tasks=tasks)
    for event in (_task_event(kind, attempt) for kind, attempt in history):
        board.apply(SseEvent(None, tag_of(type(event)), msgspec.json.decode(encode(event))))
        changes = fold(view, event)
        tasks = {**view.tasks, **{task.task_id: task for task in changes.tasks}}
        view = MissionView(mission=changes.mission or view.mission, tasks=tasks)
        assert board.tasks["t1"].status == view.tasks["t1"].status
        assert board.tasks["t1"].attempt == view.tasks["t1"].attempt
