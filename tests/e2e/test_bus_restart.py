"""The NATS server killed with SIGKILL in the middle of a mission and started again on
the same port and store: every service resumes and the mission completes, with the read
model equal to the stream. How long the restart stalls the mission is measured by
``bench/chaos`` (its stall figure), not asserted here; that no consumer waits out its ack
wait after a reconnect is proven with hour-long ack waits in
``libs/runtime/tests/test_reconnect.py``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import nats
import pytest

from aether.stack import Stack
from aether_events import BranchMerged, MissionCompleted, TaskReady
from aether_runtime import tls
from tests.e2e.test_mission_flow import submit_and_approve
from tests.eventlog import EventLog

pytestmark = pytest.mark.e2e


async def test_a_nats_restart_mid_mission_and_the_mission_completes_with_its_read_model(
    running: Stack, repo: Path
) -> None:
    stack = running  # its NATS server is the stack's own, which this test may kill
    mission_id, log, nc = await submit_and_approve(stack, repo)
    try:
        await log.wait_for(lambda log: bool(log.of_type(BranchMerged)), timeout=120)
    finally:
        await log.stop()
        await nc.close()
    await asyncio.to_thread(stack.restart_nats)
    back = time.monotonic()
    nc = await nats.connect(stack.nats_url)
    try:
        async with EventLog(nc, mission_id) as log:
            await log.completion(timeout=120)
            history = list(log.events)
        completed_after = time.monotonic() - back
    finally:
        await nc.close()
    print(f"mission completed {completed_after:.1f} s after NATS came back")
    assert any(isinstance(e, MissionCompleted) for e in history)
    assert sorted(e.task_id for e in history if isinstance(e, BranchMerged)) == ["a", "b", "c"]
    assert sorted(e.task.id for e in history if isinstance(e, TaskReady)) == ["a", "b", "c"]
    # The read model caught up with the stream: completed, every event folded.
    async with httpx.AsyncClient(
        verify=tls.shared(), base_url=stack.gateway_url, headers=stack.auth_headers, timeout=10
    ) as http:
        shown: dict[str, object] = {}
        count = 0
        for _ in range(100):
            shown = (await http.get(f"/missions/{mission_id}")).json()
            events = await http.get("/events", params={"mission_id": mission_id, "limit": 1000})
            count = len(events.json()["events"])
            if shown.get("status") == "completed" and count == len(history):
                break
            await asyncio.sleep(0.1)
    assert shown.get("status") == "completed"
    assert count == len(history)
