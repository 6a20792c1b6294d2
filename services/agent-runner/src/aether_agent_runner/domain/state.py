"""What the agent runner remembers, folded from the stream: settled and abandoned
attempts, skipped tasks, ended missions, and the attempts still owed; whether an attempt
may run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    TaskSkipped,
    TaskTimedOut,
    WorkspaceReady,
    is_terminal,
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
