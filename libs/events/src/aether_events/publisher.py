"""Publishing events with JetStream de-duplication."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import PubAck

from aether_events.catalogue import Event
from aether_events.codec import encode
from aether_events.subjects import subject_for


class Publisher(Protocol):
    """The port every handler publishes through.

    ``publish`` returns once the stream has stored the event, with the stream's sequence
    number for it. Publishing an event whose id was already stored (a redelivered step)
    stores nothing and answers ``duplicate=True`` with the first copy's sequence.
    ``EventPublisher`` is the JetStream adapter; ``aether_events.testing.InMemoryPublisher``
    the in-memory fake, and ``tests/contracts/test_publisher.py`` holds both to the same
    assertions.
    """

    async def publish(self, event: Event) -> PubAck:
        """Store one event; the acknowledgement names its stream and sequence."""
        ...


class EventPublisher:
    """Publishes events on their subjects with ``Nats-Msg-Id`` set to the event id.

    Because ids of caused events are derived from the logical step, publishing the same
    step twice (after a redelivery or a crash) is dropped by the stream's duplicate window.
    """

    def __init__(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        self._js = js
        self._timeout = timeout

    async def publish(
        self,
        event: Event,
        *,
        expected_last_subject_sequence: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish one event and wait for the stream to store it."""
        all_headers = {"Nats-Msg-Id": event.event_id, **(headers or {})}
        if expected_last_subject_sequence is not None:
            all_headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_sequence)
        return await self._js.publish(
            subject_for(event), encode(event), timeout=self._timeout, headers=all_headers
        )

    async def publish_all(self, events: Iterable[Event]) -> list[PubAck]:
        """Publish events in order, each stored before the next is sent."""
        return [await self.publish(event) for event in events]


async def send_in_order(
    publisher: Publisher, events: Sequence[Event]
) -> list[asyncio.Task[PubAck]]:
    """Start publishing ``events`` in their order, each once the one before has sent its
    event: they go out in order on the one connection, and the stream stores them in
    that order, while their waits for acknowledgements overlap. Returns the started
    publishes, to be awaited; fewer than ``events`` when one was refused before it was
    sent (an invalid subject, too large): that one is the last returned, and none after
    it is started."""
    sending: list[asyncio.Task[PubAck]] = []
    try:
        for event in events:
            task = asyncio.ensure_future(publisher.publish(event))
            sending.append(task)
            # One turn of the loop: the publish runs until it waits for its
            # acknowledgement (sent) or fails before sending.
            await asyncio.sleep(0)
            if task.done() and not task.cancelled() and task.exception() is not None:
                break
    except asyncio.CancelledError:
        for task in sending:
            task.cancel()
        raise
    return sending


async def ended(sending: list[asyncio.Task[PubAck]]) -> None:
    """Wait until every publish of ``sending`` has ended; cancelled meanwhile, cancel them
    (an event already sent may still be stored: only the wait for it stops)."""
    if not sending:
        return
    try:
        await asyncio.wait(sending)
    except asyncio.CancelledError:
        for task in sending:
            task.cancel()
        raise


async def publish_in_order(publisher: Publisher, events: Sequence[Event]) -> list[PubAck]:
    """Publish ``events`` in their order, waiting once for all their acknowledgements
    rather than once per event (``send_in_order``): a decision of three events is stored
    after about one round trip instead of three. One refused before it is sent stops the
    ones after it, which are never sent. Raises the first failure once every started
    publish has ended: an event after one whose acknowledgement failed may have been
    stored, so the caller, retrying, publishes them all again with the same ids, which
    stores each once."""
    if len(events) == 1:
        # Most decisions are one event: no task and no turn of the loop to wait for.
        return [await publisher.publish(events[0])]
    sending = await send_in_order(publisher, events)
    await ended(sending)
    failures = [task.exception() for task in sending if not task.cancelled()]
    failure = next((error for error in failures if error is not None), None)
    if failure is not None:
        raise failure
    return [task.result() for task in sending]
