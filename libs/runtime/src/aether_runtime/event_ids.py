"""The services' event ids keyed with the deployment's secret, and ids found squatted.

The stream's duplicate window is per stream, whatever the subject. An event id derived
from public parts (decision 0004) could be stored first by anybody who may publish on the
stream at all (an attempt's credential, on its own attempt's subjects), and the service's
real event would then be acknowledged as a duplicate and never stored: a mission stalls.
So every service that publishes events derives its steps' ids keyed with a key of the
deployment's event id secret (``AETHER_EVENT_ID_SECRET``, ``aether_events.ids``;
decision 0031), the same in every service so that two services taking the same step (a
person's approval and the automatic one) still name it alike. No agent runner holds it.

As a second line, a publish acknowledged as a duplicate is checked against what the
stream holds at that sequence (``check_duplicate``): a message on another subject, or
another event, means the id was taken by somebody else. That is logged as an error with
the mission, counted (``aether_event_id_squatted_total``) and raised, so the step fails
and is retried, and finally shows as a failed step, rather than passing for done. Only
duplicates are looked at: the normal path costs nothing more.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from aether_events import (
    Event,
    service_id_key,
    subject_for,
    tag_of,
    use_event_id_key,
)
from aether_runtime import metrics
from aether_runtime.settings import RuntimeSettings, SettingsError

log = logging.getLogger("aether.runtime.event_ids")

SECRET_ENV = "AETHER_EVENT_ID_SECRET"  # noqa: S105 - its name, not its value
MIN_SECRET_LENGTH = 16
# The one service that publishes no service event: its attempts' events are keyed with
# their attempt's key (decision 0030), and its own user publishes only its step records,
# keyed with a key of its own secret (``Service.step_record_key``, decision 0032).
RUNNER = "agent-runner"


class EventIdSquatted(Exception):
    """A publish the stream acknowledged as a duplicate of a message that is not the
    event published: the event was not stored."""


def key_for(service: str, settings: RuntimeSettings) -> bytes | None:
    """The key ``service``'s step ids are keyed with, from its settings; ``None``: the
    public ids. ``SettingsError`` for a runner given the secret (it would let it take the
    services' ids), a secret too short, or none on a bus with per-service users (where
    the attempts' credentials, and so the squatting, exist)."""
    secret = settings.event_id_secret
    if service == RUNNER:
        if secret:
            raise SettingsError(
                f"{SECRET_ENV} is set: no agent runner may hold it (with it, the runner's "
                "own user could store any service's next event id first); unset it here"
            )
        return None
    if not secret:
        if settings.nats_user:
            raise SettingsError(
                f"{SECRET_ENV} is not set: every service that publishes events on a bus "
                "with per-service users needs it (the same value in each; `aether up` "
                "makes one), else any attempt's credential can drop its events"
            )
        return None
    if len(secret) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"{SECRET_ENV} is too short: {MIN_SECRET_LENGTH} characters or more (the "
            "services' event ids are only as hard to guess as it)"
        )
    return service_id_key(secret)


def configure(service: str, settings: RuntimeSettings) -> bytes | None:
    """Key every step id this process derives from now on as ``service`` must (see
    ``key_for``); returns the key."""
    key = key_for(service, settings)
    use_event_id_key(key)
    if key is None and service != RUNNER:
        log.warning(
            "%s not set: this service's event ids are public (a bus without per-service "
            "users only)",
            SECRET_ENV,
        )
    return key


class _Stored(msgspec.Struct):
    """What of a stored event the check reads."""

    event_id: str = ""
    type: str = ""


_stored_decoder = msgspec.json.Decoder(_Stored)


async def check_duplicate(js: JetStreamContext, service: str, event: Event, ack: PubAck) -> None:
    """Raise ``EventIdSquatted`` when the message ``ack`` names (a duplicate's first copy)
    is not ``event``'s: on another subject, or another event. A copy already gone from
    the stream (aged out) is taken for the event's own."""
    try:
        stored = await js.get_msg(ack.stream, ack.seq)
    except NotFoundError:
        return
    subject = subject_for(event)
    try:
        found = _stored_decoder.decode(stored.data or b"")
    except msgspec.DecodeError:
        found = _Stored()
    tag = tag_of(type(event))
    if stored.subject == subject and found.event_id == event.event_id and found.type == tag:
        return
    metrics.EVENT_ID_SQUATTED.labels(service, tag).inc()
    log.error(
        "event id taken by another message: %s not stored",
        tag,
        extra={
            "mission_id": event.mission_id,
            "squatted_event_id": event.event_id,
            "stored_subject": stored.subject,
            "seq": ack.seq,
        },
    )
    raise EventIdSquatted(
        f"{tag} {event.event_id} of mission {event.mission_id} was not stored: the stream "
        f"holds another message under its id ({stored.subject} at {ack.seq})"
    )
