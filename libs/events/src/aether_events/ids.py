"""Identifiers.

Events caused by other events get *deterministic* ids derived from the logical step they
record (``step_event_id(mission, step_ids.task_ready(task, attempt))``), so a redelivered
cause or a restarted service publishes the same id again and JetStream's duplicate window (keyed on
``Nats-Msg-Id``) drops the copy. Only user commands get random ids.
"""

from __future__ import annotations

import uuid

from aether_events.step_ids import Step

_NAMESPACE = uuid.UUID("5b0c1f4e-8a7d-4d5e-9a51-0b6f5a3e7c21")


def derived_id(*parts: object) -> str:
    """A stable id for one logical step, from the parts that name it."""
    return uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)).hex


def step_event_id(mission_id: str, step: Step) -> str:
    """The id of the event that records ``step`` of a mission."""
    return derived_id(mission_id, *step)


def new_event_id() -> str:
    """A fresh random event id (for commands from people and programs)."""
    return uuid.uuid4().hex


def _mission_id(hex_digits: str) -> str:
    """The one format of a mission id: short, readable and safe as a subject token."""
    return "m-" + hex_digits[:16]


def new_mission_id() -> str:
    """A fresh random mission id."""
    return _mission_id(uuid.uuid4().hex)


def mission_id_for(*parts: object) -> str:
    """A mission id derived from what names the request (so a repeated request, with the
    same idempotency key, names the same mission)."""
    return _mission_id(derived_id("mission", *parts))
