"""Identifiers.

Events caused by other events get *deterministic* ids derived from the logical step they
record (``derived_id("task_ready", mission, task, attempt)``), so a redelivered cause or a
restarted service publishes the same id again and JetStream's duplicate window (keyed on
``Nats-Msg-Id``) drops the copy. Only user commands get random ids.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("5b0c1f4e-8a7d-4d5e-9a51-0b6f5a3e7c21")


def derived_id(*parts: object) -> str:
    """A stable id for one logical step, from the parts that name it."""
    return uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)).hex


def new_event_id() -> str:
    """A fresh random event id (for commands from people and programs)."""
    return uuid.uuid4().hex


def new_mission_id() -> str:
    """A fresh mission id; short, readable and safe as a subject token."""
    return "m-" + uuid.uuid4().hex[:16]
