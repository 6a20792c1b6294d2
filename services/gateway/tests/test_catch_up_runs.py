"""The catch-up folds runs of events in memory and writes each run with a few statements;
the read model it builds must be the one folding event by event builds, row for row.

Random histories (every mission event type of the catalogue, from its stored sample,
with random tasks, attempts, plan versions, costs and budgets, interleaved across
missions, attempts' results now and then carrying their start and usage (one of them
published alone before too), with a payload PostgreSQL refuses, one that does not
decode and an event republished under a new sequence) are published on real NATS and
folded into real PostgreSQL three ways: one event at a time (the live path), in runs of
random lengths, and by the start-up catch-up. An interrupted catch-up, resumed, must
land on the same rows too: its position is committed with each run's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    TELEMETRY_TYPES,
    EventPublisher,
    decode,
    ensure_streams,
    new_mission_id,
    tag_of,
)
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.read_model import DERIVED_TABLES, ReadModel
from aether_gateway.adapters.stream import Incoming, StoredMessage, read_stored
from aether_gateway.handlers import Projector

from .conftest import T0

SAMPLES = Path(__file__).parents[3] / "libs" / "events" / "tests" / "samples"
TASKS = ("t1", "t2", "t3", "t4")
_TELEMETRY_TAGS = {tag_of(cls) for cls in TELEMETRY_TYPES}


def _templates() -> dict[str, dict[str, Any]]:
    """The newest stored sample of every mission event type."""
    found: dict[str, dict[str, Any]] = {}
    for version in sorted(SAMPLES.iterdir(), key=lambda p: [int(n) for n in p.name[1:].split(".")]):
        for path in version.glob("*.json"):
            found[path.stem] = json.loads(path.read_text())
    return {tag: sample for tag, sample in found.items() if tag not in _TELEMETRY_TAGS}


TEMPLATES = _templates()


def _planned(rng: random.Random, task_id: str) -> dict[str, Any]:
    planned = dict(TEMPLATES["task_ready"]["task"])
    planned.update(id=task_id, title=f"Task {task_id} {rng.randint(0, 9)}", files=[task_id])
    return planned


def _event(rng: random.Random, tag: str, mission_id: str, at: int) -> dict[str, Any]:
    data = json.loads(json.dumps(TEMPLATES[tag]))
    data.update(
        mission_id=mission_id,
        event_id=uuid.uuid4().hex,
        occurred_at=(T0 + timedelta(seconds=at)).isoformat(),
    )
    if "task_id" in data:
        data["task_id"] = rng.choice(TASKS)
    if "task" in data:
        data["task"] = _planned(rng, rng.choice(TASKS))
    if "attempt" in data:
        data["attempt"] = rng.randint(1, 3)
    if "version" in data:
        data["version"] = rng.randint(1, 3)
    if "wave" in data:
        data["wave"] = rng.randint(0, 2)
    if "task_ids" in data:
        data["task_ids"] = rng.sample(TASKS, rng.randint(1, len(TASKS)))
    if tag == "plan_produced":
        data["tasks"] = [_planned(rng, t) for t in rng.sample(TASKS, rng.randint(1, 3))]
    if "usage" in data:
        data["usage"]["cost_usd"] = rng.choice([None, 0.1, 0.2, 1 / 3, 2.5])
        data["usage"]["input_tokens"] = rng.randint(0, 5000)
    if "scope" in data:
        data["scope"] = rng.choice(["mission", "daily:2026-01-01"])
    if tag == "budget_raised":
        data["budget_usd"] = rng.choice([1.0, 10.0])
    if "carried" in data:
        data["carried"] = _carried(rng, data, at)
    return data


def _carried(rng: random.Random, carrier: dict[str, Any], at: int) -> list[dict[str, Any]]:
    """Half the time, the events ``carrier`` carries (an attempt's result: the sample's
    start and usage, made its attempt's own; a task_ready: the sample's waves, made its
    mission's own); otherwise none."""
    if rng.random() < 0.5:
        return []
    carried = []
    for n, sample in enumerate(carrier["carried"]):
        event = json.loads(json.dumps(sample))
        event.update(
            mission_id=carrier["mission_id"],
            event_id=uuid.uuid4().hex,
            occurred_at=(T0 + timedelta(seconds=at - 0.5 + n * 0.1)).isoformat(),
        )
        if "task_id" in event:
            event.update(task_id=carrier["task_id"], attempt=carrier["attempt"])
        if "wave" in event:
            event["wave"] = rng.randint(0, 2)
        if "usage" in event:
            event["usage"]["cost_usd"] = rng.choice([None, 0.1, 1 / 3])
            event["usage"]["input_tokens"] = rng.randint(0, 5000)
        carried.append(event)
    return carried


def history(seed: int, missions: int = 12, per_mission: int = 30) -> list[bytes]:
    """Stored payloads of ``missions`` random missions, interleaved at random."""
    rng = random.Random(seed)
    tags = sorted(TEMPLATES)
    weights = [8 if t in ("task_ready", "agent_started", "agent_completed") else 2 for t in tags]
    lanes: list[list[bytes]] = []
    at = 0
    for n in range(missions):
        mission_id = new_mission_id()
        lane: list[dict[str, Any]] = []
        if n % 6 != 5:  # now and then a mission whose request is not on the stream
            lane.append(_event(rng, "mission_requested", mission_id, at))
        lane.append(_event(rng, "plan_produced", mission_id, at + 1))
        for tag in rng.choices(tags, weights, k=per_mission):
            at += 1
            event = _event(rng, tag, mission_id, at)
            if event.get("carried") and rng.random() < 0.3:
                lane.append(event["carried"][0])  # published alone too: folded once
            lane.append(event)
        lanes.append([json.dumps(event).encode() for event in lane])
    stream: list[bytes] = []
    while any(lanes):
        lane = rng.choice([lane for lane in lanes if lane])
        stream.append(lane.pop(0))
    return stream


async def publish(nc: NatsClient, payloads: list[bytes], seed: int) -> None:
    """Publish the history, with three oddities placed at random: a text PostgreSQL
    refuses, a payload that does not decode, and an event stored a second time."""
    rng = random.Random(seed)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    refused = json.loads(payloads[rng.randrange(len(payloads))])
    nul = {
        **TEMPLATES["mission_message_posted"],
        "mission_id": refused["mission_id"],
        "event_id": uuid.uuid4().hex,
        "text": "a\x00b",
    }
    spots = {rng.randrange(len(payloads)): kind for kind in ("nul", "garbage", "again")}
    for i, payload in enumerate(payloads):
        await publisher.publish(decode(payload))
        kind = spots.get(i)
        if kind == "nul":
            await publisher.publish(decode(json.dumps(nul).encode()))
        elif kind == "garbage":
            event = json.loads(payload)
            subject = f"aether.mission.{event['mission_id']}.mission_message_posted"
            await js.publish(subject, b'{"type": "mission_message_posted", "text": 5}')
        elif kind == "again":
            event = decode(payloads[rng.randrange(i + 1)])
            subject = f"aether.mission.{event.mission_id}.{tag_of(type(event))}"
            # Another message id: stored again, under a new sequence (the duplicate
            # window passed), which the read model must not fold twice.
            await js.publish(subject, payloads[i], headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def dump(db: Database, consumer: str) -> dict[str, list[str]]:
    """Every derived row (less the times a failure or a gap was noticed), and the
    position."""
    rows: dict[str, list[str]] = {}
    async with db.pool.connection() as conn:
        for table in DERIVED_TABLES:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT (to_jsonb(t) - 'failed_at' - 'found_at')::text AS r"
                    " FROM {} t ORDER BY r"
                ).format(sql.Identifier(table))
            )
            rows[table] = [str(row[0]) for row in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT last_seq FROM projection_position WHERE consumer = %s", (consumer,)
        )
        row = await cur.fetchone()
        rows["position"] = [str(row[0] if row else 0)]
    return rows


