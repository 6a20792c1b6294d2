"""What the agent runner remembers, folded from the stream: settled and abandoned
attempts, skipped tasks, ended missions, and the attempts still owed; whether an attempt
may run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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
            attempt = (event.mission_id, event.task.id, event.attempt)
            mission = state.mission(event.mission_id)
            own = (event.task.id, event.attempt)
            if why_not_run(state, attempt) is not None or mission.ready.get(own) == event.event_id:
                return state
            ready = _frozen({**mission.ready, own: event.event_id})
            return _with(state, event.mission_id, replace(mission, ready=ready))
        case AgentCompleted() | AgentFailed():
            mission = state.mission(event.mission_id)
            own = (event.task_id, event.attempt)
            return _with(
                state,
                event.mission_id,
                replace(
                    mission,
                    settled=mission.settled | {own},
                    ready=_without(mission.ready, lambda a: a == own),
                ),
            )
        case TaskTimedOut():
            mission = state.mission(event.mission_id)
            own = (event.task_id, event.attempt)
            return _with(
                state,
                event.mission_id,
                replace(
                    mission,
                    abandoned=mission.abandoned | {own},
                    ready=_without(mission.ready, lambda a: a == own),
                ),
            )
        case TaskSkipped():
            mission = state.mission(event.mission_id)
            task_id = event.task_id
            return _with(
                state,
                event.mission_id,
                replace(
                    mission,
                    skipped_tasks=mission.skipped_tasks | {task_id},
                    ready=_without(mission.ready, lambda a: a[0] == task_id),
                ),
            )
        case _ if is_terminal(event):
            mission = state.mission(event.mission_id)
            ended = replace(mission, ended=True, ready=_frozen({}))
            return _with(state, event.mission_id, ended)
    return state


def _with(state: State, mission_id: str, mission: Mission) -> State:
    return replace(state, missions=state.missions.set(mission_id, mission))


def _frozen(ready: dict[tuple[str, int], str]) -> Mapping[tuple[str, int], str]:
    return MappingProxyType(ready)


def _without(
    ready: Mapping[tuple[str, int], str], gone: Callable[[tuple[str, int]], bool]
) -> Mapping[tuple[str, int], str]:
    """``ready`` without the attempts ``gone`` names (the same mapping when there are none)."""
    if not any(gone(attempt) for attempt in ready):
        return ready
    return _frozen({attempt: event_id for attempt, event_id in ready.items() if not gone(attempt)})


def why_not_run(state: State, attempt: Attempt) -> str | None:
    """Why an attempt must not (or need not) run, or ``None`` when it should."""
    mission_id, task_id, number = attempt
    mission = state.mission(mission_id)
    if mission.ended:
        return "the mission is over"
    if (task_id, number) in mission.settled:
        return "the attempt already has a result"
    if (task_id, number) in mission.abandoned:
        return "the scheduler timed the attempt out"
    if task_id in mission.skipped_tasks:
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
