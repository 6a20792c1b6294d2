"""``Follower`` against a real NATS: in order, once, from where it was told to start."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from aether_events import TELEMETRY_STREAM, StreamSettings, ensure_streams
from aether_runtime.follow import Follower


async def test_new_only_starts_at_the_end_and_goes_on_from_there_after_a_loss(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    await js.publish("aether.telemetry.m1.agent_progress", b"old")
    seen: list[bytes] = []

    async def on_message(msg: Msg) -> None:
        seen.append(msg.data)

    follower = Follower(
        js,
        TELEMETRY_STREAM,
        ["aether.telemetry.>"],
        on_message,
        new_only=True,
        fetch_seconds=0.2,
        check_every=1,
    )
    await follower.start()
    try:
        for index in range(5):
            await js.publish("aether.telemetry.m1.agent_progress", f"new-{index}".encode())

        async def until(count: int) -> None:
            while len(seen) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(until(5), 10)
        lost = follower.consumer
        assert lost is not None
        await js.delete_consumer(TELEMETRY_STREAM, lost)
        # Stored while no consumer exists: the next one starts after the last delivered.
        await js.publish("aether.telemetry.m1.agent_progress", b"while-lost")
        await asyncio.wait_for(until(6), 10)
        assert seen == [*(f"new-{i}".encode() for i in range(5)), b"while-lost"]
        assert follower.consumer not in (None, lost)
    finally:
        await follower.stop()
