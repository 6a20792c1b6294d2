"""Reads per caller, and event streams open at once per caller, bounded on each replica."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from litestar.handlers import HTTPRouteHandler

from aether_events import EventPublisher
from aether_gateway.adapters.limits import BucketLimiter, StreamSlots
from aether_gateway.config import GatewaySettings
from aether_runtime.settings import SettingsError

from .conftest import eventually

MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_may_spend_a_windows_reads_at_once_then_as_they_come_back():
    clock = Clock()
    limiter = BucketLimiter(limit=4, window_seconds=60, clock=clock)
    assert [limiter.hit("a") for _ in range(4)] == [None] * 4
    wait = limiter.hit("a")
    assert wait == pytest.approx(15.0)  # a read comes back every 60 / 4 seconds
    assert limiter.hit("b") is None  # another caller's bucket is its own
    clock.now += 14.9
    assert limiter.hit("a") == pytest.approx(0.1, abs=1e-6)
    clock.now += 0.2
    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None
    clock.now += 3600  # a bucket never holds more than a window's reads
    assert [limiter.hit("a") for _ in range(5)].count(None) == 4


def test_the_limiter_forgets_the_least_recently_seen_callers_past_its_bound():
    limiter = BucketLimiter(limit=1, window_seconds=3600, max_callers=2, clock=Clock())
    assert limiter.hit("a") is None
    assert limiter.hit("b") is None
    assert limiter.hit("c") is None  # "a" is dropped: it may read again
    assert limiter.hit("a") is None
    assert limiter.hit("c") is not None  # "c" is still known
    assert BucketLimiter(limit=0, window_seconds=1).hit("x") is None  # 0: no limit


def test_a_stream_slot_is_given_back_once_however_often_it_is_returned():
    slots = StreamSlots(2)
    first, second = slots.take("a"), slots.take("a")
    assert first is not None and second is not None
    assert slots.take("a") is None
    assert slots.take("b") is not None
    first()
    first()  # again: nothing more given back
    assert slots.open("a") == 1
    assert slots.take("a") is not None
    assert slots.take("a") is None
    assert StreamSlots(0).take("a") is not None


async def test_reads_are_limited_per_caller_and_writes_are_not_counted(make_gateway):
    server = await make_gateway(read_rate_limit=3, read_rate_window_seconds=3600)
    async with server.client() as c:
        assert (await c.get("/missions")).status_code == 200
        # Writes have their own limits; open routes have no caller to count.
        assert (await c.post("/missions", json=MISSION)).status_code == 202
        other = await c.post("/admin/tokens", json={"name": "reader", "scopes": ["read"]})
        assert other.status_code == 201
        for _ in range(5):
            assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/runtimes")).status_code == 200
        assert (await c.get("/missions", params={"limit": 1})).status_code == 200
        limited = await c.get("/missions")
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 1201
        assert "at most 3 reads per 3600 seconds" in limited.json()["error"]
        # Every read route counts, the board's API and event streams too.
        assert (await c.get("/usage")).status_code == 429
        assert (await c.get("/events/stream")).status_code == 429
        # Writes go on past the read limit.
        assert (await c.post("/missions", json=MISSION)).status_code == 202
    async with server.client(token=other.json()["token"]) as c:
        assert (await c.get("/missions")).status_code == 200


async def test_event_streams_open_at_once_are_bounded_per_caller(make_gateway, nc, script):
    server = await make_gateway(stream_limit=2, sse_keepalive_seconds=0.2)
    async with server.client() as c, contextlib.AsyncExitStack() as streams:
        for _ in range(2):
            opened = await streams.enter_async_context(c.stream("GET", "/events/stream"))
            assert opened.status_code == 200
        refused = await c.get("/events/stream")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "at most 2 event streams" in refused.json()["error"]
        other = await c.post("/admin/tokens", json={"name": "watcher", "scopes": ["read"]})
        async with (
            server.client(token=other.json()["token"]) as theirs,
            theirs.stream("GET", "/events/stream") as own,
        ):
            assert own.status_code == 200  # another caller's slots are its own
        await streams.aclose()  # both streams closed by the client: their slots come back

        async def opens() -> bool:
            async with c.stream("GET", "/events/stream") as again:
                return again.status_code == 200

        assert await eventually(opens, timeout=20, what="a slot given back")
        # Streams that end by themselves give theirs back too.
        await EventPublisher(nc.jetstream()).publish_all(script.happy_path())
        url = f"/missions/{script.mission_id}/events"
        for _ in range(4):
            ended = await asyncio.wait_for(c.get(url, params={"until_terminal": "1"}), 20)
            assert ended.status_code == 200, ended.text


async def test_every_read_route_that_takes_a_token_documents_the_429(http, gateway_server):
    from aether_gateway.api.limits import READ_RATE

    document = (await http.get("/schema/openapi.json")).json()
    routes = gateway_server._server.config.app.routes
    limited = set()
    for route in routes.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            if "GET" not in handler.http_methods:
                continue
            assert READ_RATE in handler.resolve_guards(), route.path
            path = route.path.replace(":str", "")
            operation = document["paths"].get(path, {}).get("get")
            if operation is None or operation.get("security") == [{}]:
                continue
            assert "429" in operation["responses"], path
            limited.add(path)
    assert {"/missions", "/missions/{mission_id}/events", "/runtimes"} <= limited


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AETHER_READ_RATE_LIMIT", "-1"),
        ("AETHER_READ_RATE_WINDOW_SECONDS", "0"),
        ("AETHER_STREAM_LIMIT", "-2"),
    ],
)
def test_a_bad_read_limit_setting_stops_the_gateway_naming_it(name, value):
    assert GatewaySettings.from_env({name: "7"}) is not None
    with pytest.raises(SettingsError, match=name):
        GatewaySettings.from_env({name: value})


async def test_the_cli_waits_out_a_short_read_limit_and_reads_on(make_gateway):
    from aether.client import ApiError, GatewayClient

    from .conftest import ADMIN_TOKEN

    # Two reads a window of two seconds: a read comes back every second.
    server = await make_gateway(read_rate_limit=2, read_rate_window_seconds=2)
    client = GatewayClient(server.base_url, ADMIN_TOKEN)
    try:
        listed = await asyncio.to_thread(lambda: [client.missions() for _ in range(4)])
        assert all("missions" in page for page in listed)
    finally:
        client.close()
    # A long wait is not waited out: the caller is told.
    server = await make_gateway(read_rate_limit=1, read_rate_window_seconds=3600)
    client = GatewayClient(server.base_url, ADMIN_TOKEN)
    try:
        await asyncio.to_thread(client.missions)
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(client.missions)
        assert refused.value.status == 429
    finally:
        client.close()


async def test_the_cli_asks_a_read_again_after_a_503s_retry_after(make_gateway):
    """The database away: each read is a 503 with ``Retry-After: 1``, which the CLI waits
    out before asking again, as it does a short 429, and then says why it gave up."""
    import time

    from aether.client import READ_RETRIES, ApiError, GatewayClient

    from .conftest import ADMIN_TOKEN

    server = await make_gateway()
    await server.gateway.db.close()
    client = GatewayClient(server.base_url, ADMIN_TOKEN)
    asked: list[float] = []
    client._http.event_hooks["request"].append(lambda _: asked.append(time.monotonic()))
    try:
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(client.missions)
    finally:
        client.close()
    assert refused.value.status == 503
    assert refused.value.retry_after == 1.0
    assert len(asked) == READ_RETRIES
    waits = [later - sooner for sooner, later in itertools.pairwise(asked)]
    assert all(wait >= 0.95 for wait in waits), waits


async def test_the_watch_waits_out_a_429_on_its_stream_and_follows_on(make_gateway, nc, script):
    """``aether mission watch`` refused a stream (the caller's streams all taken: 429 with
    ``Retry-After: 5``) says so and opens it again no sooner than that, not at its own
    backoff, nor does it give up."""
    import queue
    import threading
    import time

    from aether.client import GatewayClient
    from aether.commands import _read_events
    from aether_gateway.api.live import STREAM_RETRY_SECONDS

    from .conftest import ADMIN_TOKEN

    server = await make_gateway(stream_limit=1)
    await EventPublisher(nc.jetstream()).publish_all([script.requested()])
    client = GatewayClient(server.base_url, ADMIN_TOKEN)
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()
    async with server.client() as c, contextlib.AsyncExitStack() as held:
        taken = await held.enter_async_context(c.stream("GET", "/events/stream"))
        assert taken.status_code == 200
        reader = threading.Thread(
            target=_read_events, args=(client, script.mission_id, inbox, stop), daemon=True
        )
        reader.start()
        try:
            kind, said = await asyncio.to_thread(inbox.get, timeout=30)
            refused_at = time.monotonic()
            assert kind == "retry", (kind, said)
            assert "429" in said and f"retrying in {STREAM_RETRY_SECONDS:.0f}s" in said, said
            await held.aclose()  # the slot comes back (at the other stream's keep-alive)
            kind, event = await asyncio.to_thread(inbox.get, timeout=30)
            followed_at = time.monotonic()
        finally:
            stop.set()
            client.close()
    assert kind == "event" and event.event == "mission_requested", (kind, event)
    assert followed_at - refused_at >= STREAM_RETRY_SECONDS - 0.1


async def test_mission_logs_follow_waits_out_a_429_and_resumes_a_dropped_stream(
    make_gateway, nc, script, capsys
):
    """``aether mission logs --follow`` ended with an error at a refused stream and
    stopped, the mission still running, when its stream dropped. Now it opens the stream
    again no sooner than the gateway's ``Retry-After``, after the last event seen, and
    prints every step once, to the mission's end."""
    import argparse
    import time

    from aether.agentlog import mission_logs
    from aether.client import GatewayClient
    from aether_events import AgentProgress, AgentStarted
    from aether_gateway.api.live import STREAM_RETRY_SECONDS

    from .conftest import ADMIN_TOKEN

    server = await make_gateway(stream_limit=1)
    publisher = EventPublisher(nc.jetstream())
    meta = script.meta
    await publisher.publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            AgentStarted(**meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),
        ]
    )
    client = GatewayClient(server.base_url, ADMIN_TOKEN)
    opened: list[float] = []
    client._http.event_hooks["request"].append(
        lambda request: (
            opened.append(time.monotonic()) if request.url.path.endswith("/events") else None
        )
    )
    lines: list[str] = []
    said: list[str] = []

    def err() -> str:
        said.append(capsys.readouterr().err)
        return "".join(said)

    def soon(check):
        async def probe() -> bool:
            return check()

        return probe

    args = argparse.Namespace(
        mission_id=script.mission_id, task_id=None, attempt=None, json=False, follow=True
    )
    hub = server.gateway.hub
    async with server.client() as c, contextlib.AsyncExitStack() as held:
        taken = await held.enter_async_context(c.stream("GET", "/events/stream"))
        assert taken.status_code == 200
        following = asyncio.ensure_future(
            asyncio.to_thread(mission_logs, client, args, lines.append)
        )
        try:
            await eventually(soon(lambda: "429" in err()), what="the refused stream said so")
            assert f"retrying in {STREAM_RETRY_SECONDS:.0f}s" in err(), err()
            await held.aclose()  # the slot comes back (at the other stream's keep-alive)
            await eventually(
                soon(lambda: len(opened) == 2 and hub.subscriber_count == 1), what="the stream"
            )
            await publisher.publish(
                AgentProgress(
                    **meta(),
                    task_id="t1",
                    attempt=1,
                    runner_id="r-1",
                    turns=1,
                    tool_calls=1,
                    last_action="read_file src/t1.py",
                )
            )
            await eventually(soon(lambda: len(lines) == 2), what="the started and progress steps")
            hub.end_all()  # the stream drops, the mission still running
            # Stored while the stream is away, then after it is back.
            await publisher.publish(script.agent_completed("t1"))
            await eventually(soon(lambda: len(opened) == 3), what="the stream again")
            await publisher.publish_all([script.merged("t1"), script.completed()])
            code = await asyncio.wait_for(following, timeout=60)
        finally:
            client.close()
    assert code == 0
    assert len(opened) == 3, err()
    assert opened[1] - opened[0] >= STREAM_RETRY_SECONDS - 0.1
    assert "the event stream ended after #" in err() and "reconnecting" in err()
    # Each step once, in order: none lost in the drop, none printed again after it.
    assert [line.split()[3] for line in lines] == ["started", "turn", "completed"], lines
