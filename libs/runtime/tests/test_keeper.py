"""The keeper's in-progress acks keep held messages from being redelivered past their
ack wait, each at its own pace, and stop once a message is dropped."""

from __future__ import annotations

import uuid

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig

from aether_runtime.acks import Keeper

ACK_WAIT = 1.0


async def test_held_messages_outlive_their_ack_wait_and_come_back_once_dropped(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    name = f"KEEPER_{uuid.uuid4().hex[:8].upper()}"
    subject = f"keeper.{name}"
    await js.add_stream(name=name, subjects=[f"{subject}.>"])
    try:
        for i in range(2):
            await js.publish(f"{subject}.{i}", b"work")
        sub = await js.pull_subscribe(
            f"{subject}.>",
            durable="keeper",
            stream=name,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT),
        )
        first, second = await sub.fetch(2, timeout=5)
        keeper = Keeper(lambda: nc)
        # Two paces: the shorter sets the tick, the longer still beats within its wait.
        keeper.hold(("keeper", 1), first, ACK_WAIT / 4)
        keeper.hold(("keeper", 2), second, ACK_WAIT / 2)
        assert ("keeper", 1) in keeper
        assert keeper.keys() == {("keeper", 1), ("keeper", 2)}

        # A pull waiting past both ack waits: the server would redeliver on it.
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=ACK_WAIT * 3)
        info = await js.consumer_info(name, "keeper")
        assert info.num_redelivered == 0
        assert info.num_ack_pending == 2

        keeper.drop(("keeper", 1))
        again = await sub.fetch(1, timeout=ACK_WAIT * 5)
        assert [m.subject for m in again] == [first.subject]
        assert again[0].metadata.num_delivered == 2
        info = await js.consumer_info(name, "keeper")
        assert info.num_redelivered == 1  # the one still held was not

        keeper.close()
        assert ("keeper", 2) not in keeper
        await second.ack()
        await again[0].ack()
    finally:
        await js.delete_stream(name)
