"""The logical steps that derived event ids are named after, one constructor per step.

An event caused by another gets the id ``derived_id(mission_id, *step)`` (see ``ids``):
publishing the same step again (a redelivery, a restart, a second service deciding the
same thing) repeats the id, and JetStream's duplicate window drops the copy. That only
works if every publisher of a step spells it identically: the gateway approving a plan
for a person and the scheduler approving it automatically must both name
``plan_approved(version)``. So publishers build steps here, never from bare strings, and
``caused_by`` and ``step_event_id`` accept only a ``Step``.

The tuples are part of the wire contract: changing one changes the ids of events already
stored, so a repeated step after an upgrade would no longer be recognised. The tests pin
a derived id for each.
"""

from __future__ import annotations

from typing import NewType

Step = NewType("Step", tuple[object, ...])


def _step(*parts: object) -> Step:
    return Step(parts)


# --- mission lifecycle (gateway commands, scheduler, git broker) ---------------------


def mission_requested() -> Step:
    return _step("mission_requested")


def repository_prepared() -> Step:
    return _step("repository_prepared")


def plan_approved(version: int) -> Step:
    """Shared by a person's approval (gateway) and the automatic one (scheduler)."""
    return _step("plan_approved", version)


def mission_message(principal_id: str, idempotency_key: str) -> Step:
    """A person's message sent with an ``Idempotency-Key``: one per person and key."""
    return _step("message", principal_id, idempotency_key)


def plan_revision_requested(version: int) -> Step:
    return _step("plan_revision_requested", version)


def mission_paused(resumes: int) -> Step:
    """The n-th pause, counted by the resumes before it, so a repeated command is one."""
    return _step("mission_paused", resumes)


def mission_resumed(pauses: int) -> Step:
    return _step("mission_resumed", pauses)


def mission_cancelled() -> Step:
    return _step("mission_cancelled")


def mission_completed() -> Step:
    return _step("mission_completed")


def branch_pushed(retry: str = "") -> Step:
    """The delivery of the completion, or of the retry (its event id) that asked again."""
    return _step("branch_pushed", retry) if retry else _step("branch_pushed")


def branch_push_failed(retry: str = "") -> Step:
    return _step("branch_push_failed", retry) if retry else _step("branch_push_failed")


def delivery_retry_requested(failed_at: str) -> Step:
    """Once per delivery given up (named by when it was): a repeated command is one."""
    return _step("delivery_retry_requested", failed_at)


def mission_failed(by: str | None = None) -> Step:
    """The scheduler's verdict (``by`` ``None``), or another service's (``by`` its name)."""
    return _step("mission_failed") if by is None else _step("mission_failed", by)


def budget_raised(budget_usd: float) -> Step:
    return _step("budget_raised", repr(float(budget_usd)))


def budget_warning(scope: str, budget_usd: float) -> Step:
    return _step("budget_warning", scope, budget_usd)


def budget_exceeded(scope: str, budget_usd: float | None = None) -> Step:
    """A mission's budget (named with its amount, so a raised budget can be exceeded
    again), or a global one (``day``, ``month``: once per mission)."""
    if budget_usd is None:
        return _step("budget_exceeded", scope)
    return _step("budget_exceeded", scope, budget_usd)


# --- tasks ---------------------------------------------------------------------------


def wave_started(wave: int) -> Step:
    return _step("wave_started", wave)


def wave_completed(wave: int) -> Step:
    return _step("wave_completed", wave)


def task_ready(task_id: str, attempt: int) -> Step:
    return _step("task_ready", task_id, attempt)


def task_retried(task_id: str, attempt: int) -> Step:
    """``attempt`` is the attempt the retry starts."""
    return _step("task_retried", task_id, attempt)


def task_timed_out(task_id: str, attempt: int) -> Step:
    return _step("task_timed_out", task_id, attempt)


def task_escalated(task_id: str, attempt: int) -> Step:
    return _step("task_escalated", task_id, attempt)


def task_retry_requested(task_id: str, attempt: int) -> Step:
    return _step("task_retry_requested", task_id, attempt)


def task_skipped(task_id: str) -> Step:
    return _step("task_skipped", task_id)


def workspace_ready(task_id: str, attempt: int) -> Step:
    return _step("workspace_ready", task_id, attempt)


def workspace_failed(task_id: str, attempt: int) -> Step:
    return _step("workspace_failed", task_id, attempt)


def branch_merged(task_id: str, attempt: int) -> Step:
    return _step("branch_merged", task_id, attempt)


def merge_conflicted(task_id: str, attempt: int) -> Step:
    return _step("merge_conflicted", task_id, attempt)


def merge_withheld(task_id: str, attempt: int) -> Step:
    return _step("merge_withheld", task_id, attempt)


# --- the agent at work ---------------------------------------------------------------


def agent_started(task_id: str, attempt: int) -> Step:
    return _step("agent_started", task_id, attempt)


def agent_completed(task_id: str, attempt: int) -> Step:
    return _step("agent_completed", task_id, attempt)


def agent_failed(task_id: str, attempt: int) -> Step:
    return _step("agent_failed", task_id, attempt)


def agent_progress(task_id: str, attempt: int, turns: int, tool_calls: int) -> Step:
    return _step("agent_progress", task_id, attempt, turns, tool_calls)


def heartbeat(task_id: str, attempt: int, runner_id: str, number: int) -> Step:
    return _step("heartbeat", task_id, attempt, runner_id, number)


def agent_usage(task_id: str, attempt: int, turn: int) -> Step:
    return _step("usage", "agent", task_id, attempt, turn)


def transcript_entry(task_id: str, attempt: int, sequence: int) -> Step:
    return _step("transcript", task_id, attempt, sequence)


def transcript_entries(task_id: str, attempt: int, first: int, last: int) -> Step:
    """Entries ``first`` to ``last`` (sequences) of an attempt's transcript, sent together."""
    return _step("transcript-entries", task_id, attempt, first, last)


# --- the planner ---------------------------------------------------------------------


def planner_usage(trigger_id: str, call: int) -> Step:
    return _step("usage", "planner", trigger_id, call)


def planner_outcome(trigger_id: str) -> Step:
    """Whatever the planner decided on a trigger (a plan, questions, an answer, a
    failure): one outcome per trigger, whichever it is."""
    return _step("planner-outcome", trigger_id)


# --- a service's handling of one event (``aether_runtime.steps``) -------------------


def step_failed(service: str, consumer: str, event_id: str, retry_id: str | None = None) -> Step:
    if retry_id is None:
        return _step("step_failed", service, consumer, event_id)
    return _step("step_failed", service, consumer, event_id, retry_id)


def step_unretriable(service: str, retry_id: str) -> Step:
    return _step("step_failed", service, retry_id)


def step_recovered(retry_id: str) -> Step:
    return _step("step_recovered", retry_id)
