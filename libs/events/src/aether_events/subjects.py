"""The subject scheme.

Mission events live on ``aether.mission.<mission_id>.<type>`` in the ``AETHER_MISSIONS``
stream, so one mission's history is ``aether.mission.<mission_id>.>``. High-volume
telemetry (agent progress, heartbeats, transcripts) lives on
``aether.telemetry.<mission_id>.<type>`` in ``AETHER_TELEMETRY``, which keeps it only
briefly.

What an agent runner reports on one attempt (``ATTEMPT_TYPES``, published with that
attempt's own credential) also names the task and the attempt:
``aether.<kind>.<mission_id>.<type>.<task token>.<attempt>``, so the credential's
allow-list can name exactly its attempt's subjects (``aether_runtime.attempt_auth``).
The task token is the task id itself when it is a subject token that does not start
with ``_``, else ``_`` and 32 hex digits of its SHA-256 (a task id may hold dots, or be
longer than a token): two tasks never share a token. A ``UsageRecorded`` that names no
task (the planner's) stays on the four-token subject, and so did every attempt event
stored before this scheme: a filter for one of these types (``type_subjects``) names
both forms.

``subject_for`` is the one place that decides an event's subject; ``type_subjects`` and
``mission_subject`` are the filters that find them again.
"""

from __future__ import annotations

import hashlib
import re

from aether_events.bounds import ATTEMPT_MAX_PAYLOAD
from aether_events.catalogue import (
    TELEMETRY_TYPES,
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    Event,
    TranscriptEntries,
    TranscriptRecorded,
    UsageRecorded,
    tag_of,
)

MISSION_PREFIX = "aether.mission"
TELEMETRY_PREFIX = "aether.telemetry"
ALL_MISSION_EVENTS = f"{MISSION_PREFIX}.>"
ALL_TELEMETRY = f"{TELEMETRY_PREFIX}.>"

# What an agent runner reports on one attempt: on subjects naming the task and attempt.
ATTEMPT_TYPES: frozenset[type[Event]] = frozenset(
    {
        AgentStarted,
        AgentProgress,
        AgentHeartbeat,
        UsageRecorded,
        TranscriptRecorded,
        TranscriptEntries,
        AgentCompleted,
        AgentFailed,
    }
)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DIGEST_MARK = "_"


def is_valid_token(value: str) -> bool:
    """Whether ``value`` can stand as one subject token (ids become tokens)."""
    return bool(_TOKEN.fullmatch(value))


def task_token(task_id: str) -> str:
    """``task_id`` as one subject token: itself when it is a token not starting with
    ``_``, else ``_`` and a digest of it (never the token of another task id)."""
    if is_valid_token(task_id) and not task_id.startswith(_DIGEST_MARK):
        return task_id
    return _DIGEST_MARK + hashlib.sha256(task_id.encode()).hexdigest()[:32]


def _prefix(cls: type[Event]) -> str:
    return TELEMETRY_PREFIX if cls in TELEMETRY_TYPES else MISSION_PREFIX


def attempt_subject(cls: type[Event], mission_id: str, task_id: str, attempt: int) -> str:
    """The subject of an event of ``cls`` (one of ``ATTEMPT_TYPES``) on one attempt."""
    if cls not in ATTEMPT_TYPES:
        raise ValueError(f"{cls.__name__} is not reported per attempt")
    if not is_valid_token(mission_id):
        raise ValueError(f"mission id {mission_id!r} is not a valid subject token")
    if attempt < 0:
        raise ValueError(f"attempt {attempt} is negative")
    return f"{_prefix(cls)}.{mission_id}.{tag_of(cls)}.{task_token(task_id)}.{attempt}"


def subject_for(event: Event) -> str:
    """The subject an event is published on."""
    if not is_valid_token(event.mission_id):
        raise ValueError(f"mission id {event.mission_id!r} is not a valid subject token")
    cls = type(event)
    if cls in ATTEMPT_TYPES:
        task_id = getattr(event, "task_id", None)
        attempt = getattr(event, "attempt", None)
        if task_id is not None and attempt is not None:
            return attempt_subject(cls, event.mission_id, task_id, attempt)
    return f"{_prefix(cls)}.{event.mission_id}.{tag_of(cls)}"


def mission_subject(mission_id: str) -> str:
    """Filter for one mission's whole history."""
    return f"{MISSION_PREFIX}.{mission_id}.>"


def type_subjects(cls: type[Event], mission_id: str = "*") -> list[str]:
    """The filters for every event of type ``cls`` (of one mission, or of every mission):
    one subject, or for ``ATTEMPT_TYPES`` the four-token subject (events that name no
    attempt, and those stored before attempts had subjects of their own) and the
    attempt subjects. They do not overlap, so a consumer may take them together."""
    base = f"{_prefix(cls)}.{mission_id}.{tag_of(cls)}"
    if cls in ATTEMPT_TYPES:
        return [base, f"{base}.*.*"]
    return [base]


def type_subject(cls: type[Event]) -> str:
    """The filter for one event type across every mission, for a type with one subject
    form (ValueError for ``ATTEMPT_TYPES``: ``type_subjects`` names their two)."""
    subjects = type_subjects(cls)
    if len(subjects) != 1:
        raise ValueError(f"{cls.__name__} has several subject forms: use type_subjects")
    return subjects[0]


def on_its_subject(event: Event, subject: str, size: int = 0) -> bool:
    """Whether ``event`` was stored on a subject that names what it reports on.

    An attempt's credential may publish only on its attempt's subjects, but the payload
    is the publisher's to write: an event of ``ATTEMPT_TYPES`` is taken only from its
    own attempt's subject (``subject_for``) or from its mission's four-token subject for
    its type (where no attempt credential may publish: events stored before subjects
    named the attempt, the planner's usage). Every other type is published by services
    whose users are limited by type alone: any subject of the right type will do.

    ``size``: the message's payload in bytes. A message on an attempt's subject past
    ``ATTEMPT_MAX_PAYLOAD`` (what an attempt's credential says it may publish, which the
    server does not apply to a callout's user) is not taken either, live or replayed."""
    if over_attempt_limit(subject, size):
        return False
    if type(event) not in ATTEMPT_TYPES:
        return True
    try:
        own = subject_for(event)
    except ValueError:
        return False
    return subject in (own, f"{_prefix(type(event))}.{event.mission_id}.{tag_of(type(event))}")


def over_attempt_limit(subject: str, size: int) -> bool:
    """Whether a message of ``size`` bytes on ``subject`` is one an attempt's credential
    says it may not publish (past ``ATTEMPT_MAX_PAYLOAD`` on an attempt's subject)."""
    return size > ATTEMPT_MAX_PAYLOAD and is_attempt_subject(subject)


def is_attempt_subject(subject: str) -> bool:
    """Whether ``subject`` is one attempt's (``attempt_subject``: six tokens), where only
    that attempt's credential and the runners publish."""
    return subject.startswith("aether.") and subject.count(".") == 5


def subject_parts(subject: str) -> tuple[str, str]:
    """The mission id and event type tag an event's subject names (either form); empty
    strings for a subject that is not one."""
    parts = subject.split(".")
    if len(parts) not in (4, 6) or parts[0] != "aether":
        return "", ""
    return parts[2], parts[3]
