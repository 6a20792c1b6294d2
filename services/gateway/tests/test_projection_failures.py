"""An event the read model cannot store is recorded and passed over, never holding up
the missions after it; an error about the database is retried, never passed over.

The bad events are published straight onto the bus, as a producer other than the
gateway's API could: the API refuses such input at the door."""

from __future__ import annotations

import re

import psycopg
import pytest

from aether_events import (
    AgentProgress,
    AgentStarted,
    EventPublisher,
    MissionRequested,
    encode,
    new_mission_id,
    subject_for,
    tag_of,
)
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.queries import Queries
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.adapters.stream import Incoming

from .conftest import Script, eventually

FAILURES_METRIC = re.compile(r"^aether_read_model_projection_failures_total (\S+)$", re.M)


async def failures_counted(http) -> float:
    found = FAILURES_METRIC.search((await http.get("/metrics")).text)
    assert found is not None, "the failure counter is exported from the start"
    return float(found.group(1))


async def listed(http, *mission_ids: str) -> dict[str, dict]:
    """Wait until every mission is listed; return them by id."""

    async def probe():
        missions = (await http.get("/missions", params={"limit": 200})).json()["missions"]
        by_id = {m["id"]: m for m in missions}
        return by_id if all(m in by_id for m in mission_ids) else None

    return await eventually(probe, what=f"missions {mission_ids} to be listed")


async def publish_raw(nc, event: MissionRequested, payload: bytes) -> int:
    """Publish ``payload`` where ``event`` would go (a producer's own encoding)."""
    ack = await nc.jetstream().publish(
        subject_for(event), payload, headers={"Nats-Msg-Id": event.event_id}
    )
    return ack.seq


