"""What the agent runner remembers, folded from the stream: settled and abandoned
attempts, skipped tasks, ended missions, and the attempts still owed; whether an attempt
may run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from aether_agent_runner.domain.frozenmap import FrozenMap
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


@dataclass(frozen=True)
class Mission:
    """One mission's attempts as the runner knows them; each ``(task id, attempt)``."""

    ended: bool = False
    settled: frozenset[tuple[str, int]] = frozenset()
    abandoned: frozenset[tuple[str, int]] = frozenset()
    skipped_tasks: frozenset[str] = frozenset()
    # The WorkspaceReady of every attempt not settled yet (by event id): what a runner
    # starting up may still owe (``pending``).
    ready: Mapping[tuple[str, int], str] = field(default_factory=lambda: MappingProxyType({}))


NO_MISSION = Mission()


@dataclass(frozen=True)
class State:
    """Immutable: ``evolve`` returns a new state and leaves the one it was given alone.

    Kept by mission, so that folding an event copies one mission's few attempts (and a
    shard of the missions, ``FrozenMap``) rather than every attempt the stream held."""

    missions: FrozenMap[str, Mission] = field(default_factory=FrozenMap)

    def mission(self, mission_id: str) -> Mission:
        return self.missions.get(mission_id, NO_MISSION)

    @property
    def ready(self) -> Mapping[Attempt, str]:
        """Every owed attempt's WorkspaceReady id (built on demand: for tests and logs)."""
        return {
            (mission_id, task_id, number): event_id
            for mission_id, mission in self.missions.items()
            for (task_id, number), event_id in mission.ready.items()
        }


def evolve(state: State, event: Event) -> State:
    """The state after ``event`` (pure: ``state`` is not changed)."""
    match event:
        case WorkspaceReady():
            m = state.mission(event.mission_id)
            own = (event.task.id, event.attempt)
            if _why_not(m, own) is not None or m.ready.get(own) == event.event_id:
                return state
            ready = _frozen({**m.ready, own: event.event_id})
            changed = Mission(m.ended, m.settled, m.abandoned, m.skipped_tasks, ready)
        case AgentCompleted() | AgentFailed():
            m = state.mission(event.mission_id)
            own = (event.task_id, event.attempt)
            ready = _without(m.ready, own)
            changed = Mission(m.ended, m.settled | {own}, m.abandoned, m.skipped_tasks, ready)
        case TaskTimedOut():
            m = state.mission(event.mission_id)
            own = (event.task_id, event.attempt)
            ready = _without(m.ready, own)
            changed = Mission(m.ended, m.settled, m.abandoned | {own}, m.skipped_tasks, ready)
        case TaskSkipped():
            m = state.mission(event.mission_id)
            task_id = event.task_id
            ready = _frozen({a: e for a, e in m.ready.items() if a[0] != task_id})
            skipped = m.skipped_tasks | {task_id}
            changed = Mission(m.ended, m.settled, m.abandoned, skipped, ready)
        case _ if is_terminal(event):
            m = state.mission(event.mission_id)
            changed = Mission(True, m.settled, m.abandoned, m.skipped_tasks, _frozen({}))
        case _:
            return state
    return State(state.missions.set(event.mission_id, changed))


def _frozen(ready: dict[tuple[str, int], str]) -> Mapping[tuple[str, int], str]:
    return MappingProxyType(ready)


def _without(
    ready: Mapping[tuple[str, int], str], attempt: tuple[str, int]
) -> Mapping[tuple[str, int], str]:
    """``ready`` without ``attempt`` (the same mapping when it is not there)."""
    if attempt not in ready:
        return ready
    return _frozen({a: event_id for a, event_id in ready.items() if a != attempt})


def why_not_run(state: State, attempt: Attempt) -> str | None:
    """Why an attempt must not (or need not) run, or ``None`` when it should."""
    mission_id, task_id, number = attempt
    return _why_not(state.mission(mission_id), (task_id, number))


def _why_not(mission: Mission, attempt: tuple[str, int]) -> str | None:
    if mission.ended:
        return "the mission is over"
    if attempt in mission.settled:
        return "the attempt already has a result"
    if attempt in mission.abandoned:
        return "the scheduler timed the attempt out"
    if attempt[0] in mission.skipped_tasks:
        return "the task was skipped"
    return None


def settled(state: State, attempt: Attempt) -> bool:
    """Whether the attempt has a result (from this runner or another)."""
    mission_id, task_id, number = attempt
    return (task_id, number) in state.mission(mission_id).settled


def should_run(state: State, mission_id: str, task_id: str, attempt: int) -> bool:
    return why_not_run(state, (mission_id, task_id, attempt)) is None


def pending(state: State) -> list[str]:
    """The WorkspaceReady ids of every attempt that may still run and has no result: the
    work a runner starting up owes, whenever its workspace was announced."""
    return [
        event_id
        for mission_id, mission in state.missions.items()
        for (task_id, number), event_id in mission.ready.items()
        if why_not_run(state, (mission_id, task_id, number)) is None
    ]
