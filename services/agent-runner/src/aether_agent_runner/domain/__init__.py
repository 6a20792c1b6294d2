"""The agent runner's rules, without I/O.

What it remembers (``state``: settled and abandoned attempts, skipped tasks, ended
missions) and whether an attempt may run, which events stop a running agent (``stop``),
and when a limit ends a task or forbids a model call (``limits``).
"""

from aether_agent_runner.domain.limits import (
    Limits,
    limit_passed,
    limit_reached,
    reservation_refused,
    wall_time_reason,
)
from aether_agent_runner.domain.state import (
    Attempt,
    Mission,
    State,
    evolve,
    pending,
    settled,
    should_run,
    why_not_run,
)
from aether_agent_runner.domain.stop import StopOrder, stop_order

__all__ = [
    "Attempt",
    "Limits",
    "Mission",
    "State",
    "StopOrder",
    "evolve",
    "limit_passed",
    "limit_reached",
    "pending",
    "reservation_refused",
    "settled",
    "should_run",
    "stop_order",
    "wall_time_reason",
    "why_not_run",
]
