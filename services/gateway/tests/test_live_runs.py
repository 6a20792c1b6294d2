"""The live consumers fold the deliveries that wait while a fold is in flight together,
in one transaction (``adapters.batches``); the rows must be the ones folding each
delivery alone makes, row for row, whatever the runs, a poison event inside a run, or
a fold cut short and delivered again.

Random histories (``test_catch_up_runs``) are published on real NATS and folded into
real PostgreSQL one message at a time, then through the batcher as the consumers hand
it their deliveries.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    EventPublisher,
    decode,
    ensure_streams,
)
from aether_gateway.adapters.batches import Batcher, InOrder
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.adapters.stream import Incoming, StoredMessage, read_stored
from aether_gateway.handlers import Projector
from aether_runtime import Delivery

from .conftest import T0, Script
from .test_catch_up_runs import dump, history, one_by_one, publish, read_model

__all__ = ["read_model"]  # the fixture, shared with the catch-up's tests

SAMPLES = Path(__file__).parents[3] / "libs" / "events" / "tests" / "samples" / "v1"


def _live(messages: list[StoredMessage]) -> list[Incoming]:
    return [Incoming.of_message(message) for message in messages]


async def _through(batcher: Batcher[Incoming], items: list[Incoming], seed: int) -> None:
    """Hand ``items`` over as deliveries arrive: in bursts of random sizes, each burst
    handed over while the runs before it may still be in flight."""
    rng = random.Random(seed)
    waiting: list[asyncio.Future[None]] = []
    start = 0
    while start < len(items):
        length = rng.choice([1, 1, 3, 10, 70])
        waiting.extend(batcher.submit(item) for item in items[start : start + length])
        start += length
        for _ in range(rng.randrange(0, 40)):
            await asyncio.sleep(0)
    await asyncio.gather(*waiting)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_live_runs_fold_into_the_rows_folding_one_by_one_makes(
    nc: NatsClient, read_model: ReadModel, seed: int
) -> None:
    await publish(nc, history(seed), seed)
    messages = await read_stored(nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS)
    db = read_model.db
    await one_by_one(read_model, messages)
    expected = await dump(db, read_model.consumer)
    assert expected["projection_failures"]  # the refused text and the garbage

    await read_model.reset()
    batcher: Batcher[Incoming] = Batcher(read_model.take_items, name="test")
    await _through(batcher, _live(messages), seed)
    assert await dump(db, read_model.consumer) == expected
    # Runs formed (fewer transactions than events), and a lone event went alone.
    assert batcher.items == len(messages)
    assert batcher.runs < len(messages) / 2


@pytest.mark.parametrize("seed", [6, 7])
async def test_a_run_cut_short_and_delivered_again_folds_every_event_once(
    nc: NatsClient, read_model: ReadModel, seed: int
) -> None:
    """A process killed mid-run: its transaction is rolled back, the messages were
    never acknowledged, and JetStream delivers all of them again."""
    await publish(nc, history(seed, missions=8), seed)
    messages = await read_stored(nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS)
    db = read_model.db
    await one_by_one(read_model, messages)
    expected = await dump(db, read_model.consumer)
    rng = random.Random(seed)
    for _ in range(3):
        await read_model.reset()
        batcher: Batcher[Incoming] = Batcher(read_model.take_items, name="test")
        waiting = [batcher.submit(item) for item in _live(messages)]
        for _ in range(rng.randrange(1, 300)):
            await asyncio.sleep(0)
        # Cut wherever it is (a run in flight is rolled back); no handler was answered
        # for what had not committed.
        await batcher.close()
        assert all(done.done() for done in waiting)
        # Some runs may have committed before the stop: delivered again, all of it.
        again: Batcher[Incoming] = Batcher(read_model.take_items, name="test")
        await _through(again, _live(messages), seed)
        assert await dump(db, read_model.consumer) == expected


async def test_a_poison_event_inside_a_run_is_recorded_and_the_rest_folded(
    read_model: ReadModel, script: Script
) -> None:
    events = [*script.happy_path()]
    # PostgreSQL refuses a NUL in text: the message of the mission's chat.
    poison_at = 3
    posted = {
        **json.loads((SAMPLES / "mission_message_posted.json").read_text()),
        "mission_id": script.mission_id,
        "event_id": uuid.uuid4().hex,
        "occurred_at": (T0 + timedelta(seconds=2)).isoformat(),
        "text": "a\x00b",
    }
    events.insert(poison_at, decode(json.dumps(posted).encode()))
    items = [Incoming.of_event(event, seq) for seq, event in enumerate(events, start=1)]

    for item in items:
        await read_model.take(item)
    expected = await dump(read_model.db, read_model.consumer)
    await read_model.reset()

    # Everything waiting at once: one run, the poison inside it.
    batcher: Batcher[Incoming] = Batcher(read_model.take_items, name="test")
    await asyncio.gather(*[batcher.submit(item) for item in items])
    assert batcher.runs == 1
    rows = await dump(read_model.db, read_model.consumer)
    assert rows == expected
    assert rows["position"] == [str(len(items))]
    failures = await read_model.failures(script.mission_id)
    assert [f.seq for f in failures] == [poison_at + 1]
    assert rows["missions"] and '"status": "completed"' in rows["missions"][0]


async def test_handlers_release_their_message_and_return_once_folded(
    read_model: ReadModel, script: Script
) -> None:
    """The consumer's handler hands its event over and releases the message at once
    (so the next is delivered while it is folded), and returns once it is committed."""
    projector = Projector(read_model)
    released: list[int] = []
    handlers = []
    for seq, event in enumerate(script.happy_path(), start=1):
        delivery = Delivery(
            sequence=seq, num_delivered=1, pending=0, _release=lambda s=seq: released.append(s)
        )
        handlers.append(asyncio.create_task(projector.on_event(event, delivery)))
    await asyncio.gather(*handlers)
    assert released == list(range(1, len(handlers) + 1))
    assert await read_model.position() == len(handlers)
    assert projector.runs.runs < len(handlers)
    async with read_model.db.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM missions WHERE id = %s", (script.mission_id,))
        row = await cur.fetchone()
    assert row == ("completed",)
    await projector.close()


def _telemetry(rng: random.Random, mission_id: str, n: int) -> list[bytes]:
    samples = {
        tag: json.loads((SAMPLES / f"{tag}.json").read_text())
        for tag in ("agent_progress", "agent_heartbeat", "transcript_recorded")
    }
    payloads: list[bytes] = []
    for i in range(n):
        data: dict[str, Any] = json.loads(json.dumps(samples[rng.choice(sorted(samples))]))
        data.update(
            mission_id=mission_id,
            event_id=uuid.uuid4().hex,
            task_id=rng.choice(["t1", "t2"]),
            attempt=rng.randint(1, 2),
            occurred_at=(T0 + timedelta(seconds=rng.randint(0, 50))).isoformat(),
        )
        if data["type"] == "transcript_recorded":
            data["sequence"] = i
        if data["type"] == "agent_progress":
            data["turns"] = rng.randint(1, 9)
            data["usage"]["input_tokens"] = rng.randint(0, 5000)
        payloads.append(json.dumps(data).encode())
    return payloads


async def _telemetry_rows(read_model: ReadModel) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    async with read_model.db.pool.connection() as conn:
        for table in ("agent_sessions", "transcript_entries", "projection_failures"):
            cur = await conn.execute(
                f"SELECT (to_jsonb(t) - 'failed_at' - 'stored_at')::text AS r"
                f" FROM {table} t ORDER BY r"
            )
            rows[table] = [str(row[0]) for row in await cur.fetchall()]
    rows["position"] = [str(await read_model.telemetry_position())]
    return rows


async def _forget_telemetry(read_model: ReadModel) -> None:
    await read_model.reset()
    async with read_model.db.pool.connection() as conn:
        await conn.execute("DELETE FROM transcript_entries")


@pytest.mark.parametrize("seed", [1, 2])
async def test_telemetry_runs_fold_into_the_rows_folding_one_by_one_makes(
    nc: NatsClient, read_model: ReadModel, seed: int
) -> None:
    rng = random.Random(seed)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    for payload in _telemetry(rng, f"m-{uuid.uuid4().hex[:16]}", 150):
        await publisher.publish(decode(payload))
    messages = await read_stored(js, TELEMETRY_STREAM, ALL_TELEMETRY)
    items = _live(messages)
    assert all(item.event is not None for item in items)

    for item in items:
        assert item.event is not None
        await read_model.apply_telemetry(item.event, item.seq)
    expected = await _telemetry_rows(read_model)
    assert expected["agent_sessions"] and expected["transcript_entries"]
    assert expected["position"] == [str(messages[-1].seq)]

    await _forget_telemetry(read_model)
    batcher: Batcher[Incoming] = Batcher(read_model.take_telemetry, name="test")
    await _through(batcher, items, seed)
    assert await _telemetry_rows(read_model) == expected
    assert batcher.runs < len(items) / 2

    # Delivered again (a redelivery after a kill): nothing adds up twice.
    again: Batcher[Incoming] = Batcher(read_model.take_telemetry, name="test")
    await _through(again, items, seed + 1)
    assert await _telemetry_rows(read_model) == expected


async def test_an_event_below_the_position_leaves_nothing_behind(
    read_model: ReadModel, script: Script
) -> None:
    """The one-event path sends the event's record with the position's lock; an event
    the position has passed (here one it jumped over) must leave no row."""
    requested, prepared, plan = script.requested(), script.prepared(), script.plan()
    assert await read_model.apply(requested, 1)
    assert await read_model.apply(plan, 3)  # the position jumps over 2: a gap
    assert await read_model.gaps() == [(2, 2)]
    assert not await read_model.apply(prepared, 2)
    assert not await read_model.apply(plan, 3)  # delivered again
    async with read_model.db.pool.connection() as conn:
        cur = await conn.execute("SELECT seq FROM events ORDER BY seq")
        assert [row[0] for row in await cur.fetchall()] == [1, 3]
        cur = await conn.execute("SELECT count(*) FROM plans")
        assert await cur.fetchone() == (1,)
    assert await read_model.position() == 3


async def test_two_replicas_sharing_the_consumer_fold_in_stream_order(
    nc: NatsClient, read_model: ReadModel
) -> None:
    """The server hands the messages in flight to whichever replica asks: each replica
    gets stretches of the stream, and the two fold them, concurrently, into the rows
    one process folding in order makes, with no gap left for the watch to repair."""
    seed = 8
    await publish(nc, history(seed, missions=6, per_mission=20), seed)
    messages = await read_stored(nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS)
    db = read_model.db
    await one_by_one(read_model, messages)
    expected = await dump(db, read_model.consumer)
    assert expected["projection_gaps"] == []

    await read_model.reset()
    other = ReadModel(db, read_model.consumer)  # the second replica's, on one database
    replicas = [
        Batcher(InOrder(model.take_items, model.position, grace=60.0), name=f"replica-{n}")
        for n, model in enumerate((read_model, other))
    ]
    rng = random.Random(seed)
    waiting: list[asyncio.Future[None]] = []
    start = 0
    while start < len(messages):
        length = rng.randint(1, 6)
        replica = replicas[rng.randrange(2)]
        waiting.extend(replica.submit(item) for item in _live(messages[start : start + length]))
        start += length
        for _ in range(rng.randrange(0, 5)):
            await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert await dump(db, read_model.consumer) == expected


async def test_both_streams_fold_in_one_run_with_the_telemetry_first(
    read_model: ReadModel, script: Script
) -> None:
    """A mission's events and its agent's transcript, delivered interleaved, share one
    run: its telemetry is folded before its mission events (so `aether mission logs -f`,
    which stops at the mission's end, finds every entry delivered before it)."""
    projector = Projector(read_model)
    order: list[str] = []
    missions, telemetry = projector._missions, projector._telemetry

    async def fold_missions(items: list[Incoming]) -> None:
        order.append("missions")
        await missions(items)

    async def fold_telemetry(items: list[Incoming]) -> None:
        order.append("telemetry")
        await telemetry(items)

    projector._missions, projector._telemetry = fold_missions, fold_telemetry  # type: ignore[assignment]
    entries = [
        decode(payload)
        for payload in _telemetry(random.Random(3), script.mission_id, 6)
        if b"transcript_recorded" in payload
    ]
    assert entries
    events = script.happy_path()
    handlers = []
    for seq, event in enumerate(events, start=1):
        delivery = Delivery(sequence=seq, num_delivered=1, pending=0, _release=lambda: None)
        handlers.append(asyncio.create_task(projector.on_event(event, delivery)))
        if seq <= len(entries):
            entry = Delivery(sequence=seq, num_delivered=1, pending=0, _release=lambda: None)
            handlers.append(asyncio.create_task(projector.on_telemetry(entries[seq - 1], entry)))
    await asyncio.gather(*handlers)
    assert projector.runs.runs == 1
    assert order == ["telemetry", "missions"]
    assert await read_model.position() == len(events)
    assert await read_model.telemetry_position() == len(entries)
    async with read_model.db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM transcript_entries WHERE mission_id = %s", (script.mission_id,)
        )
        assert await cur.fetchone() == (len(entries),)
        cur = await conn.execute("SELECT status FROM missions WHERE id = %s", (script.mission_id,))
        assert await cur.fetchone() == ("completed",)
    await projector.close()


