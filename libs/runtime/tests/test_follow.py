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


async def test_stop_ends_the_loop_when_a_fetch_swallows_its_cancellation(
    nc: NatsClient,
) -> None:
    """On Python 3.11 ``asyncio.wait_for`` inside nats-py's fetch can swallow a
    cancellation that arrives as the fetch answers; the follower then fetches again. Its
    stop must still end the loop (it once waited behind it forever)."""
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())

    async def on_message(msg: Msg) -> None:
        pass

    follower = Follower(js, TELEMETRY_STREAM, ["aether.telemetry.>"], on_message, fetch_seconds=0.2)
    await follower.start()
    sub = follower._sub
    assert sub is not None
    real_fetch = sub.fetch
    swallowed = 0

    async def fetch_swallowing_cancellation(batch: int = 1, timeout: float | None = 5) -> list[Msg]:
        nonlocal swallowed
        try:
            return await real_fetch(batch, timeout=timeout)
        except asyncio.CancelledError:
            swallowed += 1
            return []

    sub.fetch = fetch_swallowing_cancellation  # type: ignore[method-assign]
    await asyncio.sleep(0.3)  # the loop is in a fetch
    await asyncio.wait_for(follower.stop(), 30)
    assert swallowed == 1