@pytest.fixture
async def read_model(gateway_db: str) -> AsyncIterator[ReadModel]:
    db = Database(gateway_db)
    await db.open()
    await db.migrate()
    try:
        yield ReadModel(db, "gateway")
    finally:
        await db.close()


async def one_by_one(read_model: ReadModel, messages: list[StoredMessage]) -> None:
    for message in messages:
        await read_model.take(Incoming.of_message(message))


async def in_runs(read_model: ReadModel, messages: list[StoredMessage], seed: int) -> None:
    rng = random.Random(seed)
    start = 0
    while start < len(messages):
        length = rng.choice([1, 2, 7, 50, 400])
        await read_model.take_run(messages[start : start + length])
        start += length


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.slow
async def test_runs_fold_into_the_rows_folding_one_by_one_makes(
    nc: NatsClient, read_model: ReadModel, seed: int
) -> None:
    await publish(nc, history(seed), seed)
    js = nc.jetstream()
    messages = await read_stored(js, MISSIONS_STREAM, ALL_MISSION_EVENTS)
    db = read_model.db

    await one_by_one(read_model, messages)
    expected = await dump(db, read_model.consumer)
    assert expected["position"] == [str(messages[-1].seq)]
    assert len(expected["missions"]) >= 8
    assert len(expected["tasks"]) >= 8
    assert expected["projection_failures"]  # the refused text and the garbage
    assert expected["usage_records"] and expected["agent_sessions"]
    # Events results carried, each a row of its own before its result.
    assert any('"part": -1' in row for row in expected["events"])
    assert any('"part": -1' in row for row in expected["usage_records"])

    await read_model.reset()
    await in_runs(read_model, messages, seed)
    assert await dump(db, read_model.consumer) == expected

    await read_model.reset()
    await Projector(read_model).rebuild(js)
    assert await dump(db, read_model.consumer) == expected

    # An administrator's rebuild (or one for a stream that is not the folded one)
    # replaces the rows in one transaction, with the same runs.
    await read_model.reset()
    await in_runs(read_model, messages[: len(messages) // 2], seed)
    await Projector(read_model).rebuild_all(js)
    assert await dump(db, read_model.consumer) == expected


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.slow
async def test_an_interrupted_catch_up_resumed_folds_every_event_once(
    nc: NatsClient, read_model: ReadModel, seed: int
) -> None:
    await publish(nc, history(seed, missions=20), seed)
    js = nc.jetstream()
    messages = await read_stored(js, MISSIONS_STREAM, ALL_MISSION_EVENTS)
    db = read_model.db
    await one_by_one(read_model, messages)
    expected = await dump(db, read_model.consumer)
    rng = random.Random(seed)

    # Stopped after a run at a random place, then started again.
    await read_model.reset()
    await in_runs(read_model, messages[: rng.randrange(1, len(messages))], seed)
    await Projector(read_model).rebuild(js)
    assert await dump(db, read_model.consumer) == expected

    # Cancelled at a random point inside the catch-up (mid-run: that run's transaction
    # is rolled back), then started again.
    for _ in range(3):
        steps = rng.randrange(1, 400)
        while True:
            await read_model.reset()
            catch_up = asyncio.create_task(Projector(read_model).rebuild(js))
            for _ in range(steps):
                await asyncio.sleep(0)
            if not catch_up.done():
                break
            # The whole catch-up fit in those steps (a fast fold): cut it sooner.
            await catch_up
            steps = max(1, steps // 2)
        catch_up.cancel()
        # Python 3.11 loses a cancellation that meets a wait inside the database driver
        # just as that wait ends (``asyncio.wait_for``): the catch-up then runs to its
        # end, and the rows below must be the same all the same.
        with contextlib.suppress(asyncio.CancelledError):
            await catch_up
        # The connection the cut run held is back in the pool (closed and replaced),
        # or this would wait for it forever.
        await Projector(read_model).rebuild(js)
        assert await dump(db, read_model.consumer) == expected


@pytest.mark.slow
async def test_a_refused_event_in_a_run_is_found_by_halves_not_by_folding_the_run_alone(
    nc: NatsClient, read_model: ReadModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    await publish(nc, history(6), 6)
    messages = await read_stored(nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS)
    await one_by_one(read_model, messages)
    expected = await dump(read_model.db, read_model.consumer)
    await read_model.reset()

    alone: list[int] = []
    take = read_model.take

    async def counted(item: Incoming) -> bool:
        alone.append(item.seq)
        return await take(item)

    monkeypatch.setattr(read_model, "take", counted)
    await read_model.take_run(messages)
    assert await dump(read_model.db, read_model.consumer) == expected
    # Alone: the payload that does not decode (between the runs around it) and the event
    # PostgreSQL refuses, found by folding halves of its run as runs; folding the run's
    # other events alone too took hundreds of transactions.
    assert len(alone) == 2, alone


class Electing:
    """The JetStream API of a cluster electing leaders (a server of it just back): every
    other request goes unanswered (a timeout) before the server answers it, so each
    request of a catch-up meets a silence once, then is answered when asked again."""

    ASKED = ("stream_info", "add_consumer", "consumer_info", "get_msg")

    def __init__(self, js: Any) -> None:
        self._js = js
        self.unanswered = 0
        self._requests = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._js, name)
        if name not in self.ASKED:
            return real

        async def request(*args: Any, **kwargs: Any) -> Any:
            self._requests += 1
            if self._requests % 2:
                self.unanswered += 1
                raise nats.errors.TimeoutError
            return await real(*args, **kwargs)

        return request


async def test_a_start_up_catch_up_asks_again_through_a_cluster_electing_leaders(
    nc: NatsClient, read_model: ReadModel
) -> None:
    """A gateway starting while its cluster elects leaders (the three-node test saw its
    telemetry read fail the start) folds the same rows: from nothing, and from half-way
    (where it first checks the event it folded last is still on the stream)."""
    seed = 6
    await publish(nc, history(seed, missions=4), seed)
    js = nc.jetstream()
    messages = await read_stored(js, MISSIONS_STREAM, ALL_MISSION_EVENTS)
    await one_by_one(read_model, messages)
    expected = await dump(read_model.db, read_model.consumer)

    for folded_before in (0, len(messages) // 2):
        await read_model.reset()
        await in_runs(read_model, messages[:folded_before], seed)
        electing = Electing(js)
        last = await Projector(read_model).rebuild(electing)
        assert last == messages[-1].seq
        assert await dump(read_model.db, read_model.consumer) == expected
        # Each of its requests met the silence once: the stream's end and the last
        # folded event (half-way), the reads of both streams.
        assert electing.unanswered >= (4 if folded_before else 3)
