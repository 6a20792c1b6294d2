"""The read model follows the stream, exactly once, across restarts."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from aether_events import BranchPushed, EventPublisher, TaskReady, new_mission_id
from aether_gateway.handlers import CATCH_UP_RUN

from .conftest import Script, eventually


async def publish(nc, events):
    return [ack.seq for ack in await EventPublisher(nc.jetstream()).publish_all(events)]


async def folded(http, mission_id, status):
    async def probe():
        response = await http.get(f"/missions/{mission_id}")
        if response.status_code == 200 and response.json()["status"] == status:
            return response.json()
        return None

    return await eventually(probe, what=f"mission {mission_id} to be {status}")


async def scalar(url, query, *params):
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        return row[0]


async def test_a_scripted_mission_shows_its_plan_tasks_and_final_status(
    http, nc, gateway_server, script
):
    seqs = await publish(nc, script.happy_path())
    mission = await folded(http, script.mission_id, "completed")

    assert mission["id"] == script.mission_id
    assert mission["repository"] == "/repos/demo"
    assert mission["integration_branch"] == f"aether/{script.mission_id}"
    assert mission["base_sha"] == "a" * 40
    assert mission["final_sha"] == "e" * 40
    assert mission["plan_version"] == 1
    assert mission["approved_version"] == 1
    assert mission["offline"] is True
    assert mission["cost_usd"] is None
    assert mission["plan"]["version"] == 1
    assert [t["id"] for t in mission["plan"]["tasks"]] == ["t1"]
    assert [p["version"] for p in mission["plans"]] == [1]
    assert len(mission["tasks"]) == 1
    task = mission["tasks"][0]
    assert task["task_id"] == "t1"
    assert task["status"] == "merged"
    assert task["commit_sha"] == "c" * 40
    assert task["merge_sha"] == "d" * 40
    assert task["resolution"] is False  # a first attempt, not a conflict resolution
    assert mission["events_url"].endswith(f"/missions/{script.mission_id}/events")

    listed = (await http.get("/missions", params={"status": "completed"})).json()["missions"]
    assert [m["id"] for m in listed] == [script.mission_id]
    assert (await http.get("/missions", params={"status": "running"})).json()["missions"] == []

    url = gateway_server.settings.database_url
    assert await scalar(url, "SELECT count(*) FROM events") == len(seqs)
    assert await scalar(url, "SELECT last_seq FROM projection_position") == seqs[-1]


async def test_a_delivered_mission_shows_where_its_result_went(http, nc, gateway_server, script):
    pushed = BranchPushed(
        **script.meta(),
        integration_branch=f"aether/{script.mission_id}",
        sha="e" * 40,
        remote="https://git.example/team/app.git",
    )
    await publish(nc, [*script.happy_path(), pushed])

    async def delivered():
        mission = (await http.get(f"/missions/{script.mission_id}")).json()
        return mission if mission.get("delivery") else None

    mission = await eventually(delivered, what="the delivery to be shown")
    assert mission["status"] == "completed"
    assert mission["delivery"] == {
        "status": "pushed",
        "remote": "https://git.example/team/app.git",
        "branch": f"aether/{script.mission_id}",
        "sha": "e" * 40,
        "at": mission["delivery"]["at"],
        "already_there": False,
        "reason": None,
    }
    assert mission["delivery"]["at"].startswith(pushed.occurred_at.strftime("%Y-%m-%dT%H:%M"))
    listed = (await http.get("/missions")).json()["missions"]
    (row,) = [m for m in listed if m["id"] == script.mission_id]
    assert row["delivery"]["status"] == "pushed"


async def test_missions_are_listed_newest_first(http, nc, script):
    older = Script(new_mission_id())
    newer = Script(new_mission_id(), start=older.meta()["occurred_at"] + timedelta(hours=1))
    await publish(nc, [newer.requested(), older.requested()])
    await folded(http, older.mission_id, "requested")
    listed = (await http.get("/missions")).json()["missions"]
    assert [m["id"] for m in listed] == [newer.mission_id, older.mission_id]
    assert len((await http.get("/missions", params={"limit": 1})).json()["missions"]) == 1


async def test_a_restart_resumes_from_its_position_without_folding_twice(
    http, nc, gateway_server, script
):
    events = script.happy_path()
    first, rest = events[:5], events[5:]
    await publish(nc, first)
    await folded(http, script.mission_id, "running")
    url = gateway_server.settings.database_url
    count_before = await scalar(url, "SELECT count(*) FROM events")
    position_before = await scalar(url, "SELECT last_seq FROM projection_position")
    assert count_before == len(first)

    await gateway_server.stop()
    # Published while the gateway is down: folded by the catch-up on start.
    seqs = await publish(nc, rest)
    await gateway_server.start()

    async with gateway_server.client() as client:
        await folded(client, script.mission_id, "completed")
        assert await scalar(url, "SELECT count(*) FROM events") == len(events)
        assert await scalar(url, "SELECT last_seq FROM projection_position") == seqs[-1]
        assert position_before < seqs[0]

        # A second restart with nothing new changes nothing.
        await gateway_server.restart()
        assert await scalar(url, "SELECT count(*) FROM events") == len(events)
        assert await scalar(url, "SELECT last_seq FROM projection_position") == seqs[-1]
        mission = (await client.get(f"/missions/{script.mission_id}")).json()
        assert mission["tasks"][0]["status"] == "merged"


async def test_a_folded_event_is_not_folded_again(make_gateway, script):
    # Sequences made up here are not on the stream: the watch would (rightly) take the
    # read model for one folded from another history and rebuild it.
    gateway_server = await make_gateway(read_model_check_seconds=0)
    read_model = gateway_server.gateway.read_model
    requested = script.requested()
    ready = script.task_ready("t1")
    assert await read_model.apply(requested, 1000)
    assert not await read_model.apply(requested, 1000)
    # The same event id at a later sequence (republished outside the duplicate window).
    assert not await read_model.apply(requested, 1001)
    assert await read_model.position() == 1001
    assert isinstance(ready, TaskReady)
    assert await read_model.apply(ready, 1002)
    assert not await read_model.apply(ready, 999)
    assert await gateway_server.gateway.context.queries.event_count(script.mission_id) == 2


async def test_usage_with_unknown_price_keeps_the_cost_unknown(http, nc, script):
    await publish(nc, [script.requested(), script.usage(None, tokens=1000)])

    async def tokens_counted():
        mission = (await http.get(f"/missions/{script.mission_id}")).json()
        return mission if mission.get("tokens_in") == 1000 else None

    mission = await eventually(tokens_counted, what="usage to be folded")
    assert mission["cost_usd"] is None
    assert mission["cost_complete"] is False


async def test_a_catch_up_in_runs_folds_each_event_once_around_one_postgres_refuses(
    http, nc, gateway_server
):
    """Published while the gateway is down, more events than one catch-up run holds, one
    of them refused by PostgreSQL: the run with it is folded again event by event, so the
    others are folded once and the refused one is recorded, as when folded live."""
    url = gateway_server.settings.database_url
    await gateway_server.stop()
    scripts = [Script(new_mission_id()) for _ in range(CATCH_UP_RUN // 2 + 5)]
    good = [e for s in scripts for e in (s.requested(), s.prepared())]
    bad = Script(new_mission_id())
    middle = len(good) // 2
    events = [*good[:middle], bad.requested(repository="/repos/a\x00b"), *good[middle:]]
    assert len(events) > CATCH_UP_RUN
    seqs = await publish(nc, events)
    await gateway_server.start()
    async with gateway_server.client() as client:
        await folded(client, bad.mission_id, "requested")
        for s in (scripts[0], scripts[-1]):
            await folded(client, s.mission_id, "preparing")
    assert await scalar(url, "SELECT count(*) FROM events") == len(events)
    assert await scalar(url, "SELECT count(DISTINCT event_id) FROM events") == len(events)
    assert await scalar(url, "SELECT count(*) FROM projection_failures") == 1
    assert await scalar(url, "SELECT last_seq FROM projection_position") == seqs[-1]
