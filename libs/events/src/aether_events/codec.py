"""JSON encoding of events: one encoder and one typed decoder, built once."""

from __future__ import annotations

import msgspec

from aether_events.catalogue import TYPES_BY_TAG, AnyEvent, Event, WorkspaceReady

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


class _Tag(msgspec.Struct):
    type: str = ""


_tag_decoder = msgspec.json.Decoder(_Tag)


class UnknownEventType(Exception):
    """The payload is a well-formed event of a type this build does not know (a newer one)."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"unknown event type {tag!r}")
        self.tag = tag


def encode(event: Event) -> bytes:
    """Encode an event as JSON, its ``type`` tag included."""
    return _encoder.encode(event)


def decode(payload: bytes) -> Event:
    """Decode any catalogued event.

    Raises ``UnknownEventType`` for a tag this build does not know (consumers skip those:
    a newer producer must not crash an older consumer) and ``msgspec.DecodeError`` or
    ``msgspec.ValidationError`` for a malformed payload (a poison message).
    """
    try:
        event: Event = _decoder.decode(payload)
    except msgspec.ValidationError:
        tag = _tag_decoder.decode(payload).type
        if tag and tag not in TYPES_BY_TAG:
            raise UnknownEventType(tag) from None
        raise
    return event


def to_builtins(event: Event) -> dict[str, object]:
    """The event as plain JSON-ready data (for APIs and logs)."""
    data = msgspec.to_builtins(event)
    assert isinstance(data, dict)
    return data


def without_secrets(event: Event) -> Event:
    """The event as it may be shown to people: an attempt's push token withheld.

    The token travels in ``WorkspaceReady`` to the runner that works the attempt; the
    gateway stores and serves events with this, so no reader of the API gets one."""
    if isinstance(event, WorkspaceReady) and event.push_token:
        return msgspec.structs.replace(event, push_token="")
    return event
