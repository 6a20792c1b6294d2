"""Identifiers.

Events caused by other events get *deterministic* ids derived from the logical step they
record (``step_event_id(mission, step_ids.task_ready(task, attempt))``), so a redelivered
cause or a restarted service publishes the same id again and JetStream's duplicate window (keyed on
``Nats-Msg-Id``) drops the copy. Only user commands get random ids.

The stream's duplicate window is per stream, whatever the subject: an id anybody can
compute could be stored first, on a subject of the sender's own, and the real event then
be acknowledged as a duplicate and never stored. So the ids are keyed. A service that
publishes events (the gateway, the planner, the scheduler, the git broker) holds the
deployment's event id secret (``AETHER_EVENT_ID_SECRET``) and derives every step's id as
``keyed_id(service_id_key(secret), derived_id(mission, *step))`` (``use_event_id_key``,
set once at its start by ``aether_runtime.event_ids``): one key for every service, so
two services taking the same step still name it alike (decision 0031). An agent runner
holds no such key: its attempts' events are keyed with a key of the attempt instead
(``attempt_ids``, decision 0030).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from aether_events.step_ids import Step

_NAMESPACE = uuid.UUID("5b0c1f4e-8a7d-4d5e-9a51-0b6f5a3e7c21")
_NAMESPACE_BYTES = _NAMESPACE.bytes


def derived_id(*parts: object) -> str:
    """A stable id for one logical step, from the parts that name it: the hex of the
    name-based UUID (version 5) of the parts joined by U+001F in ``_NAMESPACE``.

    Computed here as ``uuid.uuid5`` computes it, without building the ``UUID`` object
    (2.8 against 7.2 µs an id; every event a service derives takes one)."""
    name = "\x1f".join(map(str, parts)).encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return digest.hex()


# The shortest key taken: shorter ones would be guessable.
MIN_KEY_BYTES = 16
# What the services' key is derived for, so that no input of this use is an input of
# another use of the same secret.
_SERVICE_KEY_CONTEXT = b"aether service event id key v1"
# The key every step id of this process is keyed with (``use_event_id_key``); ``None``:
# the public ids (a runner; a bus without per-service users).
_event_id_key: bytes | None = None


def keyed_id(key: bytes, event_id: str) -> str:
    """The id stored for the event whose public id is ``event_id`` under ``key``: the first
    16 bytes of HMAC-SHA256 of ``key`` over the id, as a version 8 (custom) UUID's 32 hex
    digits, the shape of every event id."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"an event id key has {MIN_KEY_BYTES} bytes or more")
    digest = bytearray(hmac.digest(key, event_id.encode(), "sha256")[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return digest.hex()


def service_id_key(secret: str) -> bytes:
    """The key the services' step ids are keyed with, from the deployment's event id
    secret (``AETHER_EVENT_ID_SECRET``): HMAC-SHA256 of the secret over its own context."""
    return hmac.new(secret.encode(), _SERVICE_KEY_CONTEXT, hashlib.sha256).digest()


def use_event_id_key(key: bytes | None) -> None:
    """Key every step id this process derives with ``key`` from now on (``None``: the
    public ids). Set once, at a service's start, before it derives any id: every id it
    publishes and every id it derives again to look one up must agree."""
    global _event_id_key
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise ValueError(f"an event id key has {MIN_KEY_BYTES} bytes or more")
    _event_id_key = key


def event_id_key() -> bytes | None:
    """The key step ids are keyed with in this process (``use_event_id_key``)."""
    return _event_id_key


def public_step_event_id(mission_id: str, step: Step) -> str:
    """The id ``step`` derives from its public parts alone (what every id was before
    decision 0031, and what an agent runner's attempt keys further)."""
    return derived_id(mission_id, *step)


def step_event_id(mission_id: str, step: Step) -> str:
    """The id of the event that records ``step`` of a mission: its public id, keyed with
    this process's key when it has one (``use_event_id_key``)."""
    public = derived_id(mission_id, *step)
    key = _event_id_key
    return public if key is None else keyed_id(key, public)


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
