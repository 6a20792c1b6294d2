"""A message whose settlement the server never took (it answered nothing, or it was
killed before it wrote the delivery down and delivers the message again as new) comes
back to the lane that did the work: the copy is settled as the work was, and the handler
is not run a second time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    MissionRequested,
    derived_id,
    ensure_streams,
)
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service
from aether_runtime import service as service_module

ACK_WAIT = 1.0


async def test_a_message_whose_ack_the_server_never_took_is_settled_again_not_redone(
    nc: NatsClient, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    calls: list[tuple[str, int]] = []
    settled_copy = asyncio.Event()

    async def handler(event: Event, delivery: Delivery) -> None:
        calls.append((event.mission_id, delivery.num_delivered))

    real_confirm = service_module.confirm
    confirms: list[int] = []

    async def confirm(nc: Any, msg: Any, payload: bytes, *args: Any) -> bool:
        confirms.append(msg.metadata.num_delivered)
        if len(confirms) == 1:
            return False  # the first settlement never reaches the server
        answered = await real_confirm(nc, msg, payload, *args)
        settled_copy.set()
        return answered

    monkeypatch.setattr(service_module, "confirm", confirm)
    svc = Service(name="again", settings=RuntimeSettings(nats_url=nats_url, port=0))
    svc.consume(
        ConsumerSpec(
            durable="again", subject=ALL_MISSION_EVENTS, handler=handler, ack_wait_seconds=ACK_WAIT
        )
    )
    await svc.start()
    try:
        await EventPublisher(js).publish(
            MissionRequested(
                event_id=derived_id("m-once", "requested"),
                mission_id="m-once",
                occurred_at=datetime.now(UTC),
                correlation_id="c",
                repository="/r",
                requirement="x",
            )
        )
        # The server delivers it again once the ack wait has run out.
        await asyncio.wait_for(settled_copy.wait(), 30)
        info = await js.consumer_info(MISSIONS_STREAM, "again")
    finally:
        await svc.stop()
    assert calls == [("m-once", 1)]
    assert confirms == [1, 2]
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 1
