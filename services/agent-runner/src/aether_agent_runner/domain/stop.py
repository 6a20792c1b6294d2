"""Which running agents an event stops."""

from __future__ import annotations

from dataclasses import dataclass

from aether_agent_runner.domain.state import Attempt
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
)


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
