"""The subject scheme.

Mission events live on ``aether.mission.<mission_id>.<type>`` in the ``AETHER_MISSIONS``
stream, so one mission's history is ``aether.mission.<mission_id>.>`` and one event type
across all missions is ``aether.mission.*.<type>``. High-volume telemetry (agent progress,
heartbeats) lives on ``aether.telemetry.<mission_id>.<type>`` in ``AETHER_TELEMETRY``,
which keeps it only briefly.
"""

from __future__ import annotations

import re

from aether_events.catalogue import TELEMETRY_TYPES, Event, tag_of

MISSION_PREFIX = "aether.mission"
TELEMETRY_PREFIX = "aether.telemetry"
ALL_MISSION_EVENTS = f"{MISSION_PREFIX}.>"
ALL_TELEMETRY = f"{TELEMETRY_PREFIX}.>"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_valid_token(value: str) -> bool:
    """Whether ``value`` can stand as one subject token (ids become tokens)."""
    return bool(_TOKEN.fullmatch(value))


def subject_for(event: Event) -> str:
    """The subject an event is published on."""
    if not is_valid_token(event.mission_id):
        raise ValueError(f"mission id {event.mission_id!r} is not a valid subject token")
    prefix = TELEMETRY_PREFIX if type(event) in TELEMETRY_TYPES else MISSION_PREFIX
    return f"{prefix}.{event.mission_id}.{tag_of(type(event))}"


def mission_subject(mission_id: str) -> str:
    """Filter for one mission's whole history."""
    return f"{MISSION_PREFIX}.{mission_id}.>"


def type_subject(cls: type[Event]) -> str:
    """Filter for one event type across every mission."""
    prefix = TELEMETRY_PREFIX if cls in TELEMETRY_TYPES else MISSION_PREFIX
    return f"{prefix}.*.{tag_of(cls)}"
