"""The five services on a three-node NATS cluster with three-replica streams: the streams
keep their configuration through service restarts, and a mission completes when one of
the three servers is killed in the middle of it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from aether import prestart
from aether.infra import EmbeddedNatsCluster
from aether.stack import Stack
from aether_events import (
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    BranchMerged,
    MissionCompleted,
    TaskReady,
    mission_history,
)
from aether_llm import MessagesServer
from aether_runtime import tls
from tests.e2e.test_mission_flow import submit_and_approve, tree_files
from tests.support import ScriptedModel

pytestmark = pytest.mark.e2e


def declared(replicas: int) -> dict[str, object]:
    return {
        "missions": (replicas, 7200.0, 0.0),
        "telemetry": (replicas, 120.0, 604800.0),
    }


async def stream_settings(url: str) -> dict[str, object]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        out: dict[str, object] = {}
        for key, stream in (("missions", MISSIONS_STREAM), ("telemetry", TELEMETRY_STREAM)):
            config = (await js.stream_info(stream)).config
            out[key] = (config.num_replicas, config.duplicate_window, config.max_age)
        return out
    finally:
        await nc.close()


async def stream_leader(url: str) -> str:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(MISSIONS_STREAM)
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader
    finally:
        await nc.close()


async def mission_status(http: httpx.AsyncClient, mission_id: str) -> str:
    response = await http.get(f"/missions/{mission_id}")
    return str(response.json().get("status")) if response.status_code == 200 else ""


@pytest.fixture
async def clustered(
    tmp_path: Path,
    nats_cluster: EmbeddedNatsCluster,
    model_server: tuple[MessagesServer, ScriptedModel],
    fresh_database: str,
) -> Any:
    stack = Stack(
        home=tmp_path / "stack",
        random_ports=True,
        prestart=prestart.shared(),
        env={
            "ANTHROPIC_API_KEY": "test-key",
            "ANTHROPIC_BASE_URL": model_server[0].url,
            "DATABASE_URL": fresh_database,
            "NATS_URL": nats_cluster.url,
            "AETHER_STREAM_REPLICAS": "3",
            "AETHER_MODEL_MAX_RETRIES": "0",
        },
    )
    try:
        await asyncio.to_thread(stack.start, 180.0)
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def test_a_mission_completes_when_one_of_three_servers_is_killed_and_streams_keep_r3(
    clustered: Stack, nats_cluster: EmbeddedNatsCluster, repo: Path
) -> None:
    stack = clustered
    assert await stream_settings(nats_cluster.url) == declared(3)
    mission_id, log, nc = await submit_and_approve(stack, repo)
    try:
        await log.wait_for(lambda log: bool(log.of_type(BranchMerged)), timeout=120)
    finally:
        await log.stop()
        await nc.close()
    # Kill the server leading the mission stream, the one the services were given among
    # them: they fail over to the two others, which elect a new leader.
    leader = await stream_leader(nats_cluster.url)
    victim = next(i for i, node in enumerate(nats_cluster.nodes) if node.name == leader)
    nats_cluster.kill_node(victim)
    alive = next(node.url for i, node in enumerate(nats_cluster.nodes) if i != victim)
    status = ""
    # One client for the wait: a new one per look costs 40 ms of CPU (its TLS context).
    async with httpx.AsyncClient(
        verify=tls.shared(), base_url=stack.gateway_url, headers=stack.auth_headers, timeout=10
    ) as http:
        for _ in range(1200):
            status = await mission_status(http, mission_id)
            if status in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.25)
    assert status == "completed"
    nc = await nats.connect(alive)
    try:
        history = await mission_history(nc.jetstream(), mission_id)
    finally:
        await nc.close()
    merged = sorted(e.task_id for e in history if isinstance(e, BranchMerged))
    assert merged == ["a", "b", "c"]
    assert sorted(e.task.id for e in history if isinstance(e, TaskReady)) == ["a", "b", "c"]
    (completed,) = [e for e in history if isinstance(e, MissionCompleted)]
    assert set(tree_files(repo, completed.final_sha)) >= {"a.txt", "b.txt", "c.txt"}
    assert len({e.event_id for e in history}) == len(history)
    # The killed server back, and every service restarted: the streams are as declared.
    nats_cluster.start_node(victim)
    # All five stopped and started again together (each declares the streams as it
    # starts), rather than one at a time: five start-ups in a row were a third of the test.
    names = list(stack.processes)
    await asyncio.to_thread(stack.stop_services, names)
    for name in names:
        stack.start_service(name)
    await asyncio.to_thread(stack.wait_ready, names, 120.0)
    assert await stream_settings(alive) == declared(3)
