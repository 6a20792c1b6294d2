"""The read model cannot fall behind silently: after a nats-server crash, and when its
consumer skips events, it reaches the stream's end and matches the stream."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import psycopg
import pytest

from aether.infra import EmbeddedNats
from aether_events import (
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    ensure_streams,
    mission_subject,
    new_mission_id,
)
from aether_events.testing import delete_streams_for_good
from aether_gateway.adapters.stream import read_stored

from .conftest import GatewayServer, Script, eventually, gateway_settings, stored_events

REPAIRS = re.compile(r'^aether_read_model_repairs_total\{kind="(\w+)"\} (\S+)$', re.M)


def long_mission(script: Script, tasks: int) -> list[Event]:
    """A mission of ``tasks`` tasks run one after another: 5 + 4 x tasks events."""
    ids = tuple(f"t{i}" for i in range(tasks))
    events: list[Event] = [
        script.requested(),
        script.prepared(),
        script.plan(task_ids=ids),
        script.approved(),
    ]
    for task_id in ids:
        events += [
            script.task_ready(task_id),
            script.usage(0.01),
            script.agent_completed(task_id),
            script.merged(task_id),
        ]
    events.append(script.completed())
    return events


async def read_model_seqs(url: str, mission_id: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT seq FROM events WHERE mission_id = %s ORDER BY seq", (mission_id,)
        )
        return [row[0] for row in await cur.fetchall()]


async def position(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT last_seq FROM projection_position WHERE consumer = 'gateway'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def stream_seqs(nc, mission_id: str) -> list[int]:
    stored = await read_stored(nc.jetstream(), MISSIONS_STREAM, mission_subject(mission_id))
    return [message.seq for message in stored]


async def repairs(http) -> dict[str, float]:
    return {
        kind: float(value) for kind, value in REPAIRS.findall((await http.get("/metrics")).text)
    }


@pytest.fixture
async def own_nats() -> AsyncIterator[EmbeddedNats]:
    """A NATS server of this test's own, to kill and restart."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-nats-"))
    server = EmbeddedNats(data).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


