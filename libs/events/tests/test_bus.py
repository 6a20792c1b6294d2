"""Streams, de-duplicating publisher and replay against a real NATS JetStream server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    Event,
    EventPublisher,
    MissionFailed,
    MissionRequested,
    StreamSettings,
    derived_id,
    ensure_streams,
    replay,
)
from aether_events.streams import TELEMETRY_MAX_AGE_SECONDS, TELEMETRY_MAX_BYTES

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


async def test_the_telemetry_stream_keeps_a_week_within_a_size_bound_by_default(
    nc: NatsClient,
) -> None:
    """Transcript entries travel on telemetry and the gateway keeps them from there: the
    stream keeps them for days (a gateway away for a night loses none), within a size
    bound past which the oldest go (a flood does not fill the disk), and its duplicate
    window stays short (the server keeps every id of the window in memory)."""
    js = nc.jetstream()
    await ensure_streams(js)
    config = (await js.stream_info(TELEMETRY_STREAM)).config
    assert config.max_age == TELEMETRY_MAX_AGE_SECONDS == 7 * 24 * 3600
    assert config.max_bytes == TELEMETRY_MAX_BYTES == 1024**3
    assert config.discard == DiscardPolicy.OLD
    assert config.duplicate_window == 120.0


async def test_an_upgrade_applies_the_new_retention_to_an_existing_stream_keeping_its_messages(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A telemetry stream made by a version that kept it an hour, holding messages: a
    start with the new settings changes its age and size limits in place (an update, not a
    new stream) and every message stays; a later start with other values changes them
    again, and says so."""
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=TELEMETRY_STREAM,
            description="Aether agent progress and heartbeats (short retention)",
            subjects=[ALL_TELEMETRY],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=1,
            max_age=3600,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
        )
    )
    for n in range(5):
        await js.publish(
            f"aether.telemetry.m-old.progress.{n}", b"{}", headers={"Nats-Msg-Id": f"p{n}"}
        )
    before = (await js.stream_info(TELEMETRY_STREAM)).state
    with caplog.at_level(logging.WARNING, logger="aether.events.streams"):
        await ensure_streams(js)
    info = await js.stream_info(TELEMETRY_STREAM)
    assert (info.config.max_age, info.config.max_bytes) == (TELEMETRY_MAX_AGE_SECONDS, 1024**3)
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (
        5,
        before.first_seq,
        before.last_seq,
    )
    changed = [r for r in caplog.records if getattr(r, "stream", None) == TELEMETRY_STREAM]
    assert [r.getMessage() for r in changed] == ["stream settings changed"]
    # The duplicate window still knows what was published before the update.
    again = await js.publish(
        "aether.telemetry.m-old.progress.4", b"{}", headers={"Nats-Msg-Id": "p4"}
    )
    assert again.duplicate

    await ensure_streams(
        js,
        StreamSettings(telemetry_max_age_seconds=2 * 24 * 3600, telemetry_max_bytes=64 * 1024**2),
    )
    info = await js.stream_info(TELEMETRY_STREAM)
    assert (info.config.max_age, info.config.max_bytes) == (2 * 24 * 3600, 64 * 1024**2)
    assert info.state.messages == 5


async def test_past_its_size_bound_the_telemetry_stream_drops_its_oldest_first(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings(telemetry_max_bytes=64 * 1024))
    for n in range(40):
        await js.publish(f"aether.telemetry.m-flood.progress.{n}", b"x" * 4000)
    state = (await js.stream_info(TELEMETRY_STREAM)).state
    assert state.bytes <= 64 * 1024 and 0 < state.messages < 40
    assert state.last_seq == 40 and state.first_seq == 40 - state.messages + 1
