"""The mission state machine, pure: ``evolve`` folds events; ``decide``, ``tick`` and
``catch_up`` say what happens next. Nothing here reads a clock, draws a random number or
does I/O."""

from aether_scheduler.domain.decide import catch_up, decide, mission_timer, next_timer, tick
from aether_scheduler.domain.evolve import evolve
from aether_scheduler.domain.model import Config, MissionState, State, TaskState
from aether_scheduler.domain.rules import backoff_seconds, scopes_overlap, waves_of

__all__ = [
    "Config",
    "MissionState",
    "State",
    "TaskState",
    "backoff_seconds",
    "catch_up",
    "decide",
    "evolve",
    "mission_timer",
    "next_timer",
    "scopes_overlap",
    "tick",
    "waves_of",
]
