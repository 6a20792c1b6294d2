"""An in-memory ``Publisher`` for handler tests.

It keeps what JetStream's ``EventPublisher`` promises a handler, and nothing more: each
event is stored in its stream (mission events in ``AETHER_MISSIONS``, telemetry in
``AETHER_TELEMETRY``) with that stream's next sequence number, in publish order; an event
whose id the stream already holds is not stored again and is acknowledged as a duplicate
with the first copy's sequence (the ``Nats-Msg-Id`` de-duplication). Events go through the
wire codec, so one that would not encode or decode fails here as it would on the bus.
``tests/contracts/test_publisher.py`` runs the same assertions against this class and a
real NATS JetStream server; a behaviour it does not check is not promised.

One difference is deliberate: JetStream forgets ids after the stream's duplicate window
(two hours for mission events), this publisher never does; no test runs that long.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING, TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig
from nats.js.errors import NotFoundError, ServerError

from aether_events.catalogue import (
    TELEMETRY_TYPES,
    Event,
    TranscriptRecorded,
    transcript_of,
    unfolded,
)
from aether_events.codec import decode, encode
from aether_events.publisher import Publisher
from aether_events.streams import (
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    StreamSettings,
    store_not_created,
    stream_configs,
)
from aether_events.subjects import subject_for

E = TypeVar("E", bound=Event)


class InMemoryPublisher:
    """Stores published events per stream, de-duplicated by event id."""

    def __init__(self) -> None:
        self._stored: dict[str, list[tuple[str, Event]]] = defaultdict(list)
        self._sequence_of: dict[str, dict[str, int]] = defaultdict(dict)

    async def publish(self, event: Event) -> PubAck:
        """Store one event (a copy decoded from its wire form) unless its id is stored."""
        subject = subject_for(event)
        stream = TELEMETRY_STREAM if type(event) in TELEMETRY_TYPES else MISSIONS_STREAM
        known = self._sequence_of[stream].get(event.event_id)
        if known is not None:
            return PubAck(stream=stream, seq=known, duplicate=True)
        stored = self._stored[stream]
        stored.append((subject, decode(encode(event))))
        self._sequence_of[stream][event.event_id] = len(stored)
        # JetStream leaves ``duplicate`` out of a first store's acknowledgement.
        return PubAck(stream=stream, seq=len(stored))

    def stored(self, stream: str = MISSIONS_STREAM) -> list[Event]:
        """The events one stream holds, in sequence order (sequence = index + 1)."""
        return [event for _, event in self._stored[stream]]

    def subjects(self, stream: str = MISSIONS_STREAM) -> list[str]:
        """The subject each stored event was published on, in sequence order."""
        return [subject for subject, _ in self._stored[stream]]

    def of(self, cls: type[E]) -> list[E]:
        """The stored events of one type, from whichever stream holds that type, as the
        events that happened rather than the messages stored: those another carries (an
        attempt's result, a TaskReady) are included (``unfolded``), and transcript entries
        (``TranscriptRecorded``) include those sent together (``transcript_of``), each
        once."""
        stream = TELEMETRY_STREAM if cls in TELEMETRY_TYPES else MISSIONS_STREAM
        stored = self.stored(stream)
        if cls is TranscriptRecorded:
            return transcript_of(stored)  # type: ignore[return-value]
        return [event for event in unfolded(stored) if isinstance(event, cls)]


if TYPE_CHECKING:
    # mypy holds the fake to the port's signature; the contract test to its behaviour.
    _conforms: Publisher = InMemoryPublisher()


async def delete_streams_for_good(
    js: JetStreamContext, names: tuple[str, ...] = (MISSIONS_STREAM, TELEMETRY_STREAM)
) -> None:
    """Delete Aether's streams so that the next stream created under any of those names
    starts empty (see ``delete_stream_for_good``)."""
    for config in stream_configs(StreamSettings()):
        if config.name in names:
            await delete_stream_for_good(js, config)


async def delete_stream_for_good(js: JetStreamContext, config: StreamConfig) -> None:
    """Delete the stream named by ``config`` so that a stream created again under its name
    starts with no messages and no consumers.

    A plain delete does not promise that on the NATS server: it moves a deleted stream's
    directory aside (``.NAME``) and removes it in the background, and a second deletion
    of the same name while that removal runs leaves the directory where it is, though the
    deletion is answered as done; the next stream of that name then recovers the old
    messages and consumers (seen with nats-server 2.15.1 in about one of six delete and
    create cycles a few milliseconds apart: a test started on the previous test's
    events). So: delete, create it again and look, until a created stream is empty, then
    delete that empty one; whatever a deletion leaves behind is then an empty stream."""
    assert config.name is not None
    for attempt in range(100):
        await _delete(js, config.name)
        try:
            await js.add_stream(config)
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        except ServerError as error:
            # The old directory's removal was still running when the store was made.
            if not store_not_created(error):
                raise
            await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))
            continue
        try:
            state = (await js.stream_info(config.name)).state
        except (NotFoundError, TimeoutError, nats.errors.TimeoutError):
            continue
        if state.messages == 0 and state.last_seq == 0 and state.consumer_count == 0:
            await _delete(js, config.name)
            return
        await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))
    raise RuntimeError(f"stream {config.name} kept its messages through 100 deletions")


async def _delete(js: JetStreamContext, stream: str) -> None:
    """Delete a stream and see it gone: on a loaded machine the delete request can time
    out while the server still holds the stream."""
    for _ in range(50):
        try:
            await js.delete_stream(stream)
        except NotFoundError:
            return
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        try:
            await js.stream_info(stream)
        except NotFoundError:
            return
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"stream {stream} could not be deleted")