async def test_a_wait_for_the_next_fold_ends_when_a_run_is_folded(
    read_model: ReadModel, script: Script
) -> None:
    """A query behind the read model waits on ``next_fold``: it ends once the next run is
    committed, not at the end of its time; with nothing folded it waits its time out."""
    projector = Projector(read_model)
    waiting = asyncio.create_task(projector.next_fold(60.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    delivery = Delivery(sequence=1, num_delivered=1, pending=0, _release=lambda: None)
    await projector.on_event(script.requested(), delivery)
    await asyncio.wait_for(waiting, 10.0)
    assert await read_model.position() == 1

    quiet = asyncio.create_task(projector.next_fold(0.05))
    await asyncio.wait_for(quiet, 10.0)  # nothing folded: it returns on its own time
    await projector.close()


async def test_a_hurried_projector_folds_what_waits_for_its_run(
    read_model: ReadModel, script: Script
) -> None:
    """Runs spaced apart leave an event waiting for its run; a query waiting on the read
    model hurries the projector, and the event is folded at once."""
    projector = Projector(read_model, spacing=60.0)
    events = script.happy_path()[:2]
    first = Delivery(sequence=1, num_delivered=1, pending=0, _release=lambda: None)
    await projector.on_event(events[0], first)  # folded at once: nothing before it
    second = Delivery(sequence=2, num_delivered=1, pending=0, _release=lambda: None)
    folding = asyncio.create_task(projector.on_event(events[1], second))
    await asyncio.sleep(0.01)
    assert not folding.done() and await read_model.position() == 1
    projector.hurry()
    await asyncio.wait_for(folding, 10.0)
    assert await read_model.position() == 2
    await projector.close()
