"""An attempt's result that carries the attempt's start and usage (``carried_by``): the
gateway folds, stores, lists and streams each carried event as if it had come alone on
the bus right before the result, and an event that came alone as well counts once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from msgspec.structs import replace
from nats.aio.client import Client as NatsClient

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    AgentStarted,
    Event,
    EventPublisher,
    Usage,
    UsageRecorded,
    ensure_streams,
    new_mission_id,
)
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.adapters.stream import Incoming, read_stored
from aether_gateway.handlers import Projector

from .conftest import Script, eventually
from .test_sse import collect, messages, read_events

ALONE_TYPES = [
    "mission_requested",
    "repository_prepared",
    "plan_produced",
    "plan_approved",
    "task_ready",
    "agent_started",
    "usage_recorded",
    "agent_completed",
    "branch_merged",
    "mission_completed",
]


def attempt(script: Script, *, carried: bool) -> list[Event]:
    """Task t1's first attempt: its start, one model call and its result, each published
    alone or carried by the result (the same events, ids and times either way)."""
    started = AgentStarted(
        **script.meta(),  # type: ignore[arg-type]
        task_id="t1",
        attempt=1,
        runner_id="runner-7",
        model="claude-test",
        sandbox="bubblewrap",
    )
    usage = UsageRecorded(
        **script.meta(),  # type: ignore[arg-type]
        service="agent-runner",
        model="claude-test",
        usage=Usage(input_tokens=1200, output_tokens=300, cost_usd=0.25),
        step="agent:t1:a1:turn1",
        task_id="t1",
        attempt=1,
    )
    result = script.agent_completed("t1")
    if not carried:
        return [started, usage, result]
    return [replace(result, carried=[started, usage])]


def mission(script: Script, *, carried: bool) -> list[Event]:
    """A one-task mission from its request to its completion."""
    return [
        script.requested(),
        script.prepared(),
        script.plan(task_ids=("t1",)),
        script.approved(),
        script.task_ready("t1"),
        *attempt(script, carried=carried),
        script.merged("t1"),
        script.completed(),
    ]


async def publish(nc: NatsClient, events: list[Event]) -> list[int]:
    acks = await EventPublisher(nc.jetstream()).publish_all(events)
    return [ack.seq for ack in acks]


def same_mission(value: Any, script: Script) -> Any:
    """``value`` (JSON) with the mission's own ids replaced, to compare two missions."""
    text = json.dumps(value)
    for own in (script.mission_id, script.correlation_id):
        text = text.replace(own, "<own>")
    return json.loads(text)


async def completed(http: Any, mission_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        answer = await http.get(f"/missions/{mission_id}")
        body: dict[str, Any] = answer.json()
        return body if answer.status_code == 200 and body["status"] == "completed" else None

    return await eventually(probe, what=f"mission {mission_id} to complete")


# --- the read model ------------------------------------------------------------------


async def test_a_carried_start_and_usage_fold_as_the_three_published_alone(http, nc):
    alone, carried = Script(new_mission_id()), Script(new_mission_id())
    await publish(nc, mission(alone, carried=False))
    await publish(nc, mission(carried, carried=True))

    shown = [await completed(http, s.mission_id) for s in (alone, carried)]
    assert same_mission(shown[0], alone) == same_mission(shown[1], carried)
    [task] = shown[1]["tasks"]
    assert task["status"] == "merged"
    assert task["runner_id"] == "runner-7"
    assert task["started_at"] == "2026-01-01T12:00:06Z"  # the start's own time
    assert (task["tokens_in"], task["tokens_out"], task["cost_usd"]) == (1200, 300, 0.25)
    assert task["agent"]["runner_id"] == "runner-7"
    assert task["agent"]["status"] == "completed"
    assert task["agent"]["cost_usd"] == 0.25
    assert (shown[1]["tokens_in"], shown[1]["cost_usd"]) == (1200, 0.25)

    usage = [(await http.get(f"/missions/{s.mission_id}/usage")).json() for s in (alone, carried)]
    assert same_mission(usage[0], alone) == same_mission(usage[1], carried)
    assert [(r["key"], r["calls"], r["cost_usd"]) for r in usage[1]["by_model"]] == [
        ("claude-test", 1, 0.25)
    ]
    by_mission = (await http.get("/usage", params={"group_by": "mission"})).json()["rows"]
    assert {r["key"]: r["calls"] for r in by_mission} == {
        alone.mission_id: 1,
        carried.mission_id: 1,
    }
    agents = (await http.get("/agents")).json()["agents"]
    assert [(a["runner_id"], a["sessions"], a["completed"]) for a in agents] == [("runner-7", 2, 2)]


def with_duplicates(script: Script) -> list[tuple[Event, str]]:
    """The mission, its result carrying the attempt's start and usage, which were also
    published alone: the start before the result (a resumed attempt), the usage after it
    under a new message id (the stream's duplicate window passed). Each event with the
    message id it is published under."""
    events = mission(script, carried=True)
    result = events[5]
    started, usage = result.carried  # type: ignore[attr-defined]
    stored = [*events[:5], started, result, usage, *events[6:]]
    return [(e, uuid.uuid4().hex if e is usage else e.event_id) for e in stored]


async def facts(db: Database, mission_id: str) -> dict[str, Any]:
    """What the read model holds about the mission, less its ids and sequences."""
    queries = {
        "events": "SELECT type, occurred_at FROM events WHERE mission_id = %s ORDER BY seq, part",
        "mission": "SELECT status, tokens_in, tokens_out, tokens_cache_read, cost_usd,"
        " cost_complete, updated_at FROM missions WHERE id = %s",
        "tasks": "SELECT status, attempt, model, runner_id, started_at, finished_at, tokens_in,"
        " tokens_out, cost_usd, cost_complete, updated_at FROM tasks WHERE mission_id = %s",
        "usage": "SELECT task_id, attempt, model, step, input_tokens, output_tokens, cost_usd,"
        " occurred_at FROM usage_records WHERE mission_id = %s ORDER BY seq, part",
        "sessions": "SELECT task_id, attempt, runner_id, model, status, started_at,"
        " finished_at, last_seen_at, tokens_in, tokens_out, cost_usd, cost_complete"
        " FROM agent_sessions WHERE mission_id = %s",
    }
    found: dict[str, Any] = {}
    async with db.pool.connection() as conn:
        for name, query in queries.items():
            found[name] = await (await conn.execute(query, (mission_id,))).fetchall()
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE mission_id = %s",
            (mission_id,),
        )
        found["ids"] = await cur.fetchone()
    return found


