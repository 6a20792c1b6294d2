"""After an upgrade whose migration adds a column filled from events, the rows folded
before it are folded again at the gateway's start, in the background and once however
many gateways start together; a read model that folded nothing is never refolded."""

from __future__ import annotations

import asyncio

import msgspec
import psycopg
from prometheus_client import REGISTRY

from aether_events import Event, EventPublisher, new_mission_id
from aether_gateway.adapters.db import fold_version, migrations

from .conftest import Script, eventually


def runtime_mission(script: Script) -> list[Event]:
    """A mission naming runtimes, whose task was merged by a conflict's resolution."""
    return [
        script.requested(runtime="codex", runtime_overrides={"complex": "aider"}),
        script.prepared(),
        script.plan(task_ids=("t1",)),
        script.approved(),
        msgspec.structs.replace(script.task_ready("t1"), runtime="codex"),
        script.agent_completed("t1"),
        msgspec.structs.replace(script.merged("t1"), resolution=True),
        script.completed(),
    ]


async def folded_columns(url: str, mission_id: str) -> tuple[object, ...] | None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            """
            SELECT m.runtime, m.runtime_overrides, t.runtime, t.resolution
            FROM missions m JOIN tasks t ON t.mission_id = m.id
            WHERE m.id = %s AND t.task_id = 't1'
            """,
            (mission_id,),
        )
        return await cur.fetchone()


async def stored_version(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SELECT version FROM read_model_fold")).fetchone()
    assert row is not None
    return int(row[0])


async def as_an_older_gateway_left_it(url: str) -> None:
    """The columns of migrations 0010 and 0011 at their defaults, as rows folded before
    them are, and the rows stamped with the fold version before those migrations."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute("UPDATE missions SET runtime = NULL, runtime_overrides = '{}'")
        await conn.execute("UPDATE tasks SET runtime = NULL, resolution = false")
        await conn.execute("UPDATE read_model_fold SET version = 9")
        await conn.commit()


def refolds() -> float:
    """Refolds done in this process (every gateway of a test runs in it)."""
    value = REGISTRY.get_sample_value("aether_read_model_repairs_total", {"kind": "refold"})
    return value or 0.0


FILLED = ("codex", {"complex": "aider"}, "codex", True)
DEFAULTS = (None, {}, None, False)


def test_the_migrations_adding_runtimes_and_resolution_ask_for_a_refold():
    marked = [m.version for m in migrations() if m.refold]
    assert 10 in marked and 11 in marked
    assert fold_version() == max(marked) >= 11


async def test_rows_folded_by_an_older_fold_version_are_refolded_once_by_gateways_starting_together(
    make_gateway, nc, gateway_db
):
    first = await make_gateway()
    script = Script(new_mission_id())
    await EventPublisher(nc.jetstream()).publish_all(runtime_mission(script))
    await eventually(
        lambda: _equals(folded_columns(gateway_db, script.mission_id), FILLED), what="the fold"
    )
    await first.stop()
    await as_an_older_gateway_left_it(gateway_db)
    assert await folded_columns(gateway_db, script.mission_id) == DEFAULTS

    counted = refolds()
    one, two = await asyncio.gather(make_gateway(), make_gateway())
    assert one.gateway is not None and two.gateway is not None
    async with one.client() as http:
        await one.gateway.refold.wait()
        await two.gateway.refold.wait()
        states = sorted([one.gateway.refold.state, two.gateway.refold.state])
        # The other found the rows current: when it got the lock, or already at its start.
        assert states in (["done", "done by another gateway"], ["done", "not needed"]), states
        assert refolds() == counted + 1
        assert await folded_columns(gateway_db, script.mission_id) == FILLED
        assert await stored_version(gateway_db) == fold_version()
        mission = (await http.get(f"/missions/{script.mission_id}")).json()
        assert mission["runtime"] == "codex"
        assert mission["tasks"][0]["resolution"] is True

        done = one if one.gateway.refold.state == "done" else two
        async with done.client() as own:
            ready = (await own.get("/readyz")).json()
        assert ready["read_model"]["refold"]["state"] == "done"
        assert ready["read_model"]["refold"]["to_version"] == fold_version()
        assert ready["read_model"]["refold"]["missions"] == 1

    # Stamped: the next start refolds nothing.
    await one.restart()
    assert one.gateway is not None
    assert one.gateway.refold.state == "not needed"


async def test_the_start_waits_for_no_refold_and_reads_are_served_meanwhile(
    make_gateway, nc, gateway_db
):
    first = await make_gateway()
    script = Script(new_mission_id())
    await EventPublisher(nc.jetstream()).publish_all(runtime_mission(script))
    await eventually(
        lambda: _equals(folded_columns(gateway_db, script.mission_id), FILLED), what="the fold"
    )
    await first.stop()
    await as_an_older_gateway_left_it(gateway_db)

    # Another gateway's refold holds the fold version's row, as long as it takes.
    async with await psycopg.AsyncConnection.connect(gateway_db) as holder:
        await holder.execute("SELECT version FROM read_model_fold FOR UPDATE")
        gateway = await make_gateway()
        assert gateway.gateway is not None
        async with gateway.client() as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert "read model refold waiting for its lock" in ready.json()["detail"]
            assert ready.json()["read_model"]["refold"]["state"] == "waiting"
            # Queries answer from the rows as they are.
            answer = await http.get(f"/missions/{script.mission_id}")
            assert answer.status_code == 200 and answer.json()["runtime"] is None
            await holder.rollback()
            await gateway.gateway.refold.wait()
            assert gateway.gateway.refold.state == "done"
            answer = await http.get(f"/missions/{script.mission_id}")
            assert answer.json()["runtime"] == "codex"
            assert "refold" not in (await http.get("/readyz")).json()["detail"]


async def test_a_fresh_read_model_is_stamped_not_refolded(make_gateway, nc, gateway_db):
    assert await stored_version(gateway_db) == 0  # as migration 0012 leaves it
    counted = refolds()
    gateway = await make_gateway()
    assert gateway.gateway is not None
    assert gateway.gateway.refold.state == "not needed"
    assert await stored_version(gateway_db) == fold_version()
    script = Script(new_mission_id())
    await EventPublisher(nc.jetstream()).publish_all(runtime_mission(script))
    await eventually(
        lambda: _equals(folded_columns(gateway_db, script.mission_id), FILLED), what="the fold"
    )
    await gateway.restart()
    assert gateway.gateway.refold.state == "not needed"
    assert refolds() == counted
    async with gateway.client() as http:
        assert "refold" not in (await http.get("/readyz")).json()["read_model"]


async def _equals(found, expected) -> bool:
    return await found == expected
