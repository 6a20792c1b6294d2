"""The runtimes a mission names, checked against the registry of live runners on the bus
(``aether_runtime.runners``), and ``GET /runtimes`` with the CLI's ``aether runtimes``.

The runners' entries here are written on the real bus as a runner writes its own; the
whole system's tests (tests/e2e/test_runner_registry.py) do it with real runners."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from aether.cli import main
from aether_events import MissionRequested, type_subject
from aether_runtime.runners import RUNNERS_STREAM, RunnerEntry, ensure_bucket, entry_subject

from .conftest import ADMIN_TOKEN, stored_events
from .test_auth import new_token

MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}


class Registry:
    """Writes runners' entries into the bucket, and deletes them all afterwards (the
    server is the session's: the next test sees no runner of these)."""

    def __init__(self, nc: NatsClient) -> None:
        self.js = nc.jetstream()
        self.written: list[str] = []

    async def runner(self, runner_id: str, *runtimes: str, lanes: int = 2) -> None:
        entry = RunnerEntry(
            runner_id=runner_id,
            host="host-1",
            runtimes=list(runtimes),
            default_runtime=runtimes[0],
            lanes=lanes,
            version="0.1.0",
            started_at=datetime.now(UTC),
            announced_at=datetime.now(UTC),
            refresh_seconds=10.0,
        )
        await self.js.publish(entry_subject("host-1", runner_id), msgspec.json.encode(entry))
        self.written.append(runner_id)

    async def stopped(self, runner_id: str) -> None:
        await self.js.publish(
            entry_subject("host-1", runner_id), b"", headers={"KV-Operation": "DEL"}
        )


@pytest.fixture
async def registry(nc: NatsClient) -> AsyncIterator[Registry]:
    await ensure_bucket(nc.jetstream(), 30.0)
    # The bus is shared with other packages' tests, whose real runners announce
    # themselves on it and may have been killed before deleting their entries.
    await nc.jetstream().purge_stream(RUNNERS_STREAM)
    registry = Registry(nc)
    try:
        yield registry
    finally:
        for runner_id in registry.written:
            await registry.stopped(runner_id)


async def requested_count(nc: NatsClient) -> int:
    info = await nc.jetstream().stream_info(
        "AETHER_MISSIONS", subjects_filter=type_subject(MissionRequested)
    )
    return sum((info.state.subjects or {}).values())


async def test_a_mission_naming_a_runtime_no_live_runner_has_is_refused(http, nc, registry):
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "builtin", "codex")
    before = await requested_count(nc)
    for body in (
        {**MISSION, "runtime": "claude-code"},
        {**MISSION, "runtime": "builtin", "runtime_overrides": {"complex": "aider"}},
    ):
        response = await http.post("/missions", json=body)
        assert response.status_code == 400, response.text
        answer = response.json()
        missing = body.get("runtime_overrides", {}).get("complex") or body["runtime"]
        assert answer["error"] == (
            f"no live agent runner has the runtime {missing!r}; the runners have: builtin, codex"
        )
        assert answer["detail"] == {
            "unknown_runtimes": [missing],
            "available_runtimes": ["builtin", "codex"],
        }
    # Nothing was published for them.
    assert await requested_count(nc) == before


async def test_a_mission_naming_a_runtime_a_live_runner_has_is_accepted(http, nc, registry):
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "builtin", "codex")
    response = await http.post(
        "/missions",
        json={**MISSION, "runtime": "codex", "runtime_overrides": {"small": "builtin"}},
    )
    assert response.status_code == 202, response.text
    assert response.json()["warning"] is None
    [event] = await stored_events(nc, response.json()["mission_id"])
    assert isinstance(event, MissionRequested) and event.runtime == "codex"


async def test_with_no_runner_announced_a_mission_is_kept_with_a_warning(http, nc, registry):
    """At start-up, or with every runner down, nobody can say which runtimes exist: the
    mission is accepted rather than lost, and the answer says its runtime was unchecked."""
    response = await http.post("/missions", json={**MISSION, "runtime": "claude-code"})
    assert response.status_code == 202, response.text
    assert response.json()["warning"] == (
        "no agent runner has announced itself, so the runtimes asked for (claude-code) were "
        "not checked; a task whose runtime no runner has fails its first attempt"
    )
    [event] = await stored_events(nc, response.json()["mission_id"])
    assert isinstance(event, MissionRequested) and event.runtime == "claude-code"
    # A mission naming no runtime is the runner's default's: nothing to check or warn of.
    plain = await http.post("/missions", json=MISSION)
    assert plain.status_code == 202 and plain.json()["warning"] is None


async def test_a_stopped_runners_runtime_is_refused(make_gateway, nc, registry):
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "builtin", "codex")
    await registry.stopped("r-2")  # as a runner deletes its entry when it stops
    gateway = await make_gateway()  # its own copy of the registry, read now
    async with gateway.client() as http:
        response = await http.post("/missions", json={**MISSION, "runtime": "codex"})
        assert response.status_code == 400, response.text
        assert response.json()["detail"]["available_runtimes"] == ["builtin"]


async def test_the_runtimes_and_their_runners_are_listed_for_any_reader(
    http, gateway_server, registry
):
    await registry.runner("r-2", "builtin", "codex", lanes=4)
    await registry.runner("r-1", "builtin")
    reader = (await new_token(http, "read", name="reader"))["token"]
    async with gateway_server.client(token=reader) as c:
        response = await c.get("/runtimes")
    assert response.status_code == 200, response.text
    listed = response.json()
    assert listed["runtimes"] == [
        {"name": "builtin", "runners": ["r-1", "r-2"]},
        {"name": "codex", "runners": ["r-2"]},
    ]
    assert [(r["runner_id"], r["runtimes"], r["lanes"]) for r in listed["runners"]] == [
        ("r-1", ["builtin"], 2),
        ("r-2", ["builtin", "codex"], 4),
    ]
    # The model tiers a mission's runtime_overrides name, cheapest first (the board
    # offers a runtime for each).
    assert listed["tiers"] == ["small", "standard", "complex"]


async def cli(server, capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    args = ["--url", server.base_url, "--token", ADMIN_TOKEN, *argv]
    code = await asyncio.to_thread(main, args)
    return code, capsys.readouterr().out


async def test_aether_runtimes_shows_them(gateway_server, make_gateway, capsys, registry):
    code, out = await cli(gateway_server, capsys, "runtimes")
    assert code == 0
    assert out.startswith("no agent runner has announced itself")
    await registry.runner("host-a-12-abc", "builtin", "codex", lanes=3)
    fresh = await make_gateway()  # its own copy of the registry, read now
    code, out = await cli(fresh, capsys, "runtimes")
    assert code == 0
    assert out.splitlines() == [
        "runtime              runners",
        "builtin              host-a-12-abc",
        "codex                host-a-12-abc",
        "",
        "runner                           lanes  default      version   runtimes",
        "host-a-12-abc                        3  builtin      0.1.0     builtin, codex",
    ]
    code, out = await cli(fresh, capsys, "runtimes", "--json")
    assert code == 0
    assert json.loads(out)["runtimes"][1] == {"name": "codex", "runners": ["host-a-12-abc"]}
