"""A projection remembers only the event ids folded since its position, and still folds
every event exactly once: old events delivered again after the position passed them, or
after a restart, change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    AgentCompleted,
    AgentStarted,
    Event,
    EventPublisher,
    MissionMessagePosted,
    MissionPaused,
    Usage,
    UsageRecorded,
    carried_by,
    derived_id,
    ensure_streams,
)
from aether_runtime import ConsumerSpec, Delivery, Projection, RuntimeSettings, Service
from aether_runtime.projection import stored_sequence

Folded = tuple[str, ...]


def posted(mission: str, n: int, text: str = "x") -> MissionMessagePosted:
    return MissionMessagePosted(
        event_id=derived_id(mission, f"posted-{n}-{text}"),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id(mission, "requested"),
        text=text,
        author="a",
    )


def record(state: Folded, event: Event) -> Folded:
    return (*state, event.event_id)


# --- pure ----------------------------------------------------------------------------


def test_at_or_below_the_position_an_event_is_known_by_its_sequence_alone() -> None:
    projection: Projection[Folded] = Projection((), record)
    assert projection.apply(posted("m", 1), 1)
    assert projection.apply(posted("m", 2), 2)
    projection.advance(2)
    assert projection.remembered == 0
    # Delivered again with its sequence: not folded, and nothing is kept for it.
    assert not projection.apply(posted("m", 1), 1)
    assert not projection.apply(posted("m", 2), 2)
    assert projection.remembered == 0
    assert projection.state == (posted("m", 1).event_id, posted("m", 2).event_id)


def test_advancing_forgets_only_what_the_position_covers() -> None:
    projection: Projection[Folded] = Projection((), record)
    projection.apply(posted("m", 1), 3)
    projection.apply(posted("m", 2), 7)
    projection.apply(posted("m", 3))  # no sequence known (yet)
    projection.advance(5)
    assert projection.remembered == 2
    assert not projection.apply(posted("m", 2), 7)  # still known by id above the position
    # The unsequenced one is recognised when it comes round with its sequence, at or
    # below the position as well as above it.
    assert not projection.apply(posted("m", 3), 6)
    projection.advance(7)
    assert projection.remembered == 0
    assert len(projection.state) == 3


def test_the_position_never_moves_back() -> None:
    projection: Projection[Folded] = Projection((), record)
    projection.apply(posted("m", 1), 4)
    projection.advance(4)
    projection.advance(2)
    assert projection.position == 4
    assert not projection.apply(posted("m", 1), 4)


def carrying(mission: str) -> AgentCompleted:
    """An attempt's result that carries its start and a model call's usage."""
    meta = {"mission_id": mission, "correlation_id": derived_id(mission, "requested")}
    attempt = {"task_id": "t1", "attempt": 1}
    start = AgentStarted(
        event_id=derived_id(mission, "started"),
        occurred_at=datetime.now(UTC),
        runner_id="r",
        model="m",
        **meta,
        **attempt,
    )
    usage = UsageRecorded(
        event_id=derived_id(mission, "usage"),
        occurred_at=datetime.now(UTC),
        service="agent-runner",
        model="m",
        step="agent:t1:a1:turn1",
        usage=Usage(input_tokens=1, output_tokens=1, cost_usd=0.1),
        **meta,
        **attempt,
    )
    return AgentCompleted(
        event_id=derived_id(mission, "completed"),
        occurred_at=datetime.now(UTC),
        commit_sha="c",
        branch="b",
        carried=[start, usage],
        **meta,
        **attempt,
    )


def test_the_events_one_message_carries_share_its_sequence_and_each_folds_once() -> None:
    projection: Projection[Folded] = Projection((), record)
    events = carried_by(carrying("m"))
    assert all(projection.apply(event, 5) for event in events)
    # Delivered again: known by their ids, then, once the position passed the
    # message, by its sequence.
    assert not any(projection.apply(event, 5) for event in events)
    projection.advance(5)
    assert not any(projection.apply(event, 5) for event in events)
    assert projection.state == tuple(event.event_id for event in events)


def test_a_publish_acknowledgement_names_the_sequence() -> None:
    class Ack:
        seq = 12

    assert stored_sequence(Ack()) == 12
    assert stored_sequence(None) == 0


# --- against a real NATS server ------------------------------------------------------


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"not reached within {timeout}s: {what}") from None


def folding_service(
    nats_url: str, projection: Projection[Folded]
) -> tuple[Service, Callable[[], Awaitable[None]]]:
    """A service whose consumer folds every mission event and answers each message
    posted with "ping" and new to it by posting a "pong" it applies at once (as the
    services apply their own decisions), with the publish acknowledgement's sequence."""
    svc = Service(
        name="bounded", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0.2
    )

    async def handler(event: Event, delivery: Delivery) -> None:
        new = projection.apply(event, delivery.sequence)
        if new and isinstance(event, MissionMessagePosted) and event.text == "ping":
            answer = posted(event.mission_id, 0, f"pong-{event.event_id}")
            ack = await svc.publisher.publish(answer)
            projection.apply(answer, stored_sequence(ack))

    async def rebuild(js: object) -> int:
        return await projection.rebuild(svc.js, "bounded")

    svc.rebuild_with(rebuild)
    svc.consume(ConsumerSpec(durable="bounded", subject=ALL_MISSION_EVENTS, handler=handler))
    svc.bound(projection)

    async def redeliver_everything() -> None:
        """The durable made again from the stream's start: every old event is delivered
        once more, with its stream sequence."""
        await svc.js.delete_consumer(MISSIONS_STREAM, "bounded")
        await svc.js.add_consumer(
            MISSIONS_STREAM,
            ConsumerConfig(
                durable_name="bounded",
                name="bounded",
                filter_subject=ALL_MISSION_EVENTS,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=1,
                ack_wait=4.0,
            ),
        )

    return svc, redeliver_everything


