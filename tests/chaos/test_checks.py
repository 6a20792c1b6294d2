"""The chaos benchmark's checks, on hand-made histories: each finds what it is for."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

from aether_events import (
    AgentCompleted,
    AgentStarted,
    BranchMerged,
    Event,
    MissionCompleted,
    MissionRequested,
    PlannedTask,
    TaskReady,
    Usage,
    UsageRecorded,
    WorkspaceReady,
)
from bench.chaos.checks import (
    KillRecord,
    ReadModelView,
    Stored,
    check_completed,
    check_duplicates,
    check_merges,
    check_model_calls,
    check_read_model,
    stalls,
)
from bench.chaos.model import ModelCall

_ids = count(1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def meta(event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or f"e{next(_ids)}",
        "mission_id": "m1",
        "occurred_at": NOW,
        "correlation_id": "e0",
    }


def history(*events: Event, start: float = 100.0, step: float = 0.1) -> list[Stored]:
    return [Stored(i + 1, start + i * step, e) for i, e in enumerate(events)]


def task(task_id: str) -> PlannedTask:
    return PlannedTask(id=task_id, title=task_id)


def ready(task_id: str, attempt: int = 1, event_id: str | None = None) -> TaskReady:
    return TaskReady(**meta(event_id), task=task(task_id), attempt=attempt, model="m")


def workspace(task_id: str, attempt: int = 1) -> WorkspaceReady:
    return WorkspaceReady(
        **meta(),
        task=task(task_id),
        attempt=attempt,
        model="m",
        branch="b",
        worktree_path="/w",
        base_sha="0" * 40,
    )


def merged(task_id: str, sha: str = "a" * 40) -> BranchMerged:
    return BranchMerged(
        **meta(), task_id=task_id, attempt=1, merge_sha=sha, integration_branch="aether/m1"
    )


def usage(serial: int, step: str, task_id: str | None = None, attempt: int | None = None) -> Any:
    return UsageRecorded(
        **meta(),
        service="agent-runner" if task_id else "planner",
        model="m",
        usage=Usage(input_tokens=serial),
        step=step,
        task_id=task_id,
        attempt=attempt,
    )


def started(task_id: str, attempt: int = 1, event_id: str | None = None) -> AgentStarted:
    return AgentStarted(
        **meta(event_id), task_id=task_id, attempt=attempt, runner_id="r", model="m"
    )


def result(task_id: str, *carried: AgentStarted | UsageRecorded) -> AgentCompleted:
    """An attempt's result, carrying ``carried`` (as a short attempt's runner sends it)."""
    return AgentCompleted(
        **meta(),
        task_id=task_id,
        attempt=1,
        commit_sha="c" * 40,
        branch="b",
        carried=list(carried),
    )


def completed() -> MissionCompleted:
    return MissionCompleted(
        **meta(), final_sha="f" * 40, integration_branch="aether/m1", tasks_merged=1
    )


def requested() -> MissionRequested:
    return MissionRequested(**meta(), repository="/r", requirement="x")


def test_a_mission_without_an_end_is_reported_with_how_far_it_came() -> None:
    problems = check_completed(history(requested(), merged("t1")))
    assert problems == ["not completed: 1 tasks merged, last event branch_merged"]
    assert check_completed(history(requested(), merged("t1"), completed())) == []


def test_a_task_merged_twice_or_never_is_named() -> None:
    stored = history(merged("t1"), merged("t1"))
    problems = check_merges(stored, ["t1", "t2"], ["t1"])
    assert problems == ["1 of 2 tasks never merged: t2", "t1 merged 2 times on the stream"]
    assert check_merges(history(merged("t1")), ["t1"], ["t1", "t1"]) == [
        "merged more than once on the branch: t1"
    ]
    assert check_merges(history(merged("t1"), merged("t2")), ["t1", "t2"], ["t2", "t1"]) == []


def test_an_event_stored_twice_is_found_by_id_and_by_step() -> None:
    same_id = history(ready("t1", event_id="x"), ready("t1", event_id="x"))
    assert check_duplicates(same_id) == ["event x stored 2 times (seq [1, 2])"]
    same_step = history(ready("t1"), ready("t1"))
    assert check_duplicates(same_step) == [
        "task_ready:t1:1 stored 2 times under different ids (seq [1, 2])"
    ]
    assert check_duplicates(history(ready("t1"), ready("t1", attempt=2))) == []


def call(serial: int, task_id: str | None, turn: int, at: float) -> ModelCall:
    kind = "agent" if task_id else "plan"
    return ModelCall(serial, kind, task_id, turn, arrived=at, answered=at + 0.01)


def test_a_step_that_asked_the_model_twice_is_a_failure() -> None:
    stored = history(workspace("t1"), usage(2, "agent:t1:a1:turn0", "t1", 1), start=100.0, step=1.0)
    # Call 1 was made for the same step and its reply never recorded.
    calls = [call(1, "t1", 0, 100.5), call(2, "t1", 0, 100.7)]
    report = check_model_calls(stored, calls, [])
    assert report.problems == ["model asked twice for agent:t1:a1:turn0 (call #1 unused)"]


def test_a_repeat_whose_caller_died_with_the_call_in_flight_is_excused() -> None:
    stored = history(workspace("t1"), usage(2, "agent:t1:a1:turn0", "t1", 1), start=100.0, step=1.0)
    calls = [call(1, "t1", 0, 100.5), call(2, "t1", 0, 103.0)]
    killed = KillRecord("agent-runner", "run", "x", killed_at=100.505, restarted_at=101.0)
    report = check_model_calls(stored, calls, [killed])
    assert report.problems == [] and report.excused == 1
    # A kill of another service explains nothing.
    other = KillRecord("scheduler", "run", "x", killed_at=100.505, restarted_at=101.0)
    assert check_model_calls(stored, calls, [other]).problems != []


def test_a_call_of_an_attempt_that_was_replaced_is_not_a_repeat() -> None:
    stored = history(
        workspace("t1"),
        workspace("t1", attempt=2),
        usage(2, "agent:t1:a2:turn0", "t1", 2),
        start=100.0,
        step=10.0,
    )
    calls = [call(1, "t1", 0, 105.0), call(2, "t1", 0, 112.0)]
    report = check_model_calls(stored, calls, [])
    assert report.problems == [] and report.dropped == 1


def test_a_second_plan_call_is_a_repeat_unless_the_planner_died_during_the_first() -> None:
    stored = history(usage(2, "planner:abc:call1"), start=100.0)
    calls = [call(1, None, 0, 99.0), call(2, None, 0, 99.5)]
    assert check_model_calls(stored, calls, [])  # problems
    killed = KillRecord("planner", "run", "x", killed_at=99.005, restarted_at=99.2)
    assert check_model_calls(stored, calls, [killed]).problems == []


def test_usage_that_names_no_call_is_reported() -> None:
    stored = history(workspace("t1"), usage(7, "agent:t1:a1:turn0", "t1", 1))
    assert check_model_calls(stored, [], []).problems == [
        "usage of agent:t1:a1:turn0 names no call the model answered"
    ]


def test_stall_is_the_longest_gap_around_a_nats_restart() -> None:
    events = [ready(f"t{i}") for i in range(10)]
    stored = [Stored(i + 1, 100.0 + i, e) for i, e in enumerate(events[:5])]
    # Killed at 104.5, back at 105.0; the next event only at 130, then steady again.
    stored += [Stored(6 + i, 130.0 + i, e) for i, e in enumerate(events[5:])]
    kill = KillRecord("nats", "run", "x", killed_at=104.5, restarted_at=105.0)
    (stall,) = stalls(stored, [kill])
    assert stall.seconds == 26.0 and stall.down_seconds == 0.5
    assert stalls(stored, [KillRecord("planner", "run", "x", killed_at=104.5)]) == []


def test_read_model_must_show_the_streams_status_tasks_and_events() -> None:
    stored = history(requested(), ready("t1"), merged("t1"), completed())
    ids = [s.event.event_id for s in stored]
    good = ReadModelView(
        status="completed",
        final_sha="f" * 40,
        tasks={"t1": ("merged", 1, "a" * 40)},
        event_ids=ids,
    )
    assert check_read_model(stored, good) == []
    behind = ReadModelView(
        status="running", final_sha=None, tasks={"t1": ("running", 1, None)}, event_ids=ids[:2]
    )
    assert check_read_model(stored, behind) == [
        "status running, stream says completed",
        f"final sha None, stream says {'f' * 40}",
        "tasks not as merged: t1 running",
        "events: 2 shown for 4 on the stream (2 missing, 0 extra)",
    ]


def test_an_event_carried_after_it_was_stored_alone_is_not_a_step_recorded_twice() -> None:
    first = started("t1")
    assert check_duplicates(history(first, result("t1", first))) == []
    # Another start of the same attempt, under an id of its own, is one.
    other = started("t1")
    assert check_duplicates(history(first, result("t1", other))) == [
        "agent_started:t1:1 stored 2 times under different ids (seq [1, 2])"
    ]


def test_usage_a_result_carries_is_a_call_used_once() -> None:
    used = usage(2, "agent:t1:a1:turn0", "t1", 1)
    calls = [call(1, "t1", 0, 100.5), call(2, "t1", 0, 100.7)]
    # Alone, carried, or both (published alone, then carried again): the same findings.
    for results in ([used, result("t1")], [result("t1", used)], [used, result("t1", used)]):
        report = check_model_calls(history(workspace("t1"), *results), calls, [])
        assert report.used == 1
        # Call 1's reply was never recorded: the step asked the model twice.
        assert report.problems == ["model asked twice for agent:t1:a1:turn0 (call #1 unused)"]


def test_the_read_model_shows_the_events_a_result_carries_each_on_its_own() -> None:
    first, used = started("t1"), usage(2, "agent:t1:a1:turn0", "t1", 1)
    stored = history(requested(), first, result("t1", first, used))
    ids = [stored[0].event.event_id, first.event_id, used.event_id, stored[2].event.event_id]
    assert check_read_model(stored, ReadModelView(event_ids=ids)) == []
    assert check_read_model(stored, ReadModelView(event_ids=[ids[0], ids[3]])) == [
        "events: 2 shown for 4 on the stream (2 missing, 0 extra)"
    ]