@pytest.fixture
async def read_model(gateway_db: str) -> AsyncIterator[ReadModel]:
    db = Database(gateway_db)
    await db.open()
    try:
        yield ReadModel(db, "gateway")
    finally:
        await db.close()


@pytest.mark.parametrize("path", ["one by one", "in a run", "catch-up"])
async def test_an_event_carried_and_published_alone_too_is_folded_once(
    nc: NatsClient, read_model: ReadModel, path: str
) -> None:
    alone, carried, twice = (Script(new_mission_id()) for _ in range(3))
    await ensure_streams(nc.jetstream())
    publisher = EventPublisher(nc.jetstream())
    await publish(nc, mission(alone, carried=False))
    await publish(nc, mission(carried, carried=True))
    published = with_duplicates(twice)
    for event, msg_id in published:
        await publisher.publish(event, headers={"Nats-Msg-Id": msg_id})
    js = nc.jetstream()
    stored = await read_stored(js, MISSIONS_STREAM, ALL_MISSION_EVENTS)
    assert len(stored) == 28  # the usage published again is on the stream: 10 + 8 + 10

    if path == "one by one":
        for message in stored:
            await read_model.take(Incoming.of_message(message))
    elif path == "in a run":
        assert await read_model.take_run(stored) == 30  # events, the carried ones too
    else:
        await Projector(read_model).rebuild(js)

    expected = await facts(read_model.db, alone.mission_id)
    assert [row[0] for row in expected["events"]] == ALONE_TYPES
    assert expected["ids"] == (10, 10)
    assert len(expected["usage"]) == 1
    assert await facts(read_model.db, carried.mission_id) == expected
    assert await facts(read_model.db, twice.mission_id) == expected
    # The last message's own event, not one a result carried.
    assert await read_model.last_folded() == (stored[-1].seq, published[-1][0].event_id)


# --- what clients read ---------------------------------------------------------------


