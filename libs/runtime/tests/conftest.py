"""Fixtures of the runtime's own tests: services run in this process against real NATS."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from aether.infra import EmbeddedNats, EmbeddedNatsCluster


async def wait_for_jetstream(url: str, timeout: float = 30.0) -> None:
    """Wait until the server (or cluster) at ``url`` answers JetStream requests: a new
    cluster has no meta leader for its first seconds."""
    nc = await nats.connect(url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    """A NATS server of the test's own, which the test may kill and start again."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-nats-"))
    server = EmbeddedNats(data).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
async def nats_cluster() -> AsyncIterator[EmbeddedNatsCluster]:
    """Three NATS servers on the loopback interface forming one JetStream cluster."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-cluster-"))
    cluster = EmbeddedNatsCluster(data).start()
    try:
        await wait_for_jetstream(cluster.url)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
