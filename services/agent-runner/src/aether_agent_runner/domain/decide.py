"""What the runner answers with: the events of an attempt, decided from what happened.

Pure: each function takes the attempt's WorkspaceReady, the time and what the attempt
found, and returns the event to publish (or ``None`` for nothing). The handler publishes
them; the attempt worker and the runtimes only say what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from aether_agent_runner.domain.state import Attempt, State, settled
from aether_agent_runner.domain.stop import StopOrder
from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    Event,
    Usage,
    UsageRecorded,
    WorkspaceReady,
    bounded,
    bounded_paths,
    caused_by,
    encode,
    outside_scope,
    step_ids,
)


def attempt_of(ready: WorkspaceReady) -> Attempt:
    return (ready.mission_id, ready.task.id, ready.attempt)


# The most bytes an attempt's result or progress report encodes to, before the events
# its result carries (``AgentCompleted.carried``: a start and a few usages, each small):
# well under ``ATTEMPT_EVENT_BYTES``, the runner's bound on every event of an attempt.
REPORT_BYTES = 64 * 1024
# What one text or list of paths of a report keeps at first (UTF-8 bytes; halved until
# the report fits, for text JSON writes longer than its bytes).
REPORT_TEXT_BYTES = 16 * 1024
REPORT_PATHS_BYTES = 24 * 1024
# The least a text or list is cut to.
_LEAST = 256

R = TypeVar("R", AgentCompleted, AgentFailed, AgentProgress)


def fitted(make: Callable[[int, int], R]) -> R:
    """``make(text_bytes, paths_bytes)`` with both halved until the event encodes within
    ``REPORT_BYTES``: a reason, summary or list of paths the agent chose is cut, marked,
    rather than the event refused by the bus (the attempt's credential takes no message
    over ``ATTEMPT_MAX_PAYLOAD``)."""
    text, paths = REPORT_TEXT_BYTES, REPORT_PATHS_BYTES
    while True:
        event = make(text, paths)
        if text <= _LEAST or len(encode(event)) <= REPORT_BYTES:
            return event
        text, paths = max(text // 2, _LEAST), max(paths // 2, _LEAST)


def failed(ready: WorkspaceReady, now: datetime, reason: str, retryable: bool) -> AgentFailed:
    return fitted(
        lambda text, _: AgentFailed(
            **caused_by(ready, now, step_ids.agent_failed(ready.task.id, ready.attempt)),
            task_id=ready.task.id,
            attempt=ready.attempt,
            reason=bounded(reason, text),
            retryable=retryable,
        )
    )


def completed(
    ready: WorkspaceReady,
    now: datetime,
    sha: str,
    summary: str,
    files: list[str],
    usage: Usage,
) -> AgentCompleted:
    outside = outside_scope(files, ready.task.files)
    return fitted(
        lambda text, paths: AgentCompleted(
            **caused_by(ready, now, step_ids.agent_completed(ready.task.id, ready.attempt)),
            task_id=ready.task.id,
            attempt=ready.attempt,
            commit_sha=sha,
            branch=ready.branch,
            summary=bounded(summary, text),
            files_changed=bounded_paths(files, paths),
            usage=usage,
            files_outside_scope=bounded_paths(outside, paths),
        )
    )


def result_to_report(state: State, ready: WorkspaceReady, result: Event | None) -> Event | None:
    """The attempt's result to publish: none when the attempt has one already (another
    runner reported it while ours worked), or when there is no result to give."""
    if result is None or settled(state, attempt_of(ready)):
        return None
    return result


def stopped(ready: WorkspaceReady, now: datetime, order: StopOrder) -> AgentFailed | None:
    """What a stopped attempt reports: a failure that is not retried, unless the order
    says another runner reported the attempt already."""
    if not order.report:
        return None
    return failed(ready, now, f"stopped: {order.reason}", retryable=False)


def commit_message(ready: WorkspaceReady, summary: str, usage: Usage) -> str:
    """The attempt's commit message, with the trailers the broker and people read."""
    task = ready.task
    cost = "unknown" if usage.cost_usd is None else f"{usage.cost_usd:.6f}"
    return (
        f"{task.title}\n\n{summary}\n\n"
        f"Aether-Mission: {ready.mission_id}\n"
        f"Aether-Task: {task.id}\n"
        f"Aether-Attempt: {ready.attempt}\n"
        f"Aether-Model: {ready.model}\n"
        f"Aether-Cost-USD: {cost}\n"
    )


def committed(
    ready: WorkspaceReady,
    now: datetime,
    sha: str | None,
    changed: list[str],
    summary: str,
    usage: Usage,
) -> tuple[Event, str]:
    """The result of a finished agent's commit, and its kind for the metrics: no commit
    (nothing changed) fails and may be retried; a commit completes the attempt."""
    if sha is None:
        reason = f"the agent finished without changing any file: {summary}"
        return failed(ready, now, reason, True), "empty"
    return completed(ready, now, sha, summary, changed, usage), "completed"


def commit_refused(ready: WorkspaceReady, now: datetime, why: str) -> AgentFailed:
    """Not retried: the same task would most likely produce the same change; a person
    decides (the reason says what was too much)."""
    return failed(ready, now, f"the commit was refused: {why}", False)


def started(
    ready: WorkspaceReady, now: datetime, runner_id: str, sandbox: str | None, runtime: str = ""
) -> AgentStarted:
    return AgentStarted(
        **caused_by(ready, now, step_ids.agent_started(ready.task.id, ready.attempt)),
        task_id=ready.task.id,
        attempt=ready.attempt,
        runner_id=runner_id,
        model=ready.model,
        sandbox=sandbox,
        runtime=runtime,
    )


def usage_recorded(
    ready: WorkspaceReady, now: datetime, turn: int, usage: Usage, offline: bool
) -> UsageRecorded:
    task_id, attempt = ready.task.id, ready.attempt
    return UsageRecorded(
        **caused_by(ready, now, step_ids.agent_usage(task_id, attempt, turn)),
        service="agent-runner",
        model=ready.model,
        usage=usage,
        step=f"agent:{task_id}:a{attempt}:turn{turn}",
        offline=offline,
        task_id=task_id,
        attempt=attempt,
    )


def progressed(
    ready: WorkspaceReady,
    now: datetime,
    runner_id: str,
    *,
    turns: int,
    tool_calls: int,
    files_changed: list[str],
    usage: Usage,
    last_action: str,
) -> AgentProgress:
    step = step_ids.agent_progress(ready.task.id, ready.attempt, turns, tool_calls)
    return fitted(
        lambda text, paths: AgentProgress(
            **caused_by(ready, now, step),
            task_id=ready.task.id,
            attempt=ready.attempt,
            runner_id=runner_id,
            turns=turns,
            tool_calls=tool_calls,
            files_changed=bounded_paths(files_changed, paths),
            usage=usage,
            last_action=bounded(last_action, text),
        )
    )


def heartbeat(ready: WorkspaceReady, now: datetime, runner_id: str, number: int) -> AgentHeartbeat:
    step = step_ids.heartbeat(ready.task.id, ready.attempt, runner_id, number)
    return AgentHeartbeat(
        **caused_by(ready, now, step),
        task_id=ready.task.id,
        attempt=ready.attempt,
        runner_id=runner_id,
    )
