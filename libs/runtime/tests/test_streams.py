"""The streams keep the configuration Aether declares, however often services start."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from aether.infra import EmbeddedNatsCluster
from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    Event,
    StreamSettings,
    ensure_streams,
)
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service
from aether_runtime.settings import SettingsError


async def ignore(event: Event, delivery: Delivery) -> None:
    return None


def service(url: str, replicas: int = 1, name: str = "streams-test") -> Service:
    settings = RuntimeSettings(nats_url=url, port=0, stream_replicas=replicas)
    svc = Service(name=name, settings=settings, bus_poll_seconds=0)
    missions = ConsumerSpec(durable=f"{name}-missions", subject=ALL_MISSION_EVENTS, handler=ignore)
    svc.consume(missions)
    svc.consume(
        ConsumerSpec(
            durable=f"{name}-telemetry",
            subject=ALL_TELEMETRY,
            stream=TELEMETRY_STREAM,
            handler=ignore,
            start_at_new=True,
        )
    )
    return svc


async def stream_settings(js: JetStreamContext) -> dict[str, object]:
    missions = (await js.stream_info(MISSIONS_STREAM)).config
    telemetry = (await js.stream_info(TELEMETRY_STREAM)).config
    return {
        "missions_replicas": missions.num_replicas,
        "missions_duplicate_window": missions.duplicate_window,
        "missions_max_age": missions.max_age,
        "telemetry_replicas": telemetry.num_replicas,
        "telemetry_duplicate_window": telemetry.duplicate_window,
        "telemetry_max_age": telemetry.max_age,
        "telemetry_max_bytes": telemetry.max_bytes,
    }


def declared(replicas: int) -> dict[str, object]:
    return {
        "missions_replicas": replicas,
        "missions_duplicate_window": 7200.0,
        "missions_max_age": 0.0,
        "telemetry_replicas": replicas,
        "telemetry_duplicate_window": 120.0,
        "telemetry_max_age": 7 * 24 * 3600.0,
        "telemetry_max_bytes": 1024**3,
    }


async def test_a_started_service_leaves_the_streams_as_aether_declared_them(
    nc: NatsClient, nats_url: str
) -> None:
    svc = service(nats_url)
    await svc.start()
    try:
        assert await stream_settings(nc.jetstream()) == declared(1)
    finally:
        await svc.stop()


async def test_a_service_declares_the_telemetry_retention_its_settings_give(
    nc: NatsClient, nats_url: str
) -> None:
    """``AETHER_TELEMETRY_MAX_AGE_SECONDS`` and ``AETHER_TELEMETRY_MAX_BYTES``: read from
    the environment, bounded, and applied to the stream by the service that declares it."""
    env = {
        "NATS_URL": nats_url,
        "AETHER_TELEMETRY_MAX_AGE_SECONDS": "172800",
        "AETHER_TELEMETRY_MAX_BYTES": str(256 * 1024**2),
    }
    settings = RuntimeSettings.for_service(0, env)
    svc = Service(name="streams-test", settings=settings, bus_poll_seconds=0)
    await svc.start()
    try:
        config = (await nc.jetstream().stream_info(TELEMETRY_STREAM)).config
        assert (config.max_age, config.max_bytes) == (172800.0, 256 * 1024**2)
    finally:
        await svc.stop()
    for name, value in (
        ("AETHER_TELEMETRY_MAX_AGE_SECONDS", "60"),
        ("AETHER_TELEMETRY_MAX_BYTES", "1000"),
    ):
        with pytest.raises(SettingsError, match=name):
            RuntimeSettings.for_service(0, {**env, name: value})


@pytest.mark.slow
async def test_three_replicas_survive_service_restarts_on_a_three_node_cluster(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    nc = await nats.connect(nats_cluster.url)
    try:
        js = nc.jetstream()
        for name in ("first", "second", "first"):  # a restart of one, another starting
            svc = service(nats_cluster.url, replicas=3, name=name)
            await svc.start()
            try:
                assert await stream_settings(js) == declared(3)
                # The durable is Aether's as created: FastStream binds to it, no more.
                consumer = (await js.consumer_info(MISSIONS_STREAM, f"{name}-missions")).config
                assert (consumer.ack_wait, consumer.max_deliver) == (4.0, 20)
                assert (consumer.max_ack_pending, consumer.num_replicas) == (1, 0)
            finally:
                await svc.stop()
            assert await stream_settings(js) == declared(3)
        info = await js.stream_info(MISSIONS_STREAM)
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


@pytest.mark.slow
async def test_services_starting_together_on_a_fresh_cluster_all_find_the_streams_led(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    """Five services declaring the replicated streams at once, each through a different
    server: the one whose add loses the race, or who asks a server the new stream has not
    reached yet, waits for the stream rather than failing its start on "stream not
    found". Several rounds, the streams deleted between them."""
    clients = [await nats.connect(url) for url in nats_cluster.urls * 2][:5]
    try:
        for _ in range(2):
            await asyncio.gather(
                *(ensure_streams(nc.jetstream(), StreamSettings(replicas=3)) for nc in clients)
            )
            js = clients[0].jetstream()
            assert await stream_settings(js) == declared(3)
            for name in (MISSIONS_STREAM, TELEMETRY_STREAM):
                await js.delete_stream(name)
    finally:
        for nc in clients:
            await nc.close()
