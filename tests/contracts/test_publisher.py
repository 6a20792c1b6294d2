"""The contract of the ``Publisher`` port, held by the JetStream adapter and the fake.

Every test runs twice: against ``EventPublisher`` on a real NATS JetStream server (the
session's server, streams created as the services create them) and against
``aether_events.testing.InMemoryPublisher``. A handler test that publishes through the fake
may rely on what is asserted here, and only on that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import pytest
from nats.js.api import PubAck

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    AgentHeartbeat,
    Event,
    EventPublisher,
    MissionFailed,
    MissionRequested,
    Publisher,
    decode,
    derived_id,
    ensure_streams,
    publish_in_order,
    stored_messages,
    subject_for,
)
from aether_events.testing import InMemoryPublisher, delete_streams_for_good

NOW = datetime(2026, 11, 30, tzinfo=UTC)
M = "m-contract"


@dataclass
class Bus:
    publisher: Publisher
    # What one stream holds, in sequence order: (sequence, subject, event).
    stored: Callable[[str], Awaitable[list[tuple[int, str, Event]]]]


@pytest.fixture(params=["in-memory", "jetstream"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "in-memory":
        fake = InMemoryPublisher()

        async def held(stream: str) -> list[tuple[int, str, Event]]:
            return [
                (seq, subject, event)
                for seq, (subject, event) in enumerate(
                    zip(fake.subjects(stream), fake.stored(stream), strict=True), start=1
                )
            ]

        yield Bus(fake, held)
        return
    # Asked for here rather than as a parameter, so the in-memory runs start no server.
    nc = await nats.connect(request.getfixturevalue("nats_url"))
    js = nc.jetstream()
    await delete_streams_for_good(js)
    await ensure_streams(js)

    async def stored(stream: str) -> list[tuple[int, str, Event]]:
        subject = ALL_TELEMETRY if stream == TELEMETRY_STREAM else ALL_MISSION_EVENTS
        return [
            (msg.metadata.sequence.stream, msg.subject, decode(msg.data))
            async for msg in stored_messages(js, stream, subject)
        ]

    try:
        yield Bus(EventPublisher(js), stored)
    finally:
        await nc.close()


def requested(step: str = "requested", requirement: str = "x") -> MissionRequested:
    return MissionRequested(
        event_id=derived_id(M, step),
        mission_id=M,
        occurred_at=NOW,
        correlation_id="c",
        repository="/r",
        requirement=requirement,
    )


def failed(reason: str) -> MissionFailed:
    return MissionFailed(
        event_id=derived_id(M, f"failed-{reason}"),
        mission_id=M,
        occurred_at=NOW,
        correlation_id="c",
        reason=reason,
    )


def heartbeat(n: int) -> AgentHeartbeat:
    return AgentHeartbeat(
        event_id=derived_id(M, f"beat-{n}"),
        mission_id=M,
        occurred_at=NOW,
        correlation_id="c",
        task_id="t1",
        attempt=1,
        runner_id="r",
    )


async def test_events_are_stored_in_publish_order_with_consecutive_sequences(bus: Bus) -> None:
    events: list[Event] = [requested(), failed("one"), failed("two")]
    acks = [await bus.publisher.publish(event) for event in events]
    assert [(ack.stream, ack.seq) for ack in acks] == [(MISSIONS_STREAM, n) for n in (1, 2, 3)]
    assert not any(ack.duplicate for ack in acks)
    assert await bus.stored(MISSIONS_STREAM) == [
        (n, subject_for(event), event) for n, event in enumerate(events, start=1)
    ]


async def test_an_event_id_published_again_is_a_duplicate_of_the_first_copy(bus: Bus) -> None:
    first = await bus.publisher.publish(requested())
    await bus.publisher.publish(failed("later"))
    again = await bus.publisher.publish(requested())
    # The same step decided again with other content (a redelivery after a change) keeps
    # the first copy: de-duplication is by event id alone.
    changed = await bus.publisher.publish(requested(requirement="changed"))
    for ack in (again, changed):
        assert ack.duplicate
        assert (ack.stream, ack.seq) == (MISSIONS_STREAM, first.seq)
    assert [event for _, _, event in await bus.stored(MISSIONS_STREAM)] == [
        requested(),
        failed("later"),
    ]


async def test_telemetry_is_stored_in_its_own_stream_with_its_own_sequence(bus: Bus) -> None:
    await bus.publisher.publish(requested())
    beats = [await bus.publisher.publish(heartbeat(n)) for n in (1, 2)]
    repeated = await bus.publisher.publish(heartbeat(1))
    after = await bus.publisher.publish(failed("after"))
    assert [(ack.stream, ack.seq) for ack in beats] == [
        (TELEMETRY_STREAM, 1),
        (TELEMETRY_STREAM, 2),
    ]
    assert repeated.duplicate and repeated.seq == 1
    assert (after.stream, after.seq) == (MISSIONS_STREAM, 2)
    assert [event for _, _, event in await bus.stored(TELEMETRY_STREAM)] == [
        heartbeat(1),
        heartbeat(2),
    ]
    assert [event for _, _, event in await bus.stored(MISSIONS_STREAM)] == [
        requested(),
        failed("after"),
    ]


async def test_an_event_whose_mission_id_is_no_subject_token_is_refused(bus: Bus) -> None:
    bad = MissionFailed(
        event_id="x", mission_id="m.1", occurred_at=NOW, correlation_id="c", reason="r"
    )
    with pytest.raises(ValueError, match="not a valid subject token"):
        await bus.publisher.publish(bad)
    assert await bus.stored(MISSIONS_STREAM) == []


# --- several events of one decision ---------------------------------------------------


class InFlight:
    """A publisher counting how many of its publishes wait for an acknowledgement at once."""

    def __init__(self, inner: Publisher) -> None:
        self._inner = inner
        self.now = 0
        self.most = 0

    async def publish(self, event: Event) -> PubAck:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await self._inner.publish(event)
        finally:
            self.now -= 1


async def test_events_published_together_are_stored_in_their_order(bus: Bus) -> None:
    """``publish_in_order`` sends each event before it starts the next and waits for the
    acknowledgements together: the stream holds them in the order given, each with its
    own sequence, and on the server the waits overlap."""
    events: list[Event] = [requested(), *(failed(f"n{n}") for n in range(20)), heartbeat(1)]
    counted = InFlight(bus.publisher)
    acks = await publish_in_order(counted, events)
    assert [(ack.stream, ack.seq) for ack in acks] == [
        *((MISSIONS_STREAM, n) for n in range(1, 22)),
        (TELEMETRY_STREAM, 1),
    ]
    assert [event for _, _, event in await bus.stored(MISSIONS_STREAM)] == events[:-1]
    assert [event for _, _, event in await bus.stored(TELEMETRY_STREAM)] == [heartbeat(1)]
    if isinstance(bus.publisher, EventPublisher):
        assert counted.most > 1
    # Published again (a retried decision): each is a duplicate of its first copy.
    again = await publish_in_order(bus.publisher, events)
    assert all(ack.duplicate for ack in again)
    assert [(ack.stream, ack.seq) for ack in again] == [(a.stream, a.seq) for a in acks]


async def test_an_event_refused_before_it_is_sent_stops_the_ones_after_it(bus: Bus) -> None:
    bad = MissionFailed(
        event_id="x", mission_id="m.1", occurred_at=NOW, correlation_id="c", reason="r"
    )
    with pytest.raises(ValueError, match="not a valid subject token"):
        await publish_in_order(bus.publisher, [requested(), bad, failed("after")])
    assert [event for _, _, event in await bus.stored(MISSIONS_STREAM)] == [requested()]


async def test_one_event_published_in_order_is_stored_or_refused_alone(bus: Bus) -> None:
    (ack,) = await publish_in_order(bus.publisher, [requested()])
    assert (ack.stream, ack.seq, bool(ack.duplicate)) == (MISSIONS_STREAM, 1, False)
    (again,) = await publish_in_order(bus.publisher, [requested()])
    assert (again.seq, again.duplicate) == (1, True)
    bad = MissionFailed(
        event_id="x", mission_id="m.1", occurred_at=NOW, correlation_id="c", reason="r"
    )
    with pytest.raises(ValueError, match="not a valid subject token"):
        await publish_in_order(bus.publisher, [bad])
    assert [event for _, _, event in await bus.stored(MISSIONS_STREAM)] == [requested()]
