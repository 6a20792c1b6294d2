"""What the agent runner remembers: which attempts are settled, which missions are over."""

from __future__ import annotations

from dataclasses import dataclass, field

from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
)

Attempt = tuple[str, str, int]


@dataclass
class State:
    settled: set[Attempt] = field(default_factory=set)
    ended_missions: set[str] = field(default_factory=set)


def evolve(state: State, event: Event) -> State:
    if isinstance(event, AgentCompleted | AgentFailed):
        state.settled.add((event.mission_id, event.task_id, event.attempt))
    elif isinstance(event, MissionCancelled | MissionCompleted | MissionFailed):
        state.ended_missions.add(event.mission_id)
    return state


def should_run(state: State, mission_id: str, task_id: str, attempt: int) -> bool:
    return (
        mission_id not in state.ended_missions
        and (mission_id, task_id, attempt) not in state.settled
    )
