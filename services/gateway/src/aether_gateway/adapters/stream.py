"""Reading stored messages back from a stream, undecoded, by sequence range.

The projection reads the stream itself (on start, to catch up after a stalled consumer,
to fill a gap, to refold one mission) rather than through ``aether_events.replay``,
because it must see what does not decode too: such a payload is recorded as a
projection failure, not silently passed over.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from aether_events import (
    Event,
    UnknownEventType,
    decode,
    on_its_subject,
    subject_parts,
    tag_of,
)
from aether_events.replay import Subjects, stored_batches

log = logging.getLogger("aether.gateway.stream")


@dataclass(frozen=True)
class StoredMessage:
    """One message as the stream holds it."""

    seq: int
    subject: str
    data: bytes
    stored_at: datetime

    @property
    def mission_id(self) -> str:
        """The mission named by the subject (``aether.<kind>.<mission_id>.<type>…``)."""
        return subject_parts(self.subject)[0]

    @property
    def tag(self) -> str:
        """The event type named by the subject."""
        return subject_parts(self.subject)[1]


@dataclass(frozen=True)
class Incoming:
    """One stream message to fold: its event, or why there is none (an event type this
    build does not know is ``unknown``; a payload that does not decode has a
    ``problem``, and its raw ``payload`` is kept for a lenient second reading)."""

    seq: int
    mission_id: str
    tag: str
    stored_at: datetime
    event: Event | None = None
    payload: bytes = b""
    unknown: bool = False
    problem: str | None = None

    @classmethod
    def of_event(cls, event: Event, seq: int) -> Incoming:
        """An event the runtime decoded and delivered."""
        return cls(
            seq=seq,
            mission_id=event.mission_id,
            tag=tag_of(type(event)),
            stored_at=event.occurred_at,
            event=event,
        )

    @classmethod
    def of_message(cls, message: StoredMessage) -> Incoming:
        """A stored message, decoded here."""

        def made(**what: Any) -> Incoming:
            return cls(
                seq=message.seq,
                mission_id=message.mission_id,
                tag=message.tag,
                stored_at=message.stored_at,
                **what,
            )

        try:
            event = decode(message.data)
            if not on_its_subject(event, message.subject, len(message.data)):
                # Published with one attempt's credential about another: passed over as
                # an unknown type is (the runtime terminates it on the live path).
                log.warning(
                    "event not on its own subject passed over",
                    extra={"seq": message.seq, "subject": message.subject},
                )
                return made(unknown=True)
            return made(event=event)
        except UnknownEventType:
            return made(unknown=True)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return made(payload=message.data, problem=f"does not decode: {error}")


# What a pull request's byte bound leaves a message beyond its payload: its subject,
# reply subject and headers (a message stored when the server took larger ones still
# fails the read, as the server answers such a request with nothing).
_MESSAGE_ROOM = 64 * 1024


async def read_stored(
    js: JetStreamContext,
    stream: str,
    subject: Subjects,
    *,
    after: int = 0,
    until: int | None = None,
    batch: int = 256,
) -> list[StoredMessage]:
    """Every message on ``subject`` stored after sequence ``after`` (up to ``until``,
    inclusive, when given), in stream order."""
    found: list[StoredMessage] = []
    async with contextlib.aclosing(
        stored_runs(js, stream, subject, after=after, until=until, size=batch)
    ) as runs:
        async for run in runs:
            found.extend(run)
    return found


async def stored_runs(
    js: JetStreamContext,
    stream: str,
    subject: Subjects,
    *,
    after: int = 0,
    until: int | None = None,
    size: int = 256,
    patience: float = 0.0,
    max_bytes: int = 0,
) -> AsyncGenerator[list[StoredMessage], None]:
    """``read_stored``'s messages in runs of up to ``size``, each given as soon as read
    (a long history is then never held whole). ``patience``: as ``stored_batches``'.

    ``max_bytes``: a run ends once its payloads reach that many bytes, and the stream is
    read that many at a time (at least the server's largest message plus room for its
    subject and headers, so that any stored message can be read), so that what is held
    at once is bounded however large the messages (a flood of telemetry)."""
    run: list[StoredMessage] = []
    run_bytes = 0
    pull_bytes = max(max_bytes, js._nc.max_payload + _MESSAGE_ROOM) if max_bytes else 0
    batch = max(size, 2048)
    # Closed at once on an early end, so its ephemeral consumer goes with it.
    async with contextlib.aclosing(
        stored_batches(
            js, stream, subject, after=after, batch=batch, patience=patience, max_bytes=pull_bytes
        )
    ) as batches:
        async for msgs in batches:
            ended = False
            for msg in msgs:
                meta = msg.metadata
                seq = meta.sequence.stream
                if until is not None and seq > until:
                    ended = True
                    break
                stored_at = meta.timestamp or datetime.now(UTC)
                run.append(StoredMessage(seq, msg.subject, msg.data, stored_at))
                run_bytes += len(msg.data)
                if len(run) >= size or (max_bytes and run_bytes >= max_bytes):
                    yield run
                    run = []
                    run_bytes = 0
            if ended:
                break
    if run:
        yield run


async def event_id_at(js: JetStreamContext, stream: str, seq: int) -> str | None:
    """The id of the event stored at ``seq`` (``None``: no message there, or no id)."""
    try:
        raw = await js.get_msg(stream, seq)
    except NotFoundError:
        return None
    try:
        return decode(raw.data or b"").event_id
    except (msgspec.MsgspecError, UnknownEventType):
        pass
    header = (raw.headers or {}).get("Nats-Msg-Id")
    return str(header) if header else None
