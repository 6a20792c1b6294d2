"""The agent runner's rules, without I/O.

What it remembers (settled and abandoned attempts, skipped tasks, ended missions), whether
an attempt may run, which events stop a running agent, and when a limit ends a task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    TaskSkipped,
    TaskTimedOut,
    Usage,
    WorkspaceReady,
    is_terminal,
    known_cost,
)

Attempt = tuple[str, str, int]


@dataclass
class State:
    settled: set[Attempt] = field(default_factory=set)
    abandoned: set[Attempt] = field(default_factory=set)
    skipped_tasks: set[tuple[str, str]] = field(default_factory=set)
    ended_missions: set[str] = field(default_factory=set)
    # The WorkspaceReady of every attempt not settled yet (by event id): what a runner
    # starting up may still owe (``pending``).
    ready: dict[Attempt, str] = field(default_factory=dict)


def evolve(state: State, event: Event) -> State:
    match event:
        case WorkspaceReady():
            attempt = (event.mission_id, event.task.id, event.attempt)
            if why_not_run(state, attempt) is None:
                state.ready[attempt] = event.event_id
        case AgentCompleted() | AgentFailed():
            state.settled.add((event.mission_id, event.task_id, event.attempt))
            state.ready.pop((event.mission_id, event.task_id, event.attempt), None)
        case TaskTimedOut():
            state.abandoned.add((event.mission_id, event.task_id, event.attempt))
            state.ready.pop((event.mission_id, event.task_id, event.attempt), None)
        case TaskSkipped():
            state.skipped_tasks.add((event.mission_id, event.task_id))
            _forget_ready(state, lambda a: a[:2] == (event.mission_id, event.task_id))
        case _ if is_terminal(event):
            state.ended_missions.add(event.mission_id)
            _forget_ready(state, lambda a: a[0] == event.mission_id)
    return state


def _forget_ready(state: State, gone: Callable[[Attempt], bool]) -> None:
    for attempt in [attempt for attempt in state.ready if gone(attempt)]:
        del state.ready[attempt]


def why_not_run(state: State, attempt: Attempt) -> str | None:
    """Why an attempt must not (or need not) run, or ``None`` when it should."""
    mission_id, task_id, _ = attempt
    if mission_id in state.ended_missions:
        return "the mission is over"
    if attempt in state.settled:
        return "the attempt already has a result"
    if attempt in state.abandoned:
        return "the scheduler timed the attempt out"
    if (mission_id, task_id) in state.skipped_tasks:
        return "the task was skipped"
    return None


def should_run(state: State, mission_id: str, task_id: str, attempt: int) -> bool:
    return why_not_run(state, (mission_id, task_id, attempt)) is None


def pending(state: State) -> list[str]:
    """The WorkspaceReady ids of every attempt that may still run and has no result: the
    work a runner starting up owes, whenever its workspace was announced."""
    return [
        event_id for attempt, event_id in state.ready.items() if why_not_run(state, attempt) is None
    ]


@dataclass(frozen=True)
class StopOrder:
    """Stop the running agents it names. ``report``: publish AgentFailed for them (not when
    another runner already reported the attempt)."""

    mission_id: str
    reason: str
    task_id: str | None = None
    attempt: int | None = None
    report: bool = True

    def applies_to(self, attempt: Attempt) -> bool:
        mission_id, task_id, number = attempt
        return (
            mission_id == self.mission_id
            and (self.task_id is None or self.task_id == task_id)
            and (self.attempt is None or self.attempt == number)
        )


def stop_order(event: Event) -> StopOrder | None:
    """Which running agents ``event`` stops, if any."""
    match event:
        case MissionCancelled():
            said = f": {event.reason}" if event.reason else ""
            return StopOrder(event.mission_id, f"the mission was cancelled{said}")
        case MissionFailed():
            return StopOrder(event.mission_id, f"the mission failed: {event.reason}")
        case MissionCompleted():
            return StopOrder(event.mission_id, "the mission completed")
        case MissionAnswered():
            return StopOrder(event.mission_id, "the mission was answered: nothing to build")
        case TaskTimedOut():
            return StopOrder(
                event.mission_id,
                "the scheduler timed this attempt out",
                event.task_id,
                event.attempt,
            )
        case TaskSkipped():
            return StopOrder(event.mission_id, "the task was skipped", event.task_id)
        case AgentCompleted() | AgentFailed():
            # Our own result arrives after our agent is done (a no-op); anyone else's means
            # the attempt is settled, and ours must not add a second result.
            return StopOrder(
                event.mission_id,
                "another runner reported this attempt",
                event.task_id,
                event.attempt,
                report=False,
            )
    return None


@dataclass(frozen=True)
class Limits:
    """Per-task limits; ``max_cost_usd`` ``None`` means no cost limit."""

    max_turns: int = 40
    max_tokens: int = 2_000_000
    max_seconds: float = 1800.0
    max_cost_usd: float | None = None


def limit_reached(limits: Limits, turns: int, usage: Usage, elapsed: float) -> str | None:
    """The limit that forbids another model call, said plainly, or ``None``.

    The cost counted is the known one (``aether_events.usage``): a call of unknown price
    adds nothing to it, and the token limit still bounds such calls.
    """
    if turns >= limits.max_turns:
        return f"turn limit reached: {turns} model calls of {limits.max_turns} allowed"
    tokens = usage.total_tokens
    if tokens >= limits.max_tokens:
        return f"token limit reached: {tokens:,} tokens of {limits.max_tokens:,} allowed"
    if limits.max_cost_usd is not None and known_cost(usage) >= limits.max_cost_usd:
        spent = known_cost(usage)
        return f"cost limit reached: ${spent:.4f} spent of ${limits.max_cost_usd:.4f} allowed"
    if elapsed >= limits.max_seconds:
        return wall_time_reason(limits, elapsed)
    return None


def wall_time_reason(limits: Limits, elapsed: float) -> str:
    return f"wall-time limit reached: {elapsed:.1f} s of {limits.max_seconds:g} s allowed"
