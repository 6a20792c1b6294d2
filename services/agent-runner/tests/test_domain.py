"""The runner's rules without I/O: what may run, what stops an agent, which limit ends it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aether_agent_runner.adapters.conversation import Conversation, identity, tool_result
from aether_agent_runner.config import DEFAULT_COMMANDS, AgentSettings
from aether_agent_runner.domain import (
    Limits,
    State,
    StopOrder,
    evolve,
    limit_reached,
    pending,
    stop_order,
    why_not_run,
)
from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    PlannedTask,
    TaskSkipped,
    TaskTimedOut,
    Usage,
    WorkspaceReady,
)
from aether_sandbox import SandboxSettings, SandboxUnavailable

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def meta(mission: str = "m1") -> dict[str, Any]:
    return {
        "event_id": f"e-{id(object())}",
        "mission_id": mission,
        "occurred_at": NOW,
        "correlation_id": "c",
    }


def fold(*events: Event) -> State:
    state = State()
    for event in events:
        state = evolve(state, event)
    return state


def test_a_fresh_attempt_runs() -> None:
    assert why_not_run(State(), ("m1", "t1", 1)) is None


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (MissionCancelled(**meta()), "the mission is over"),
        (MissionFailed(**meta(), reason="x"), "the mission is over"),
        (
            MissionCompleted(**meta(), final_sha="s", integration_branch="b", tasks_merged=1),
            "the mission is over",
        ),
        (
            AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha="s", branch="b"),
            "the attempt already has a result",
        ),
        (
            AgentFailed(**meta(), task_id="t1", attempt=1, reason="x"),
            "the attempt already has a result",
        ),
        (TaskTimedOut(**meta(), task_id="t1", attempt=1), "the scheduler timed the attempt out"),
        (TaskSkipped(**meta(), task_id="t1"), "the task was skipped"),
        (MissionAnswered(**meta(), answer="42"), "the mission is over"),
    ],
)
def test_what_keeps_an_attempt_from_running(event: Event, why: str) -> None:
    assert why_not_run(fold(event), ("m1", "t1", 1)) == why


def test_other_attempts_and_missions_are_not_affected() -> None:
    state = fold(
        AgentFailed(**meta(), task_id="t1", attempt=1, reason="x"),
        TaskTimedOut(**meta(), task_id="t2", attempt=1),
        MissionCancelled(**meta("m2")),
    )
    assert why_not_run(state, ("m1", "t1", 2)) is None
    assert why_not_run(state, ("m1", "t2", 2)) is None


def test_cancellation_stops_every_agent_of_its_mission_only() -> None:
    order = stop_order(MissionCancelled(**meta(), reason="changed my mind"))
    assert order == StopOrder("m1", "the mission was cancelled: changed my mind")
    assert order.applies_to(("m1", "t1", 1)) and order.applies_to(("m1", "t9", 3))
    assert not order.applies_to(("m2", "t1", 1))


def test_an_answered_mission_stops_its_agents_like_any_other_ending() -> None:
    order = stop_order(MissionAnswered(**meta(), answer="42"))
    assert order is not None and order.report and order.applies_to(("m1", "t1", 1))


def test_a_timeout_stops_only_that_attempt() -> None:
    order = stop_order(TaskTimedOut(**meta(), task_id="t1", attempt=2))
    assert order is not None and order.report
    assert order.applies_to(("m1", "t1", 2))
    assert not order.applies_to(("m1", "t1", 3)) and not order.applies_to(("m1", "t2", 2))


def test_a_result_from_elsewhere_stops_without_a_second_report() -> None:
    order = stop_order(AgentFailed(**meta(), task_id="t1", attempt=1, reason="x"))
    assert order is not None and not order.report and order.applies_to(("m1", "t1", 1))


LIMITS = Limits(max_turns=10, max_tokens=1000, max_seconds=60, max_cost_usd=0.5)


@pytest.mark.parametrize(
    ("turns", "usage", "elapsed", "reason"),
    [
        (9, Usage(input_tokens=900, cost_usd=0.4), 59.0, None),
        (10, Usage(), 0.0, "turn limit reached: 10 model calls of 10 allowed"),
        (
            1,
            Usage(input_tokens=600, cache_read_input_tokens=400),
            0.0,
            "token limit reached: 1,000 tokens of 1,000 allowed",
        ),
        (1, Usage(cost_usd=0.5), 0.0, "cost limit reached: $0.5000 spent of $0.5000 allowed"),
        (1, Usage(), 60.0, "wall-time limit reached: 60.0 s of 60 s allowed"),
        (1, Usage(cost_usd=None, input_tokens=10), 0.0, None),
        # A total with an unpriced part: the known spending still reaches the limit.
        (
            1,
            Usage(cost_usd=0.6, cost_complete=False),
            0.0,
            "cost limit reached: $0.6000 spent of $0.5000 allowed",
        ),
    ],
)
def test_limits(turns: int, usage: Usage, elapsed: float, reason: str | None) -> None:
    assert limit_reached(LIMITS, turns, usage, elapsed) == reason


def test_the_smaller_of_the_tasks_and_the_runners_cost_caps_applies() -> None:
    settings = AgentSettings(max_cost_usd=5.0)
    assert settings.limits(0.25).max_cost_usd == 0.25
    assert settings.limits(10.0).max_cost_usd == 5.0
    assert settings.limits(None).max_cost_usd == 5.0
    assert AgentSettings(max_cost_usd=None).limits(None).max_cost_usd is None


def test_settings_from_the_environment() -> None:
    settings = AgentSettings.from_env(
        {
            "AETHER_AGENT_CONCURRENCY": "3",
            "AETHER_AGENT_MAX_TURNS": "12",
            "AETHER_AGENT_MAX_COST_USD": "none",
            "AETHER_AGENT_COMMANDS": "python, pytest make",
            "AETHER_AGENT_COMMAND_ENV": "JAVA_HOME GOPATH",
        }
    )
    assert settings.concurrency == 3 and settings.max_turns == 12
    assert settings.max_cost_usd is None
    assert settings.commands == ("python", "pytest", "make")
    assert settings.command_env == ("JAVA_HOME", "GOPATH")
    # Inside the sandbox any program may run; unconfined, the allow-list guards.
    assert AgentSettings.from_env({}).commands is None
    assert AgentSettings.from_env({"AETHER_SANDBOX": "unconfined"}).commands == DEFAULT_COMMANDS
    assert AgentSettings.from_env({"AETHER_AGENT_COMMANDS": "*"}).commands is None
    assert AgentSettings.from_env({"AETHER_AGENT_COMMANDS": "none"}).commands == ()


def test_a_conversation_folds_back_from_its_records() -> None:
    me = identity("m1", "t1", 1, "abc")
    talk = Conversation.fresh("do it")
    records = [talk.begin_record(me)]
    use = {"type": "tool_use", "id": "u1", "name": "read_file", "input": {"path": "a"}}
    records.append(talk.reply([use], "tool_use", Usage(input_tokens=5, cost_usd=0.1), 1.0))
    records.append(talk.answer(tool_result("u1", "text"), 2.0, tool_call=True, changed=["a"]))

    again = Conversation.from_records(records, me)

    assert again is not None
    assert again.messages == talk.messages and again.turns == 1 and again.tool_calls == 1
    assert again.usage == Usage(input_tokens=5, cost_usd=0.1) and again.elapsed == 2.0
    assert again.changed == ["a"] and again.answered == {"u1"}
    assert Conversation.from_records(records, identity("m1", "t1", 2, "abc")) is None


def workspace(task_id: str = "t1", attempt: int = 1, mission: str = "m1") -> WorkspaceReady:
    return WorkspaceReady(
        **meta(mission),
        task=PlannedTask(id=task_id, title="t"),
        attempt=attempt,
        model="claude",
        branch=f"aether-tasks/{mission}/{task_id}/a{attempt}",
        worktree_path=f"/wt/{mission}/{task_id}-a{attempt}",
        base_sha="b" * 40,
    )


def test_an_announced_workspace_without_a_result_is_owed() -> None:
    ready = workspace()
    assert pending(fold(ready)) == [ready.event_id]


@pytest.mark.parametrize(
    "end",
    [
        AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha="s", branch="b"),
        AgentFailed(**meta(), task_id="t1", attempt=1, reason="x"),
        TaskTimedOut(**meta(), task_id="t1", attempt=1),
        TaskSkipped(**meta(), task_id="t1"),
        MissionCancelled(**meta()),
    ],
)
def test_an_attempt_with_an_end_is_not_owed_and_not_kept(end: Event) -> None:
    other = workspace("t2", mission="m2")
    state = fold(workspace(), other, end)
    assert pending(state) == [other.event_id]
    assert ("m1", "t1", 1) not in state.ready


def test_a_workspace_announced_after_its_attempt_ended_is_not_owed() -> None:
    state = fold(TaskTimedOut(**meta(), task_id="t1", attempt=1), workspace())
    assert pending(state) == []


@pytest.mark.parametrize(
    ("settings", "sandbox", "reported"),
    [
        (AgentSettings(), "bubblewrap-instance", "bubblewrap"),
        (AgentSettings(), SandboxUnavailable("no bwrap"), "unavailable"),
        (AgentSettings(sandbox=SandboxSettings(backend="unconfined")), None, "unconfined"),
        (AgentSettings(commands=()), None, None),
    ],
)
def test_agent_started_says_what_commands_run_in(
    settings: AgentSettings, sandbox: Any, reported: str | None
) -> None:
    from aether_agent_runner.adapters.attempt import Attempts
    from aether_sandbox import Bubblewrap

    if sandbox == "bubblewrap-instance":
        sandbox = Bubblewrap.__new__(Bubblewrap)
    attempts = Attempts(
        runtimes=lambda name: None,  # type: ignore[arg-type,return-value]
        settings=settings,
        runner_id="r",
        clock=lambda: datetime.now(UTC),
        sandbox=sandbox,
    )
    assert attempts.sandbox_name() == reported
