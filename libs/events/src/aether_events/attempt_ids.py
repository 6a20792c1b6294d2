"""The ids of an attempt's own events: derived from their step, keyed with the attempt's.

An attempt's events (``subjects.ATTEMPT_TYPES``) are published with a credential of that
attempt alone, but the stream's duplicate window is per stream: an id another attempt
could compute (``ids.step_event_id`` is a function of public parts) could be sent first
and have that attempt's event dropped as a duplicate, and a reader that keeps the first
copy of each id (the gateway's events table) would keep the impostor. So the runner's
attempt publisher stores each such event under ``keyed_id(key, id)``: an HMAC of the id
its step derives, keyed with a secret of the attempt (``key``), which the scheduler
derives from its own master secret and gives only to a connection holding the attempt's
credential (``aether_runtime.attempt_auth``; decision 0030). The same step of the same
attempt, published again by a resumed or redelivered attempt on any runner, gets the
same key and so the same id, and the duplicate window still drops the copy.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from aether_events.catalogue import AgentCompleted, AgentFailed, Event, TranscriptEntries

# The keying itself is the services' too (``ids.keyed_id``, decision 0031).
from aether_events.ids import MIN_KEY_BYTES, keyed_id

E = TypeVar("E", bound=Event)

__all__ = ["MIN_KEY_BYTES", "keyed", "keyed_id"]


def keyed(event: E, key: bytes) -> E:
    """``event`` with its id keyed, and the ids of the events it carries (an attempt's
    result carries its start and usage, ``TranscriptEntries`` its entries): each is the
    same id it gets when it goes out alone."""
    match event:
        case AgentCompleted() | AgentFailed() if event.carried:
            carried = [keyed(inner, key) for inner in event.carried]
            return msgspec.structs.replace(
                event, event_id=keyed_id(key, event.event_id), carried=carried
            )
        case TranscriptEntries():
            entries = [keyed(inner, key) for inner in event.entries]
            return msgspec.structs.replace(
                event, event_id=keyed_id(key, event.event_id), entries=entries
            )
    return msgspec.structs.replace(event, event_id=keyed_id(key, event.event_id))
