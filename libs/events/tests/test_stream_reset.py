"""Tests start on empty streams: a stream deleted and created again holds nothing of the
deleted one's, even when deletions follow each other within milliseconds."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from aether_events import ensure_stream
from aether_events.testing import delete_stream_for_good


async def test_a_stream_deleted_for_good_comes_back_empty_every_time(nc: NatsClient) -> None:
    """Thirty delete-and-create cycles back to back: with a plain delete, the server
    (2.15.1) brought back an earlier cycle's messages in about one cycle of six. Each
    stream is created as a service creates one (which waits out a deleted namesake's
    removal; a bare add failed so once in a whole-suite run)."""
    js = nc.jetstream()
    config = StreamConfig(name="RESET_PROBE", subjects=["reset-probe.>"])
    for cycle in range(30):
        await ensure_stream(js, config)
        state = (await js.stream_info("RESET_PROBE")).state
        assert (cycle, state.messages, state.last_seq) == (cycle, 0, 0)
        for k in range(5):
            await js.publish(f"reset-probe.{k}", b"x")
        await js.add_consumer("RESET_PROBE", durable_name="reader")
        await delete_stream_for_good(js, config)
