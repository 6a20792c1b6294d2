"""The events one message of the mission stream stands for.

An attempt's result may carry the attempt's ``AgentStarted`` and ``UsageRecorded``
events, and a ``TaskReady`` the waves decided with it (``aether_events.carried_by``); the
read model and the event streams give each as if it had come alone, right before the
event that carries it. They share its stream sequence, so each is also named by its
*part*: the message's own event is part 0, and the events it carries come before it, at
parts -n … -1. A (sequence, part) pair names one event, and ordered by it the events
are in the order they happened.
"""

from __future__ import annotations

from aether_events import Event, alone, carried_by


def unfolded(event: Event) -> list[tuple[Event, int]]:
    """The events the message ``event`` stands for, each with its part, in order: the
    events it carries, then itself as it would have come alone (carrying nothing)."""
    *carried, own = carried_by(event)
    own = alone(own)
    count = len(carried)
    return [*((each, part - count) for part, each in enumerate(carried)), (own, 0)]


def carries(event: Event) -> bool:
    """Whether the message ``event`` stands for more events than itself."""
    return len(carried_by(event)) > 1
