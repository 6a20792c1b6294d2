"""Streams, de-duplicating publisher and replay against a real NATS JetStream server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    MissionFailed,
    MissionRequested,
    StreamSettings,
    derived_id,
    ensure_streams,
    replay,
)

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def requested(mission: str) -> MissionRequested:
    return MissionRequested(
        event_id=derived_id(mission, "requested"),
        mission_id=mission,
        occurred_at=NOW,
        correlation_id="c",
        repository="/r",
        requirement="x",
    )


async def test_streams_are_created_idempotently_and_publishing_a_step_twice_stores_it_once(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    await ensure_streams(js, StreamSettings())  # a second service starting
    publisher = EventPublisher(js)
    first = await publisher.publish(requested("m-a"))
    again = await publisher.publish(requested("m-a"))
    assert again.duplicate and again.seq == first.seq
    info = await js.stream_info(MISSIONS_STREAM)
    assert info.state.messages == 1


async def test_replay_folds_in_order_and_skips_what_does_not_decode(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    await publisher.publish(requested("m-b"))
    await js.publish("aether.mission.m-b.mission_failed", b"{garbage")
    failed = MissionFailed(
        event_id="f", mission_id="m-b", occurred_at=NOW, correlation_id="c", reason="r"
    )
    await publisher.publish(failed)

    def fold(seen: list[str], event: Event, seq: int) -> list[str]:
        return [*seen, f"{seq}:{type(event).__name__}"]

    state, result = await replay(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, [], fold)
    assert state == ["1:MissionRequested", "3:MissionFailed"]
    assert (result.applied, result.skipped, result.last_sequence) == (2, 1, 3)
    later, result = await replay(
        js, MISSIONS_STREAM, ALL_MISSION_EVENTS, [], fold, after_sequence=1
    )
    assert later == ["3:MissionFailed"] and result.skipped == 1


async def test_replay_of_an_empty_stream_returns_the_initial_state(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    state, result = await replay(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, 7, lambda s, e, q: s)
    assert state == 7 and result.last_sequence == 0


async def test_a_start_that_changes_a_streams_durability_says_so(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    with caplog.at_level(logging.WARNING, logger="aether.events.streams"):
        await ensure_streams(js, StreamSettings())
        await ensure_streams(js, StreamSettings())
        assert not caplog.records
        await ensure_streams(js, StreamSettings(duplicate_window_seconds=600))
    (record,) = caplog.records
    assert record.getMessage() == "stream settings changed"
    assert record.stream == MISSIONS_STREAM  # type: ignore[attr-defined]
    assert (await js.stream_info(MISSIONS_STREAM)).config.duplicate_window == 600


async def test_a_start_leaves_a_stream_that_has_its_settings_alone(nc: NatsClient) -> None:
    """Every service ensures the streams at every start: only a change of settings is
    sent to the server as an update (a replicated proposal on a cluster)."""
    js = nc.jetstream()
    await ensure_streams(js)
    updates: list[str] = []

    async def seen(msg: Msg) -> None:
        updates.append(msg.subject)

    watch = await nc.subscribe("$JS.API.STREAM.UPDATE.>", cb=seen)
    await ensure_streams(js)
    await ensure_streams(js, StreamSettings(duplicate_window_seconds=60))
    await nc.flush()
    await watch.unsubscribe()
    assert updates == [f"$JS.API.STREAM.UPDATE.{MISSIONS_STREAM}"]
