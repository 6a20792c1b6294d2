"""A stop ends even when what it cancels will not: a handed-off handler or a stop hook
that swallows its cancellation is waited for ``stop_grace_seconds``, then left behind
with a warning, instead of holding the service's stop for good."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import ALL_MISSION_EVENTS, Event, EventPublisher, ensure_streams
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service

from .test_pull import requested

# Far longer than the test's grace; short enough not to outlive the test by much.
STUBBORN_SECONDS = 5.0


async def stubborn() -> None:
    """Sleeps on through every cancellation, for a while."""
    deadline = time.monotonic() + STUBBORN_SECONDS
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue


async def test_a_stop_is_not_held_by_a_handler_or_hook_that_swallows_its_cancellation(
    nats_url: str, nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    async def handler(event: Event, delivery: Delivery) -> None:
        delivery.release()
        started.set()
        await stubborn()

    svc = Service(
        name="stubborn",
        settings=RuntimeSettings(nats_url=nats_url, port=0),
        bus_poll_seconds=0,
        stop_grace_seconds=0.5,
    )
    svc.consume(
        ConsumerSpec(durable="stubborn", subject=ALL_MISSION_EVENTS, handler=handler, hand_offs=4)
    )
    svc.on_stopping.append(stubborn)
    await ensure_streams(nc.jetstream())
    caplog.set_level(logging.WARNING, logger="aether.runtime")
    await svc.start()
    try:
        await EventPublisher(nc.jetstream()).publish(requested("m-stubborn"))
        await asyncio.wait_for(started.wait(), 60)
    finally:
        began = time.monotonic()
        await svc.stop()
        stopped_after = time.monotonic() - began
    # Both were left to run on; without the grace the stop waits for each in turn.
    assert stopped_after < STUBBORN_SECONDS, stopped_after
    assert any("a handed-off handler did not end" in m for m in caplog.messages)
    assert any("a stop hook did not end" in m for m in caplog.messages)


async def test_hooks_after_the_stop_run_once_the_running_handlers_ended(
    nats_url: str, nc: NatsClient
) -> None:
    # What the handlers use (the model client's connections) is closed by an
    # ``on_stopped`` hook: a handler still at work when the stop begins is let finish
    # first, so the hook must run after it, where ``on_stopping`` runs before.
    started = asyncio.Event()
    seen: list[str] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.5)
        seen.append("handler ended")

    async def stopping() -> None:
        seen.append("stopping")

    async def stopped() -> None:
        seen.append("stopped")

    svc = Service(
        name="closing", settings=RuntimeSettings(nats_url=nats_url, port=0), bus_poll_seconds=0
    )
    svc.consume(ConsumerSpec(durable="closing", subject=ALL_MISSION_EVENTS, handler=handler))
    svc.on_stopping.append(stopping)
    svc.on_stopped.append(stopped)
    await ensure_streams(nc.jetstream())
    await svc.start()
    try:
        await EventPublisher(nc.jetstream()).publish(requested("m-closing"))
        await asyncio.wait_for(started.wait(), 60)
    finally:
        await svc.stop()
    assert seen == ["stopping", "handler ended", "stopped"]