async def test_the_history_lists_carried_events_as_their_own_before_the_result(http, nc, script):
    seqs = await publish(nc, mission(script, carried=True))
    result_seq = seqs[5]
    await completed(http, script.mission_id)
    history = (await http.get("/events", params={"mission_id": script.mission_id})).json()
    events = history["events"]
    assert [e["type"] for e in events] == ALONE_TYPES
    assert [e["seq"] for e in events[5:8]] == [result_seq] * 3
    started, usage, result = (e["data"] for e in events[5:8])
    assert started["type"] == "agent_started" and started["sandbox"] == "bubblewrap"
    assert usage["usage"]["input_tokens"] == 1200
    assert len({started["event_id"], usage["event_id"], result["event_id"]}) == 3
    assert started["occurred_at"] < usage["occurred_at"] < result["occurred_at"]
    assert result["carried"] == []  # the result as it would have come alone

    # A page does not end among a message's events: the next one would skip the rest.
    page = (
        await http.get(
            "/events",
            params={"mission_id": script.mission_id, "after": seqs[4], "limit": 1},
        )
    ).json()
    assert [e["type"] for e in page["events"]] == ALONE_TYPES[5:8]
    assert page["next_after"] == result_seq
    rest = (
        await http.get(
            "/events", params={"mission_id": script.mission_id, "after": page["next_after"]}
        )
    ).json()
    assert [e["type"] for e in rest["events"]] == ALONE_TYPES[8:]

    usage_only = (
        await http.get(
            "/events", params={"mission_id": script.mission_id, "type": "usage_recorded"}
        )
    ).json()["events"]
    assert [(e["seq"], e["data"]["event_id"]) for e in usage_only] == [
        (result_seq, usage["event_id"])
    ]
    starts = (await http.get("/events", params={"type": "agent_started"})).json()["events"]
    assert [e["data"]["runner_id"] for e in starts] == ["runner-7"]

    activity = (await http.get(f"/missions/{script.mission_id}/activity")).json()
    assert [e["type"] for e in activity["entries"]] == ["agent_started", "agent_completed"]


def sent(received: list[dict[str, str]]) -> list[tuple[str, str | None]]:
    """Each SSE message's event type and id (``None`` when it has none)."""
    return [(m["event"], m.get("id")) for m in received]


@pytest.mark.parametrize("ring_size", [10_000, 2])
async def test_sse_sends_carried_events_without_an_id_right_before_the_result(
    make_gateway, nc, script, ring_size
):
    # With a ring of 2, what a client resumes from comes from the read model.
    server = await make_gateway(sse_ring_size=ring_size)
    events = mission(script, carried=True)
    url = f"/missions/{script.mission_id}/events"
    async with server.client() as http:
        seqs = await publish(nc, events[:1])
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            stream = messages(response)
            await read_events(stream, 1)
            seqs += await publish(nc, events[1:])
            live = await read_events(stream, len(ALONE_TYPES) - 1)
        ids = [str(seq) for seq in seqs]
        result = ids[5]
        expected = [
            *zip(ALONE_TYPES[1:5], ids[1:5], strict=True),
            ("agent_started", None),
            ("usage_recorded", None),
            ("agent_completed", result),
            *zip(ALONE_TYPES[8:], ids[6:], strict=True),
        ]
        assert sent(live) == expected
        assert json.loads(live[4]["data"])["event_id"] == events[5].carried[0].event_id  # type: ignore[attr-defined]

        replayed = await asyncio.wait_for(collect(http, url, params={"until_terminal": "1"}), 20)
        assert sent(replayed) == [(ALONE_TYPES[0], ids[0]), *expected]
        assert [m["data"] for m in replayed[1:]] == [m["data"] for m in live]

        # Resumed from the event before the result: the carried events come again with it.
        resumed = await asyncio.wait_for(
            collect(http, url, params={"until_terminal": "1"}, headers={"Last-Event-ID": ids[4]}),
            20,
        )
        assert sent(resumed) == expected[4:]
        # Resumed from the result: none of its message again.
        after = await asyncio.wait_for(
            collect(http, url, params={"until_terminal": "1"}, headers={"Last-Event-ID": result}),
            20,
        )
        assert sent(after) == expected[7:]


async def test_a_type_filter_gets_carried_events_with_the_last_one_sent_taking_the_id(
    http, nc, script
):
    events = mission(script, carried=True)
    seqs = await publish(nc, events[:5])
    async with http.stream("GET", "/events/stream", params={"type": "usage_recorded"}) as live:
        assert live.status_code == 200
        stream = messages(live)
        carried_seq = (await publish(nc, events[5:]))[0]
        [usage] = await read_events(stream, 1)
    assert sent([usage]) == [("usage_recorded", str(carried_seq))]
    assert json.loads(usage["data"])["usage"]["cost_usd"] == 0.25

    # Replayed from the read model with the start asked for too: the usage, last of its
    # message sent, still has the id, and the start before it has none.
    await completed(http, script.mission_id)
    async with http.stream(
        "GET",
        "/events/stream",
        params={"type": "usage_recorded,agent_started"},
        headers={"Last-Event-ID": str(seqs[-1])},
    ) as response:
        replayed = await read_events(messages(response), 2)
    assert sent(replayed) == [("agent_started", None), ("usage_recorded", str(carried_seq))]
