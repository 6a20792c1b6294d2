"""``Follower`` against a real NATS: in order, once, from where it was told to start."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aether.infra import EmbeddedNats
from aether_events import TELEMETRY_STREAM, StreamSettings, ensure_streams
from aether_runtime.follow import Follower
from aether_runtime.reconnect import Reconnects


async def test_new_only_starts_at_the_end_and_goes_on_from_there_after_a_loss(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    await js.publish("aether.telemetry.m1.agent_progress", b"old")
    seen, on_message = recorded()

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

        await asyncio.wait_for(received(seen, 5), 10)
        lost = follower.consumer
        assert lost is not None
        await js.delete_consumer(TELEMETRY_STREAM, lost)
        # Stored while no consumer exists: the next one starts after the last delivered.
        await js.publish("aether.telemetry.m1.agent_progress", b"while-lost")
        await asyncio.wait_for(received(seen, 6), 10)
        assert seen == [*(f"new-{i}".encode() for i in range(5)), b"while-lost"]
        assert follower.consumer not in (None, lost)
    finally:
        await follower.stop()


async def test_stop_ends_the_loop_when_something_inside_swallows_its_cancellation(
    nc: NatsClient,
) -> None:
    """On Python 3.11 ``asyncio.wait_for`` (inside nats-py's requests) can swallow a
    cancellation that arrives as the request is answered, and a handler may swallow one
    too; the follower then goes on. Its stop must still end the loop (it once waited
    behind it forever)."""
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    handling = asyncio.Event()
    swallowed = 0

    async def on_message(msg: Msg) -> None:
        nonlocal swallowed
        handling.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed += 1

    follower = Follower(js, TELEMETRY_STREAM, ["aether.telemetry.>"], on_message, fetch_seconds=0.2)
    await follower.start()
    await js.publish("aether.telemetry.m1.agent_progress", b"one")
    await asyncio.wait_for(handling.wait(), 10)
    await asyncio.wait_for(follower.stop(), 30)
    assert swallowed == 1


async def test_one_standing_request_follows_many_messages(nc: NatsClient) -> None:
    """Messages stored while the follower waits come on the request already at the
    server, not on a request each: a hundred messages, one at a time, in order, cost a
    request or two, not a hundred."""
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    seen: list[bytes] = []
    arrived = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        seen.append(msg.data)
        arrived.set()

    requests: list[str] = []

    async def on_request(msg: Msg) -> None:
        requests.append(msg.subject)

    watch = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{TELEMETRY_STREAM}.>", cb=on_request)
    follower = Follower(js, TELEMETRY_STREAM, ["aether.telemetry.>"], on_message, new_only=True)
    await follower.start()
    try:
        for index in range(100):
            arrived.clear()
            await js.publish("aether.telemetry.m1.agent_progress", f"{index}".encode())
            await asyncio.wait_for(arrived.wait(), 10)
        assert seen == [f"{i}".encode() for i in range(100)]
        await nc.flush()
        assert 1 <= len(requests) <= 2
    finally:
        await follower.stop()
        await watch.unsubscribe()


async def test_a_follower_goes_on_in_order_through_a_server_restart(
    nats_server: EmbeddedNats,
) -> None:
    """The standing request dies with the server: the follower hears nothing past its
    life, looks its consumer up once the server is back, and goes on from the last
    sequence it delivered: every message once, in order."""
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    seen, on_message = recorded()

    follower = Follower(js, TELEMETRY_STREAM, ["aether.telemetry.>"], on_message, fetch_seconds=0.5)
    await follower.start()
    try:
        for index in range(3):
            await js.publish("aether.telemetry.m1.agent_progress", f"before-{index}".encode())
        await asyncio.wait_for(received(seen, 3), 10)
        nats_server.stop()
        nats_server.start()
        for index in range(3):
            await asyncio.wait_for(published_when_back(js, f"after-{index}".encode()), 30)
        await asyncio.wait_for(received(seen, 6), 30)
        await asyncio.sleep(1.5)  # nothing more comes: no message twice
        assert seen == [
            *(f"before-{i}".encode() for i in range(3)),
            *(f"after-{i}".encode() for i in range(3)),
        ]
    finally:
        await follower.stop()
        await nc.close()


@pytest.mark.parametrize("told", [True, False], ids=["told-of-the-reconnect", "not-told"])
async def test_a_follower_asks_the_server_killed_under_it_again(
    nats_server: EmbeddedNats, told: bool
) -> None:
    """The server is killed (a graceful stop would end the request with a status), so
    its standing request dies without a word. Told of the reconnect, the follower asks
    the restarted server at once (its request lives a minute here, past the test's 30
    s); not told, only the time a word was due (the request's life and a grace) has it
    look its consumer up and ask again."""
    reconnects = Reconnects()

    async def back() -> None:
        reconnects.happened()

    nc = await nats.connect(
        nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1, reconnected_cb=back
    )
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    seen, on_message = recorded()

    follower = Follower(
        js,
        TELEMETRY_STREAM,
        ["aether.telemetry.>"],
        on_message,
        new_only=True,
        fetch_seconds=60.0 if told else 0.5,
        reconnects=reconnects if told else None,
    )
    await follower.start()
    try:
        await js.publish("aether.telemetry.m1.agent_progress", b"before")
        await asyncio.wait_for(received(seen, 1), 10)
        nats_server.kill()
        nats_server.start()
        await asyncio.wait_for(published_when_back(js, b"after"), 30)
        await asyncio.wait_for(received(seen, 2), 30)
        assert seen == [b"before", b"after"]
    finally:
        await follower.stop()
        await nc.close()


def recorded() -> tuple[list[bytes], Callable[[Msg], Awaitable[None]]]:
    """What a follower delivers, in a list, and the handler that fills it."""
    seen: list[bytes] = []

    async def on_message(msg: Msg) -> None:
        seen.append(msg.data)

    return seen, on_message


async def received(seen: list[bytes], count: int) -> None:
    while len(seen) < count:
        await asyncio.sleep(0.02)


async def published_when_back(js: JetStreamContext, data: bytes) -> None:
    """Published once the server answers JetStream requests again."""
    while True:
        try:
            await js.publish("aether.telemetry.m1.agent_progress", data, timeout=1.0)
            return
        except Exception:
            await asyncio.sleep(0.05)