async def position(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT last_seq FROM projection_position WHERE consumer = 'gateway'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_a_nul_in_an_event_is_stored_sanitised_and_never_holds_up_later_missions(
    make_gateway, nc
):
    gateway = await make_gateway(read_model_check_seconds=0.5)
    async with gateway.client() as http:
        before = await failures_counted(http)
        bad = Script(new_mission_id())
        publisher = EventPublisher(nc.jetstream())
        bad_seq = (
            await publisher.publish(
                bad.requested(repository="/repos/a\x00b", requirement="Add\x00 a greeting")
            )
        ).seq
        others = [Script(new_mission_id()) for _ in range(3)]
        for other in others:
            await publisher.publish(other.requested())
        # The bad mission's later events still fold into its (sanitised) row.
        last = (await publisher.publish(bad.prepared())).seq

        found = await listed(http, bad.mission_id, *(o.mission_id for o in others))
        assert all(found[o.mission_id]["projection_failures"] == 0 for o in others)
        assert found[bad.mission_id]["projection_failures"] == 1

        async def prepared():
            mission = (await http.get(f"/missions/{bad.mission_id}")).json()
            return mission if mission["status"] == "preparing" else None

        mission = await eventually(prepared, what="the bad mission's next event to fold")
        assert mission["repository"] == "/repos/a\ufffdb"
        assert mission["requirement"] == "Add\ufffd a greeting"
        [error] = mission["projection_errors"]
        assert error["seq"] == bad_seq
        assert error["stream"] == "missions"
        assert error["type"] == tag_of(MissionRequested)
        assert error["outcome"] == "sanitised"
        assert "\\u0000" in error["error"]  # what PostgreSQL refused

        assert await position(gateway.settings.database_url) == last
        assert await failures_counted(http) == before + 1
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["read_model"]["projection_failures"] == 1
        assert "1 projection failure" in ready.json()["detail"]


async def test_a_payload_that_does_not_decode_is_salvaged_whether_or_not_events_follow(
    make_gateway, nc
):
    """A lone surrogate escape makes the runtime refuse the payload as poison: the
    position then jumps over it (a gap, when an event follows) or stays short of the
    stream (when none does); either way the watch finds it and stores what it can."""
    gateway = await make_gateway(read_model_check_seconds=0.5)
    async with gateway.client() as http:
        followed, good, last = (Script(new_mission_id()) for _ in range(3))
        first = followed.requested(repository="/repos/SURROGATE")
        surrogate = encode(first).replace(b"SURROGATE", b"x\\ud800y")
        seq = await publish_raw(nc, first, surrogate)
        await EventPublisher(nc.jetstream()).publish(good.requested())
        found = await listed(http, followed.mission_id, good.mission_id)
        mission = (await http.get(f"/missions/{followed.mission_id}")).json()
        assert mission["repository"] == "/repos/x\ufffdy"
        assert mission["projection_failures"] == 1
        [error] = mission["projection_errors"]
        assert (error["seq"], error["outcome"]) == (seq, "sanitised")
        assert "does not decode" in error["error"]
        assert found[good.mission_id]["projection_failures"] == 0

        # Nothing after it: the read model is short of the stream's end until the watch
        # folds the rest from the stream itself.
        alone = last.requested(repository="/repos/SURROGATE")
        await publish_raw(nc, alone, encode(alone).replace(b"SURROGATE", b"\\udfff"))
        await listed(http, last.mission_id)
        assert (await http.get(f"/missions/{last.mission_id}")).json()["repository"] == (
            "/repos/\ufffd"
        )

        async def caught_up():
            body = (await http.get("/readyz")).json()
            return body if body["read_model"].get("caught_up") else None

        body = await eventually(caught_up, what="readiness to say the read model caught up")
        assert body["read_model"]["projection_failures"] == 2
        assert body["read_model"]["lag_events"] == 0
        assert 0 <= body["read_model"]["checked_seconds_ago"] < 3600
        assert re.search(
            r"read model caught up as of \d+\.\ds ago; 2 projection failures", body["detail"]
        )


async def test_an_unreadable_request_lists_a_placeholder_that_later_events_fold_into(
    make_gateway, nc
):
    gateway = await make_gateway(read_model_check_seconds=0.5)
    async with gateway.client() as http:
        script = Script(new_mission_id())
        request = script.requested()
        garbled = encode(request).replace(b'"requirement":', b'"requirement":{"not":"text"},"x":')
        seq = await publish_raw(nc, request, garbled)
        await EventPublisher(nc.jetstream()).publish(script.prepared())

        async def preparing():
            response = await http.get(f"/missions/{script.mission_id}")
            if response.status_code == 200 and response.json()["status"] == "preparing":
                return response.json()
            return None

        mission = await eventually(preparing, what="the placeholder to take later events")
        assert mission["projection_failures"] == 1
        assert mission["repository"] == ""
        assert mission["integration_branch"] == f"aether/{script.mission_id}"
        [error] = mission["projection_errors"]
        assert (error["seq"], error["outcome"]) == (seq, "placeholder")


async def test_an_error_about_the_database_is_retried_not_recorded(gateway_db, script):
    """A lost connection says nothing about the event: the fold raises (the runtime
    then redelivers), and the next attempt stores it with no failure recorded."""
    db = Database(gateway_db, max_size=1)
    await db.open()
    try:
        await db.migrate()
        read_model = ReadModel(db)
        assert await read_model.apply(script.requested(), 1)
        async with await psycopg.AsyncConnection.connect(gateway_db, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        prepared = script.prepared()
        with pytest.raises(psycopg.OperationalError):
            await read_model.apply(prepared, 2)
        await db.pool.check()  # the queries' connection went with the folds'
        assert await read_model.position() == 1
        assert await read_model.apply(prepared, 2)
        assert await read_model.position() == 2
        assert await read_model.failure_count() == 0
    finally:
        await db.close()


async def test_a_telemetry_failure_recorded_before_its_mission_is_stored_counts_on_it(
    gateway_db, script
):
    """The two streams are folded by separate consumers: an agent's report refused before
    the mission's own events are folded still counts on the mission once it is listed."""
    db = Database(gateway_db, max_size=1)
    await db.open()
    try:
        await db.migrate()
        read_model = ReadModel(db)
        report = AgentProgress(
            **script.meta(), task_id="t1", attempt=1, runner_id="r1", turns=1, last_action="a\x00"
        )
        assert await read_model.apply_telemetry(report, 7)
        for seq, event in enumerate(
            [script.requested(), script.plan(task_ids=("t1",)), script.task_ready("t1")], 1
        ):
            assert await read_model.apply(event, seq)
        queries = Queries(db)
        mission = await queries.mission(script.mission_id)
        assert mission is not None and mission.projection_failures == 1
        [listed] = await queries.missions()
        assert listed.projection_failures == 1
        [failure] = await read_model.failures(script.mission_id)
        assert (failure.stream, failure.seq, failure.outcome) == ("telemetry", 7, "sanitised")
    finally:
        await db.close()


async def test_a_telemetry_event_postgres_refuses_is_recorded_on_its_mission(make_gateway, nc):
    """An agent's progress report quotes its last action, which may hold a NUL: stored
    sanitised, recorded, and the reports after it still arrive."""
    gateway = await make_gateway(read_model_check_seconds=0.5)
    script = Script(new_mission_id())
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(),
            script.plan(task_ids=("t1",)),
            script.task_ready("t1"),
            AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r1", model="m"),
        ]
    )
    progress = AgentProgress(
        **script.meta(), task_id="t1", attempt=1, runner_id="r1", turns=1, last_action="ran\x00"
    )
    seq = (await publisher.publish(progress)).seq
    later = AgentProgress(
        **script.meta(), task_id="t1", attempt=1, runner_id="r1", turns=2, last_action="wrote"
    )
    await publisher.publish(later)
    async with gateway.client() as http:

        async def turns(wanted: int):
            task = (await http.get(f"/missions/{script.mission_id}/tasks/t1")).json()
            agent = task.get("agent") or {}
            return agent if agent.get("turns") == wanted else None

        assert (await eventually(lambda: turns(2), what="the later report"))["last_action"] == (
            "wrote"
        )

        async def recounted():
            # Counted when the mission is read, from the failures recorded for it.
            mission = (await http.get(f"/missions/{script.mission_id}")).json()
            return mission if mission["projection_failures"] else None

        mission = await eventually(recounted, what="the failure on the mission's record")
        assert mission["projection_failures"] == 1
        [error] = mission["projection_errors"]
        assert (error["stream"], error["seq"]) == ("telemetry", seq)
        assert (error["type"], error["outcome"]) == ("agent_progress", "sanitised")


async def test_the_read_models_folds_commit_without_waiting_for_the_disk_and_nothing_else(
    gateway_db, script
):
    """A fold's rows and position are lost together if the server loses its last
    commits, and folded again from the stream: its commits do not wait for the disk.
    Every other write (tokens, idempotency keys) still does."""
    # The tests' server does not wait for the disk at all: this database does, as a
    # production one.
    async with await psycopg.AsyncConnection.connect(gateway_db, autocommit=True) as admin:
        name = (await (await admin.execute("SELECT current_database()")).fetchone())[0]
        await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    db = Database(gateway_db, max_size=1)
    await db.open()
    try:
        await db.migrate()

        async def setting(pool) -> str:
            async with pool.connection() as conn:
                row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
            return str(row[0])

        assert await setting(db.folds) == "off"
        assert await setting(db.pool) == "on"
        before = db.folds.get_stats().get("requests_num", 0)
        read_model = ReadModel(db)
        assert await read_model.apply(script.requested(), 1)
        assert await read_model.take_items(
            [Incoming.of_event(script.prepared(), 2), Incoming.of_event(script.plan(), 3)]
        )
        assert db.folds.get_stats().get("requests_num", 0) - before == 2
        assert await read_model.position() == 3
    finally:
        await db.close()