async def publish_through_outage(publisher: EventPublisher, event: Event, within: float) -> int:
    """Publish, retrying while the server is away (the message id makes retries safe)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return (await publisher.publish(event)).seq
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # retry pacing, not a wait for an event


async def test_a_nats_server_crash_mid_mission_leaves_no_gap_in_the_read_model(
    own_nats, gateway_db
):
    gateway = GatewayServer(gateway_settings(own_nats.url, gateway_db, read_model_check_seconds=1))
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    await gateway.start()
    try:
        script = Script(new_mission_id())
        events = long_mission(script, tasks=40)
        publisher = EventPublisher(nc.jetstream(), timeout=1.0)
        half = len(events) // 2
        for event in events[:half]:
            # Retried too: on a loaded machine an acknowledgement can take over the
            # second the outage's retries want (the message id keeps it one event).
            await publish_through_outage(publisher, event, within=30)

        async def folding():
            return await position(gateway_db) >= 30 or None

        await eventually(folding, what="the gateway to be folding the mission")
        own_nats.process.kill()  # SIGKILL, mid-flow
        own_nats.process.wait()
        own_nats.start()  # same port, same store
        restarted = time.monotonic()
        for event in events[half:]:
            last = await publish_through_outage(publisher, event, within=30)
        published = time.monotonic()

        async def caught_up():
            return await position(gateway_db) >= last or None

        # Well inside the consumer's 30 s ack wait: a lost acknowledgement must not stall
        # the read model until it runs out.
        await eventually(caught_up, what="the read model to reach the stream's end")
        recovered = time.monotonic()
        expected = await stream_seqs(nc, script.mission_id)
        assert len(expected) == len(events)
        assert await read_model_seqs(gateway_db, script.mission_id) == expected
        async with gateway.client() as http:
            mission = (await http.get(f"/missions/{script.mission_id}")).json()
            assert mission["status"] == "completed"
            assert {t["status"] for t in mission["tasks"]} == {"merged"}
            assert len(mission["tasks"]) == 40
            assert mission["cost_usd"] == pytest.approx(0.40)

            async def reported_caught_up():
                body = (await http.get("/readyz")).json()
                # What the watch last found: a look from before the second half was
                # published is caught up too, at an older position; wait for a newer look.
                seen = body["read_model"]
                return body if seen.get("caught_up") and seen.get("position") == last else None

            ready = await eventually(reported_caught_up, what="readiness to report it")
            assert ready["read_model"]["position"] == last
            lag = re.search(
                r"^aether_read_model_lag_events (\S+)$", (await http.get("/metrics")).text, re.M
            )
            assert lag is not None and float(lag.group(1)) == 0
        assert ready["read_model"]["projection_failures"] == 0
        print(
            f"read model caught up {recovered - restarted:.1f}s after the restart,"
            f" {recovered - published:.1f}s after the last publish"
        )
    finally:
        await gateway.stop()
        await nc.close()


async def test_events_the_consumer_skipped_are_refolded_from_the_stream(make_gateway, nc):
    """The consumer delivers a later event before two it skipped: the position jumps,
    the gap is found and the mission refolded in stream order; when the skipped events
    arrive late they change nothing."""
    # Checks only when a gap is found: the periodic catch-up would fold the events the
    # paused consumer holds back before the test can skip them.
    gateway = await make_gateway(read_model_check_seconds=60)
    read_model = gateway.gateway.read_model
    js = nc.jetstream()
    script = Script(new_mission_id())
    publisher = EventPublisher(js)
    await publisher.publish_all([script.requested(), script.prepared()])
    async with gateway.client() as http:
        before = await repairs(http)

        async def preparing():
            mission = (await http.get(f"/missions/{script.mission_id}")).json()
            return mission if mission["status"] == "preparing" else None

        await eventually(preparing, what="the mission to be preparing")
        until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await js.pause_consumer(MISSIONS_STREAM, "gateway", until)
        skipped = [script.plan(task_ids=("t1",)), script.approved()]
        await publisher.publish_all(skipped)
        ready = script.task_ready("t1")
        ready_seq = (await publisher.publish(ready)).seq
        # As the consumer would deliver it, had it lost its place.
        assert await read_model.apply(ready, ready_seq)

        async def refolded():
            mission = (await http.get(f"/missions/{script.mission_id}")).json()
            return mission if mission["approved_version"] == 1 else None

        mission = await eventually(refolded, what="the skipped events to be refolded")
        assert mission["plan_version"] == 1
        assert [(t["task_id"], t["status"]) for t in mission["tasks"]] == [("t1", "ready")]
        assert await read_model.gaps() == []
        assert (await repairs(http))["gap"] == before["gap"] + 1

        await js.resume_consumer(MISSIONS_STREAM, "gateway")
        rest = [script.agent_completed("t1"), script.merged("t1"), script.completed()]
        last = (await publisher.publish_all(rest))[-1].seq

        async def completed():
            mission = (await http.get(f"/missions/{script.mission_id}")).json()
            return mission if mission["status"] == "completed" else None

        await eventually(completed, what="the mission to complete")
    assert await position(gateway.settings.database_url) == last
    history = await stored_events(nc, script.mission_id)
    seqs = await read_model_seqs(gateway.settings.database_url, script.mission_id)
    assert len(seqs) == len(history) == 8


@pytest.mark.slow
async def test_a_stream_recreated_under_the_gateway_is_folded_afresh(make_gateway, nc):
    """The stream's sequences now name other events than the ones folded: the read
    model is rebuilt from the stream as it is, and follows it from there."""
    gateway = await make_gateway(read_model_check_seconds=0.5)
    js = nc.jetstream()
    gone, kept = Script(new_mission_id()), Script(new_mission_id())
    await EventPublisher(js).publish_all([gone.requested(), gone.prepared(), gone.plan()])
    async with gateway.client() as http:
        before = await repairs(http)

        async def status_of(script: Script, status: str):
            response = await http.get(f"/missions/{script.mission_id}")
            return response.status_code == 200 and response.json()["status"] == status

        await eventually(lambda: status_of(gone, "awaiting_approval"), what="the first stream")
        await delete_streams_for_good(js, (MISSIONS_STREAM,))
        await ensure_streams(js)
        await EventPublisher(js).publish_all([kept.requested(), kept.prepared()])

        async def rebuilt():
            listed = (await http.get("/missions")).json()["missions"]
            return [m["id"] for m in listed] == [kept.mission_id] or None

        await eventually(rebuilt, what="the read model to hold only the new stream's missions")
        await eventually(lambda: status_of(kept, "preparing"), what="the new stream's events")
        assert (await repairs(http))["diverged"] >= before["diverged"] + 1
    assert await read_model_seqs(gateway.settings.database_url, kept.mission_id) == [1, 2]
    assert await read_model_seqs(gateway.settings.database_url, gone.mission_id) == []
