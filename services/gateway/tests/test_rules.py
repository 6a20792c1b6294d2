"""The pure rules behind the new routes: folding, the graph, commands, scopes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_events import (
    AgentProgress,
    AgentStarted,
    BudgetExceeded,
    BudgetRaised,
    BudgetWarning,
    MissionAnswered,
    MissionMessagePosted,
    MissionPaused,
    MissionResumed,
    PlanClarificationRequested,
    RepositoryPrepared,
    TaskEscalated,
    TaskRetryRequested,
    TaskSkipped,
    Usage,
    UsageRecorded,
    WaveStarted,
    WorkspaceFailed,
)
from aether_gateway.domain import Task, fold, session_update, task_graph
from aether_gateway.domain import commands as decide
from aether_gateway.domain.auth import Principal, parse_scopes
from aether_gateway.domain.commands import Refusal

from .test_domain import play

NOW = datetime(2026, 2, 1, tzinfo=UTC)


def running(script):
    return play([script.requested(), script.prepared(), script.plan(), script.approved()])


def test_questions_wait_for_an_answer_and_an_answer_ends_the_mission(script):
    view = play([script.requested(), script.prepared()])
    view = play([PlanClarificationRequested(**script.meta(), questions=["Which?"])], view)
    assert view.mission.status == "awaiting_input"
    assert view.mission.questions == ["Which?"]
    view = play([MissionMessagePosted(**script.meta(), text="That one")], view)
    assert view.mission.status == "preparing"
    assert view.mission.questions == []
    view = play([MissionAnswered(**script.meta(), answer="42")], view)
    assert view.mission.status == "answered"
    assert view.mission.answer == "42"
    view = play([MissionPaused(**script.meta())], view)
    assert view.mission.status == "answered"


def test_a_paused_mission_resumes_where_it_was_and_counts_its_steps(script):
    view = running(script)
    view = play([MissionPaused(**script.meta()), script.task_ready("t1")], view)
    assert view.mission.status == "paused"
    view = play([MissionResumed(**script.meta())], view)
    assert view.mission.status == "running"
    assert (view.mission.pauses, view.mission.resumes) == (1, 1)


def test_escalation_retry_and_skip_move_the_task(script):
    view = running(script)
    view = play(
        [
            script.task_ready("t1"),
            TaskEscalated(**script.meta(), task_id="t1", attempt=1, reason="x"),
        ],
        view,
    )
    assert view.tasks["t1"].status == "escalated"
    view = play([TaskRetryRequested(**script.meta(), task_id="t1")], view)
    assert view.tasks["t1"].status == "pending"
    # A retry asked of a task that is not stuck changes nothing.
    assert fold(view, TaskRetryRequested(**script.meta(), task_id="t1")).tasks == []
    view = play([TaskSkipped(**script.meta(), task_id="t2", reason="later")], view)
    assert view.tasks["t2"].status == "skipped"
    assert view.tasks["t2"].error == "skipped: later"
    # A skipped task stays skipped, whatever late news arrives.
    assert fold(view, script.task_ready("t2", attempt=2)).tasks == []
    view = play([WorkspaceFailed(**script.meta(), task_id="t1", attempt=1, reason="disk")], view)
    assert view.tasks["t1"].error == "workspace: disk"


def test_budgets_warn_exceed_and_clear_when_raised(script):
    view = running(script)
    view = play([BudgetWarning(**script.meta(), spent_usd=0.8, budget_usd=1.0)], view)
    assert view.mission.budget_warning and not view.mission.budget_exceeded
    view = play([BudgetExceeded(**script.meta(), spent_usd=1.1, budget_usd=1.0)], view)
    assert view.mission.budget_exceeded
    changes = fold(
        view, BudgetExceeded(**script.meta(), spent_usd=1, budget_usd=1, scope="daily:x")
    )
    assert changes.alert is not None and changes.alert.scope == "daily:x"
    view = play([BudgetRaised(**script.meta(), budget_usd=5.0)], view)
    assert view.mission.budget_usd == 5.0
    assert not view.mission.budget_warning and not view.mission.budget_exceeded


def test_usage_adds_up_per_task_over_attempts(script):
    view = play([script.task_ready("t1")], running(script))

    def usage(cost, attempt):
        return UsageRecorded(
            **script.meta(),
            service="agent-runner",
            model="m",
            usage=Usage(input_tokens=10, output_tokens=1, cost_usd=cost),
            step="agent",
            task_id="t1",
            attempt=attempt,
        )

    view = play([usage(0.5, 1), script.task_ready("t1", attempt=2), usage(None, 2)], view)
    task = view.tasks["t1"]
    assert (task.tokens_in, task.cost_usd, task.cost_complete) == (20, 0.5, False)


def test_waves_mark_the_mission_and_its_tasks(script):
    view = play([WaveStarted(**script.meta(), wave=2, task_ids=["t2"])], running(script))
    assert view.mission.current_wave == 2
    assert view.tasks["t2"].wave == 2
    view = play([WaveStarted(**script.meta(), wave=1, task_ids=[])], view)
    assert view.mission.current_wave == 2


def test_agent_sessions_come_from_both_streams(script):
    started = session_update(
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r", model="m")
    )
    assert started.status == "running" and started.runner_id == "r"
    progress = session_update(
        AgentProgress(**script.meta(), task_id="t1", attempt=1, runner_id="r", turns=3)
    )
    assert progress.status is None and progress.turns == 3 and progress.progress_at is not None
    assert session_update(script.requested()) is None


def _task(task_id, *deps):
    return Task(
        mission_id="m", task_id=task_id, title=task_id, updated_at=NOW, depends_on=list(deps)
    )


def test_the_graph_layers_tasks_by_their_dependencies():
    graph = task_graph([_task("a"), _task("b"), _task("c", "a", "b"), _task("d", "c", "zz")])
    assert graph.layers == [["a", "b"], ["c"], ["d"]]
    assert [(e.source, e.target) for e in graph.edges] == [("a", "c"), ("b", "c"), ("c", "d")]
    cyclic = task_graph([_task("a", "b"), _task("b", "a"), _task("c")])
    assert cyclic.layers == [["c"], ["a", "b"]]


@given(st.lists(st.lists(st.integers(0, 9), max_size=3), min_size=1, max_size=10))
def test_every_task_lands_in_exactly_one_layer_after_its_dependencies(deps):
    tasks = [_task(f"t{i}", *(f"t{d}" for d in ds if d < i)) for i, ds in enumerate(deps)]
    graph = task_graph(tasks)
    placed = [t for layer in graph.layers for t in layer]
    assert sorted(placed) == sorted(t.task_id for t in tasks)
    layer_of = {t: n for n, layer in enumerate(graph.layers) for t in layer}
    for edge in graph.edges:
        assert layer_of[edge.source] < layer_of[edge.target]


def test_commands_name_their_step(script):
    mission = running(script).mission
    first = decide.pause(mission, "", NOW, "a")
    assert decide.pause(mission, "other reason", NOW, "b").event_id == first.event_id
    paused = play([first], running(script)).mission
    with pytest.raises(Refusal, match="already paused"):
        decide.pause(paused, "", NOW, None)
    resumed = decide.resume(paused, NOW, None)
    after = play([first, resumed], running(script)).mission
    assert decide.pause(after, "", NOW, None).event_id != first.event_id
    assert (
        decide.cancel(mission, "", NOW, None).event_id
        == decide.cancel(mission, "x", NOW, None).event_id
    )
    raised = decide.raise_budget(mission, 9.0, NOW, None)
    assert raised.event_id == decide.raise_budget(mission, 9, NOW, None).event_id


def test_approval_rules(script):
    view = play([script.requested(), script.prepared()])
    with pytest.raises(Refusal, match="no plan"):
        decide.approve(view.mission, None, NOW, None)
    view = play([script.plan(version=1), script.plan(version=2)], view)
    with pytest.raises(Refusal, match="not the latest"):
        decide.approve(view.mission, 1, NOW, None)
    approval = decide.approve(view.mission, None, NOW, "bob")
    assert (approval.version, approval.approved_by) == (2, "bob")


def test_a_delivery_cannot_be_asked_for_again_before_the_broker_reported_it(script):
    events = script.happy_path()
    at = next(i for i, e in enumerate(events) if isinstance(e, RepositoryPrepared))
    events[at] = script.prepared(delivery_remote="https://git.example/app")
    completed = play(events).mission
    assert completed.status == "completed" and completed.delivery.status == "pending"
    with pytest.raises(Refusal, match="has not reported its push to https://git"):
        decide.retry_delivery(completed, NOW, None)


def test_scopes_are_ordered():
    admin = Principal(id="a", name="a", scopes=frozenset({"admin"}), kind="token")
    reader = Principal(id="r", name="r", scopes=frozenset({"read"}), kind="token")
    assert admin.allows("read") and admin.allows("write") and admin.allows("admin")
    assert reader.allows("read") and not reader.allows("write")
    assert parse_scopes("openid aether:write aether:bogus email", "aether:") == {"write"}
    assert parse_scopes(["admin", "read"]) == {"admin", "read"}
