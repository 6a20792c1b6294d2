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

from aether_events import (
    AgentStarted,
    EventPublisher,
    MissionMessagePosted,
    TranscriptEntries,
    TranscriptRecorded,
)
from aether_events.publisher import send_in_order
from aether_gateway.handlers import TELEMETRY_BACKLOG

from .conftest import GatewayServer, Script, eventually

# Twenty messages of a thousand entries (about 400 kB each): every one in flight at
# once (the consumer lets 256 be), twenty times the backlog the projector keeps.
MESSAGES = 20
PER_MESSAGE = 1000
FLOOD = MESSAGES * PER_MESSAGE


def flood(script: Script) -> list[TranscriptEntries]:
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
        for n in range(FLOOD)
    ]
    return [
        TranscriptEntries(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=1,
            runner_id="runner-1",
            entries=entries[at : at + PER_MESSAGE],
        )
        for at in range(0, FLOOD, PER_MESSAGE)
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
            assert stored < FLOOD // 2
            assert gateway.projector.telemetry_held > 0
        finally:
            flooding = False
            await asking
    for path, took in times.items():
        print(f"  {path} during the flood: {len(took)} asked, worst {max(took):.2f} s")
        # The answers do not wait for the fold (about 0.2 s at worst on a loaded
        # machine, docs/benchmarks.md): far from this.
        assert max(took) < 5.0
