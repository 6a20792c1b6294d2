"""What the read model can still store of an event it cannot store as it is.

PostgreSQL refuses NUL in text and lone UTF-16 surrogates anywhere; the event decoder
refuses a payload with a lone surrogate escape. Such an event is still a fact on the
stream, so rather than hold up every later event the projection stores a sanitised copy
(each refused character replaced by U+FFFD) and records that it did.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import msgspec

from aether_events import Event, UnknownEventType, decode
from aether_gateway.domain.model import Mission

REPLACEMENT = "\ufffd"
# NUL, and a code point in the surrogate range: in a Python string a valid pair is one
# code point above U+FFFF, so any surrogate left is a lone one.
_REFUSED = re.compile("[\x00\ud800-\udfff]")


def scrub_text(text: str) -> str:
    """``text`` with every character PostgreSQL cannot store replaced by U+FFFD."""
    return _REFUSED.sub(REPLACEMENT, text)


def scrub(value: Any) -> tuple[Any, bool]:
    """Plain JSON-like data with every refused character in its strings (keys too)
    replaced, and whether there was any."""
    if isinstance(value, str):
        cleaned = scrub_text(value)
        return cleaned, cleaned != value
    if isinstance(value, list):
        items = [scrub(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key, key_changed = scrub(key)
            new_item, item_changed = scrub(item)
            out[new_key] = new_item
            changed = changed or key_changed or item_changed
        return out, changed
    return value, False


def _decoded(data: Any) -> Event | None:
    try:
        return decode(msgspec.json.encode(data))
    except (msgspec.MsgspecError, UnknownEventType, UnicodeError):
        return None


def sanitised(event: Event) -> Event | None:
    """The event with its refused characters replaced, or ``None`` when it has none
    (then sanitising cannot help)."""
    data, changed = scrub(msgspec.to_builtins(event))
    return _decoded(data) if changed else None


def salvage(payload: bytes) -> Event | None:
    """An event read leniently from a payload the strict decoder refused: invalid UTF-8
    and lone surrogate escapes are replaced. ``None`` when it is still not an event."""
    try:
        data = json.loads(payload.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    cleaned, _ = scrub(data)
    return _decoded(cleaned)


def placeholder_mission(mission_id: str, at: datetime) -> Mission:
    """A bare mission row for a request that could not be read at all: the mission is
    listed (its ``projection_failures`` says why its fields are empty) and later events
    fold into it."""
    return Mission(
        id=mission_id,
        status="requested",
        repository="",
        base_branch="",
        requirement="",
        correlation_id="",
        created_at=at,
        updated_at=at,
    )
