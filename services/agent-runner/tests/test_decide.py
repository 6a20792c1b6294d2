"""What the runner answers with, given what it knows and what happened to the attempt.

Given-when-then: given the folded history, when the attempt ends in some way, then this
event (or none) is the one to publish."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aether_agent_runner.domain import State, StopOrder, decide, evolve
from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    PlannedTask,
    Usage,
    WorkspaceReady,
    encode,
    step_ids,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def meta(event_id: str = "e1") -> dict[str, Any]:
    return {"event_id": event_id, "mission_id": "m1", "occurred_at": NOW, "correlation_id": "c"}


READY = WorkspaceReady(
    **meta("r1"),
    task=PlannedTask(id="t1", title="Add a feature", files=["app/"]),
    attempt=2,
    model="claude-sonnet",
    branch="aether-tasks/m1/t1/a2",
    worktree_path="/wt/m1/t1-a2",
    base_sha="b" * 40,
)


def given(*events: Event) -> State:
    state = State()
    for event in events:
        state = evolve(state, event)
    return state


def test_given_no_result_yet_when_the_attempt_completes_then_its_result_is_reported() -> None:
    state = given(READY)
    result, kind = decide.committed(READY, NOW, "c" * 40, ["app/x.py"], "did it", Usage())
    assert kind == "completed" and isinstance(result, AgentCompleted)
    assert decide.result_to_report(state, READY, result) is result


def test_given_another_runner_reported_when_ours_ends_then_nothing_is_reported() -> None:
    elsewhere = AgentFailed(**meta("f1"), task_id="t1", attempt=2, reason="died")
    state = given(READY, elsewhere)
    ours = decide.failed(READY, NOW, "ours", True)
    assert decide.result_to_report(state, READY, ours) is None


def test_given_a_report_for_another_attempt_then_ours_is_still_reported() -> None:
    state = given(READY, AgentFailed(**meta("f1"), task_id="t1", attempt=1, reason="x"))
    ours = decide.failed(READY, NOW, "ours", True)
    assert decide.result_to_report(state, READY, ours) is ours


def test_when_there_is_no_result_then_nothing_is_reported() -> None:
    assert decide.result_to_report(given(READY), READY, None) is None


def test_when_a_stop_order_ends_the_attempt_then_it_fails_for_good() -> None:
    order = StopOrder("m1", "the mission was cancelled")
    event = decide.stopped(READY, NOW, order)
    assert isinstance(event, AgentFailed) and not event.retryable
    assert event.reason == "stopped: the mission was cancelled"
    assert event.event_id == decide.failed(READY, NOW, "x", True).event_id


def test_when_the_order_says_another_runner_reported_then_the_stop_reports_nothing() -> None:
    order = StopOrder("m1", "another runner reported this attempt", "t1", 2, report=False)
    assert decide.stopped(READY, NOW, order) is None


def test_when_the_agent_changed_nothing_then_the_attempt_fails_and_may_be_retried() -> None:
    event, kind = decide.committed(READY, NOW, None, [], "nothing to do", Usage())
    assert kind == "empty" and isinstance(event, AgentFailed) and event.retryable
    assert event.reason == "the agent finished without changing any file: nothing to do"


def test_when_the_commit_is_refused_then_the_attempt_fails_without_a_retry() -> None:
    event = decide.commit_refused(READY, NOW, "big.txt has 2,000 bytes")
    assert not event.retryable and event.reason == "the commit was refused: big.txt has 2,000 bytes"


def test_a_completion_names_the_files_outside_the_tasks_scope() -> None:
    event, _ = decide.committed(READY, NOW, "c" * 40, ["app/x.py", "README.md"], "s", Usage())
    assert isinstance(event, AgentCompleted) and event.files_outside_scope == ["README.md"]
    assert event.branch == READY.branch and event.attempt == 2


def test_the_commit_message_carries_the_trailers_and_the_known_cost() -> None:
    message = decide.commit_message(READY, "did it", Usage(cost_usd=0.25))
    assert message.startswith("Add a feature\n\ndid it\n\n")
    assert "Aether-Mission: m1\nAether-Task: t1\nAether-Attempt: 2\n" in message
    assert "Aether-Model: claude-sonnet\nAether-Cost-USD: 0.250000\n" in message
    unknown = decide.commit_message(READY, "did it", Usage(cost_usd=None))
    assert "Aether-Cost-USD: unknown\n" in unknown


def test_the_events_an_attempt_emits_are_named_after_their_steps() -> None:
    """Ids derived from the step: the same step emitted twice (a resumed attempt, a
    retried publish) is stored once."""
    started = decide.started(READY, NOW, "r", "bubblewrap")
    again = decide.started(READY, datetime(2026, 2, 1, tzinfo=UTC), "other", None)
    assert started.event_id == again.event_id
    usage = decide.usage_recorded(READY, NOW, 3, Usage(input_tokens=5), offline=False)
    assert usage.step == "agent:t1:a2:turn3" and usage.service == "agent-runner"
    assert usage.event_id != decide.usage_recorded(READY, NOW, 4, Usage(), False).event_id
    beat = decide.heartbeat(READY, NOW, "r", 7)
    assert beat.runner_id == "r" and beat.event_id != decide.heartbeat(READY, NOW, "r", 8).event_id
    progress = decide.progressed(
        READY,
        NOW,
        "r",
        turns=2,
        tool_calls=3,
        files_changed=["a"],
        usage=Usage(),
        last_action="read a",
    )
    assert progress.turns == 2 and progress.last_action == "read a"
    assert step_ids.agent_started("t1", 2)  # the constructors use the shared step names


# --- every report fits the attempt credential's largest message -------------------------

# Text JSON writes longest: a control character is one byte of UTF-8 and six in a message.
HOSTILE = "\x01é😀" * 100_000
CONTROL = "\x01"


def test_a_result_with_a_huge_summary_and_thousands_of_long_paths_fits_one_message() -> None:
    """The agent chose the summary and the paths of its commit (up to the commit's limit
    of files, each as long as a file system allows): the result is cut to fit, the cut
    marked, rather than refused by the bus and the attempt's connection dropped."""
    paths = [f"lib/{CONTROL * 200}/{n}-{'é' * 1000}.py" for n in range(2000)]
    result = decide.completed(READY, NOW, "c" * 40, HOSTILE, paths, Usage())
    assert len(encode(result)) <= decide.REPORT_BYTES
    assert "bytes cut" in result.summary
    assert result.files_changed[-1].endswith("more not listed")
    assert result.files_outside_scope[-1].endswith("more not listed")
    assert result.summary.startswith("\x01é😀")


def test_a_failure_and_a_progress_report_with_huge_texts_fit_one_message() -> None:
    failure = decide.failed(READY, NOW, HOSTILE, retryable=True)
    assert len(encode(failure)) <= decide.REPORT_BYTES
    assert "bytes cut" in failure.reason
    progress = decide.progressed(
        READY,
        NOW,
        "r1",
        turns=1,
        tool_calls=1,
        files_changed=[f"{n}-{CONTROL * 3000}" for n in range(500)],
        usage=Usage(),
        last_action=HOSTILE,
    )
    assert len(encode(progress)) <= decide.REPORT_BYTES
    # An ordinary report is left as it is.
    plain = decide.failed(READY, NOW, "tests failed", retryable=True)
    assert plain.reason == "tests failed"