async def test_old_events_delivered_again_after_the_bound_and_after_a_restart_fold_once(
    nc: NatsClient, nats_url: str
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    before = [posted("m-old", n, "ping" if n % 2 else "x") for n in range(6)]
    for event in before:
        await publisher.publish(event)  # history the service replays at start

    projection: Projection[Folded] = Projection((), record)
    svc, redeliver = folding_service(nats_url, projection)
    await svc.start()
    try:
        # The replay folded the history; its ids are not kept.
        assert projection.remembered == 0
        live = [posted("m-live", n, "ping" if n % 2 else "x") for n in range(10)]
        for event in live:
            await publisher.publish(event)
        # Every live event, and a pong for each ping (its own and the history's, which
        # the consumer created after the replay does not deliver: none for those).
        expected = len(before) + len(live) + 5
        await wait_until(lambda: len(projection.state) == expected, "live events folded")
        last = (await js.stream_info(MISSIONS_STREAM)).state.last_seq
        await wait_until(lambda: projection.position >= last, "the bound reaches the end")
        assert projection.remembered == 0

        # Every old event once more, through the consumer, after the bound passed them.
        await redeliver()
        await wait_until(
            lambda: svc.stalled() is None and projection.position >= last, "redelivered"
        )
        info = await js.consumer_info(MISSIONS_STREAM, "bounded")
        while (info.ack_floor.stream_seq or 0) < last:
            await asyncio.sleep(0.05)
            info = await js.consumer_info(MISSIONS_STREAM, "bounded")
        assert len(projection.state) == expected
        assert len(set(projection.state)) == expected
        assert projection.remembered == 0
    finally:
        await svc.stop()

    # A restart: the replay folds everything once; the durable, made again from the
    # start, delivers all of it again, and nothing is folded twice.
    again: Projection[Folded] = Projection((), record)
    svc2, redeliver2 = folding_service(nats_url, again)
    await svc2.start()
    try:
        assert len(again.state) == expected
        await redeliver2()
        extra = posted("m-after", 1, "ping")
        await publisher.publish(extra)
        await wait_until(lambda: len(again.state) == expected + 2, "the new ping and pong")
        last = (await js.stream_info(MISSIONS_STREAM)).state.last_seq
        await wait_until(lambda: again.position >= last, "the bound reaches the end again")
        assert len(set(again.state)) == expected + 2
        assert set(projection.state) <= set(again.state)
        assert again.remembered == 0
    finally:
        await svc2.stop()


async def test_a_replay_of_the_folded_types_reads_only_those_and_is_complete_to_the_end(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    wanted = [posted("m", n) for n in range(3)]
    other = MissionPaused(
        event_id=derived_id("m", "paused"),
        mission_id="m",
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id("m", "requested"),
    )
    for event in wanted:
        await publisher.publish(event)
    stored = await publisher.publish(other)  # the last event is one it does not fold

    projection: Projection[Folded] = Projection((), record)
    last = await projection.rebuild(js, "bounded", types=(MissionMessagePosted,))
    assert projection.state == tuple(e.event_id for e in wanted)
    assert last == stored.seq
    assert projection.position == stored.seq
    assert projection.remembered == 0
    assert not projection.apply(other, stored.seq)


async def test_a_replay_that_unfolds_folds_what_a_result_carries_first_and_once(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    result = carrying("m-carried")
    start, usage = result.carried
    await publisher.publish(usage)  # sent alone as well, before (a resumed attempt)
    stored = await publisher.publish(result)

    for types in (None, (AgentStarted, UsageRecorded, AgentCompleted)):
        projection: Projection[Folded] = Projection((), record)
        last = await projection.rebuild(js, "bounded", types=types, unfold=carried_by)
        assert projection.state == (usage.event_id, start.event_id, result.event_id)
        assert last == stored.seq
        # Delivered after the replay, each is known by its message's sequence.
        assert not any(projection.apply(event, stored.seq) for event in carried_by(result))
    # Without ``unfold``, a result stands for itself.
    projection = Projection((), record)
    await projection.rebuild(js, "bounded")
    assert projection.state == (usage.event_id, result.event_id)
