"""A flood of transcript entries (an attempt's credential publishes what it likes, in
messages as large as the server takes) delays neither the gateway's answers nor its
mission fold beyond a bound: real gateway, NATS and PostgreSQL. The times measured are
printed (``-s``); ``bench/gateway_flood.py`` measures them with the gateway in its own
process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from aether_events import (
    TELEMETRY_STREAM,
    AgentStarted,
    EventPublisher,
    MissionMessagePosted,
    TranscriptEntries,
    TranscriptRecorded,
)
from aether_events.publisher import send_in_order
from aether_gateway.handlers import TELEMETRY_BACKLOG

from .conftest import GatewayServer, Script, eventually

# Fifty messages of four hundred entries (about 230 kB each, within the 256 kB an
# attempt may publish: a larger one is terminated unread): every one in flight at once
# (the consumer lets 256 be), twenty times the backlog the projector keeps.
MESSAGES = 50
PER_MESSAGE = 400
FLOOD = MESSAGES * PER_MESSAGE


def flood(script: Script, first: int = 0, count: int = FLOOD) -> list[TranscriptEntries]:
    entries = [
        TranscriptRecorded(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=1,
            runner_id="runner-1",
            sequence=n,
            kind="command",
            runtime="builtin",
            tool="run_command",
            arguments='{"command": "yes"}',
            result=f"line {n}\n" * 8,
            exit_code=0,
        )
        for n in range(first, first + count)
    ]
    return [
        TranscriptEntries(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=1,
            runner_id="runner-1",
            entries=entries[at : at + PER_MESSAGE],
        )
        for at in range(0, count, PER_MESSAGE)
    ]


async def stored_entries(server: GatewayServer, mission_id: str) -> int:
    assert server.gateway is not None
    async with server.gateway.db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM transcript_entries WHERE mission_id = %s", (mission_id,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_a_mission_event_after_a_flood_of_entries_is_folded_before_the_flood_is(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nc: Any, script: Script
) -> None:
    assert FLOOD > 10 * TELEMETRY_BACKLOG
    # Without the watch, which folds from the stream what the live fold holds up for
    # more than a look or two (every 2 s): the live fold's own bound is what is tested.
    gateway_server = await make_gateway(read_model_check_seconds=0)
    gateway = gateway_server.gateway
    assert gateway is not None
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(),
            AgentStarted(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                runner_id="runner-1",
                model="claude-test",
            ),
        ]
    )
    times: dict[str, list[float]] = {"/board/": [], "/healthz": []}
    flooding = True

    async def ask(http: Any) -> None:
        while flooding:
            for path, took in times.items():
                began = time.perf_counter()
                (await http.get(path)).raise_for_status()
                took.append(time.perf_counter() - began)
            await asyncio.sleep(0.02)

    async with gateway_server.client(timeout=60) as http:
        asking = asyncio.create_task(ask(http))
        try:
            await asyncio.gather(*await send_in_order(publisher, flood(script)))
            # Folding has begun: every message of the flood is delivered by now (the
            # consumer holds them all in flight unless the projector holds back).
            await eventually(
                lambda: stored_entries(gateway_server, script.mission_id),
                what="the flood's first run folded",
            )
            began = time.perf_counter()
            ack = await publisher.publish(
                MissionMessagePosted(**script.meta(), text="still there?")  # type: ignore[arg-type]
            )

            async def folded() -> bool:
                return await gateway.read_model.position() >= ack.seq

            await eventually(folded, what="the mission event folded", timeout=120)
            waited = time.perf_counter() - began
            stored = await stored_entries(gateway_server, script.mission_id)
            print(f"\nmission event folded after {waited:.2f} s, {stored} of {FLOOD} entries in")
            # It overtook the flood: behind it, at most the backlog and a message or two.
            # (Whether the telemetry consumer had been held back by then depends on how
            # much of the flood it had been handed: not asserted.)
            assert stored < FLOOD // 2
            print(f"telemetry deliveries held until folded: {gateway.projector.telemetry_held}")
        finally:
            flooding = False
            await asking
    for path, took in times.items():
        print(f"  {path} during the flood: {len(took)} asked, worst {max(took):.2f} s")
        # The answers do not wait for the fold (about 0.2 s at worst on a loaded
        # machine, docs/benchmarks.md): far from this.
        assert max(took) < 5.0


async def most_entries_in_one_transaction(server: GatewayServer, mission_id: str) -> int:
    """The most entries of the mission stored by one transaction (rows written by one
    share its id, ``xmin``)."""
    assert server.gateway is not None
    async with server.gateway.db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM transcript_entries"
            " WHERE mission_id = %s GROUP BY xmin::text) AS per_transaction",
            (mission_id,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_a_gateway_starting_after_a_flood_folds_it_in_bounded_runs_behind_mission_events(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nc: Any, script: Script
) -> None:
    """A flood published while no gateway runs: the starting gateway folds a bounded
    part of it, in transactions of a bounded count of entries, and the live fold the
    rest, so a mission event published once it serves overtakes the flood; nothing of
    the flood is lost."""
    # Several times what a start folds (TELEMETRY_AT_START) before the live fold.
    server = await make_gateway(read_model_check_seconds=0)
    assert server.gateway is not None
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all([script.requested()])
    await server.stop()
    await asyncio.gather(*await send_in_order(publisher, flood(script)))
    began = time.perf_counter()
    await server.start()
    gateway = server.gateway
    assert gateway is not None
    started = time.perf_counter() - began
    ack = await publisher.publish(
        MissionMessagePosted(**script.meta(), text="still there?")  # type: ignore[arg-type]
    )

    async def folded() -> bool:
        return await gateway.read_model.position() >= ack.seq

    await eventually(folded, what="the mission event folded", timeout=120)
    waited = time.perf_counter() - began
    stored = await stored_entries(server, script.mission_id)
    print(f"\nstarted in {started:.2f} s, the mission event folded after {waited:.2f} s,")
    print(f"  {stored} of {FLOOD} entries in by then")
    # The start folded a part, the live fold its backlog and a message or two more.
    assert stored < FLOOD // 2

    async def all_in() -> bool:
        return await stored_entries(server, script.mission_id) == FLOOD

    await eventually(all_in, what="the whole flood folded", timeout=300)
    most = await most_entries_in_one_transaction(server, script.mission_id)
    print(f"  the whole flood in after {time.perf_counter() - began:.2f} s, at most {most}")
    print("  entries a transaction")
    assert most <= TELEMETRY_BACKLOG + 2 * PER_MESSAGE


async def test_an_attempt_past_its_cap_costs_the_gateway_a_statement_a_message(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    gateway_db: str,
    nc: Any,
    script: Script,
) -> None:
    """A flood past an attempt's cap: the entries past it are counted in one statement
    a message (PostgreSQL's own count of the store functions' calls), exactly, and a
    restart and the same entries published again count none twice."""
    cap = 100
    messages = 10
    count = messages * PER_MESSAGE
    async with await psycopg.AsyncConnection.connect(gateway_db, autocommit=True) as conn:
        # The gateway's connections (opened after this) count their calls of functions.
        name = await (await conn.execute("SELECT current_database()")).fetchone()
        assert name is not None
        await conn.execute(f"ALTER DATABASE \"{name[0]}\" SET track_functions = 'pl'")
    server = await make_gateway(transcript_max_entries=cap, read_model_check_seconds=0)
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all([script.requested()])

    async def counts() -> tuple[int, int]:
        assert server.gateway is not None
        async with server.gateway.db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT kept, dropped FROM transcript_counts WHERE mission_id = %s",
                (script.mission_id,),
            )
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def counted(dropped: int) -> None:
        async def reached() -> bool:
            return (await counts())[1] >= dropped

        await eventually(reached, what=f"{dropped} entries dropped", timeout=300)

    began = time.perf_counter()
    await asyncio.gather(*await send_in_order(publisher, flood(script, 0, count)))
    await counted(count - cap)
    took = time.perf_counter() - began
    print(f"\n{count - cap} entries past the cap counted in {took:.2f} s:")
    print(f"  {(count - cap) / took:.0f} entries/s")

    async def calls() -> int:
        async with (
            await psycopg.AsyncConnection.connect(gateway_db, autocommit=True) as conn,
        ):
            cur = await conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                " WHERE funcname LIKE 'store_transcript_entr%'"
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def reported() -> int | None:
        made = await calls()
        return made if made >= messages else None

    # The server reports a backend's counts once it idles (within seconds).
    made = await eventually(reported, what="the store functions' calls reported", timeout=60)
    print(f"  {made} calls of the store functions for {messages} messages")
    assert made <= 2 * messages
    # Stopped, the same entries published again (a resumed attempt, in new messages)
    # with a thousand new ones after them, and one alone: only the new ones count.
    await server.stop()
    again = flood(script, 0, count) + flood(script, count, PER_MESSAGE)
    await asyncio.gather(*await send_in_order(publisher, again))
    await server.start()
    await counted(count - cap + PER_MESSAGE)
    last = MissionMessagePosted(**script.meta(), text="after")  # type: ignore[arg-type]
    await publisher.publish_all(
        [
            TranscriptRecorded(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                runner_id="runner-1",
                sequence=count - 1,
                kind="note",
                runtime="builtin",
            ),
            last,
        ]
    )
    assert server.gateway is not None
    telemetry_end = (await nc.jetstream().stream_info(TELEMETRY_STREAM)).state.last_seq

    async def telemetry_folded() -> bool:
        assert server.gateway is not None
        return await server.gateway.read_model.telemetry_position() >= telemetry_end

    await eventually(telemetry_folded, what="the telemetry folded")
    assert await counts() == (cap, count - cap + PER_MESSAGE)
