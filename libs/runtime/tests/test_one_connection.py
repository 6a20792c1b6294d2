"""A service holds one NATS connection, whatever it runs on it: FastStream's pull loops on
several consumers and streams, its publisher, acknowledgements, replay and the requests
of the reconnect hand-back. Counted by the server itself (its ``/connz`` monitoring
endpoint), before and after a restart of the server."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aether.infra import EmbeddedNats, free_port
from aether_events import ALL_MISSION_EVENTS, ALL_TELEMETRY, TELEMETRY_STREAM, MissionRequested
from aether_runtime import ConsumerSpec, RuntimeSettings, Service

from .test_bus_restart import Recorder, publish_when_back, requested


@pytest.fixture
def monitored_nats() -> Iterator[EmbeddedNats]:
    """A NATS server of the test's own with its monitoring endpoint on."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-nats-"))
    server = EmbeddedNats(data, monitor_port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def _read_connz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz", timeout=10) as answer:
        body: dict[str, Any] = json.load(answer)
    return body


async def connections(server: EmbeddedNats) -> list[str]:
    """The names of the clients connected to ``server``, as it counts them."""
    connz = await asyncio.to_thread(_read_connz, server.monitor_port)
    return [c.get("name", "") for c in connz.get("connections") or []]


async def test_a_service_uses_one_connection_for_everything(
    monitored_nats: EmbeddedNats,
) -> None:
    handler = Recorder()
    svc = Service(
        name="one",
        settings=RuntimeSettings(nats_url=monitored_nats.url, port=0),
        bus_poll_seconds=0,
    )
    # An ordered consumer on a filter, a concurrent one, one on the telemetry stream, and
    # three lanes on one shared durable: each a FastStream subscriber.
    svc.consume(
        ConsumerSpec(
            durable="one-ordered",
            subject=ALL_MISSION_EVENTS,
            types=(MissionRequested,),
            handler=handler,
        )
    )
    svc.consume(
        ConsumerSpec(
            durable="one-concurrent", subject=ALL_MISSION_EVENTS, handler=Recorder(), max_workers=4
        )
    )
    svc.consume(
        ConsumerSpec(
            durable="one-telemetry",
            subject=ALL_TELEMETRY,
            stream=TELEMETRY_STREAM,
            handler=Recorder(),
            start_at_new=True,
        )
    )
    for _ in range(3):
        svc.consume(
            ConsumerSpec(
                durable="one-shared", subject=ALL_MISSION_EVENTS, handler=Recorder(), ack_pending=64
            )
        )
    await svc.start()
    try:
        assert await connections(monitored_nats) == ["aether-one"]
        await svc.publisher.publish(requested("m-1"))
        await handler.wait("m-1")
        assert await connections(monitored_nats) == ["aether-one"]

        # A restart of the server: the one connection comes back, and the consumers,
        # the publisher and the acknowledgements go on over it.
        monitored_nats.kill()
        monitored_nats.start()
        assert svc.nc is not None
        await publish_when_back(svc.nc, requested("m-2"), timeout=60)
        await handler.wait("m-2")
        assert await connections(monitored_nats) == ["aether-one"]
        assert svc.nc is svc.broker.connection
    finally:
        await svc.stop()
    assert await connections_once_closed(monitored_nats) == []


async def connections_once_closed(server: EmbeddedNats, timeout: float = 30.0) -> list[str]:
    """The clients still connected once the server has seen the closed ones go: a client
    that closes its socket is dropped from ``/connz`` when the server's read loop sees the
    end of the stream, which on a loaded machine comes after ``stop()`` has returned. A
    connection the service left open stays, and is returned at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        names = await connections(server)
        if not names or asyncio.get_running_loop().time() > deadline:
            return names
        await asyncio.sleep(0.1)
