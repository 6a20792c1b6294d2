"""Following a mission over Server-Sent Events: replay, live events, resumption."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from aether_events import EventPublisher, tag_of

from .conftest import eventually


async def messages(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Parse an SSE body into messages: ``id``, ``event``, ``data`` and ``comment``."""
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if current:
                yield current
                current = {}
            continue
        if line.startswith(":"):
            current["comment"] = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        current[name] = value[1:] if value.startswith(" ") else value
    if current:
        yield current


async def collect(http, url, **kwargs) -> list[dict[str, str]]:
    """Every event message of a stream that ends by itself (``until_terminal``)."""
    async with http.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [m async for m in messages(response) if "event" in m]


async def test_replay_then_resume_after_last_event_id(http, nc, script):
    events = script.happy_path()
    acks = await EventPublisher(nc.jetstream()).publish_all(events)
    url = f"/missions/{script.mission_id}/events"

    received = await asyncio.wait_for(
        collect(http, url, params={"until_terminal": "1"}), timeout=20
    )
    assert [int(m["id"]) for m in received] == [ack.seq for ack in acks]
    assert [m["event"] for m in received] == [tag_of(type(e)) for e in events]
    first = json.loads(received[0]["data"])
    assert first["type"] == "mission_requested"
    assert first["event_id"] == events[0].event_id

    resumed = await asyncio.wait_for(
        collect(
            http,
            url,
            params={"until_terminal": "1"},
            headers={"Last-Event-ID": str(acks[3].seq)},
        ),
        timeout=20,
    )
    assert [int(m["id"]) for m in resumed] == [ack.seq for ack in acks[4:]]

    after = await asyncio.wait_for(
        collect(http, url, params={"until_terminal": "1", "after": str(acks[5].seq)}),
        timeout=20,
    )
    assert [int(m["id"]) for m in after] == [ack.seq for ack in acks[6:]]


async def test_live_events_follow_the_replay_with_keep_alives_between(http, nc, script):
    publisher = EventPublisher(nc.jetstream())
    requested = await publisher.publish(script.requested())
    url = f"/missions/{script.mission_id}/events"
    async with http.stream("GET", url) as response:
        assert response.status_code == 200
        stream = messages(response)
        replayed = await asyncio.wait_for(anext(stream), timeout=10)
        assert int(replayed["id"]) == requested.seq
        assert replayed["event"] == "mission_requested"

        # Quiet for longer than the keep-alive interval (half a second in tests).
        quiet = await asyncio.wait_for(anext(stream), timeout=10)
        assert quiet == {"comment": "keep-alive"}

        prepared = await publisher.publish(script.prepared())
        live = await asyncio.wait_for(anext(stream), timeout=10)
        while "event" not in live:
            live = await asyncio.wait_for(anext(stream), timeout=10)
        assert int(live["id"]) == prepared.seq
        assert live["event"] == "repository_prepared"

        metrics = (await http.get("/metrics")).text
        assert "aether_sse_clients 1.0" in metrics

    async def client_gone():
        return "aether_sse_clients 0.0" in (await http.get("/metrics")).text

    await eventually(client_gone, what="the stream to close on the server side")


async def test_unknown_missions_and_bad_resume_points_are_refused(http, nc, script):
    missing = await http.get("/missions/m-nosuchmission/events")
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]
    assert (await http.get("/missions/not.a.token/events")).status_code == 404

    await EventPublisher(nc.jetstream()).publish(script.requested())
    url = f"/missions/{script.mission_id}/events"
    bad_header = await http.get(url, headers={"Last-Event-ID": "abc"})
    assert bad_header.status_code == 400
    assert "Last-Event-ID" in bad_header.json()["error"]
    assert (await http.get(url, params={"after": "-1"})).status_code == 400


async def test_stopping_the_gateway_ends_open_streams_promptly(gateway_server, nc, script):
    await EventPublisher(nc.jetstream()).publish(script.requested())
    async with (
        gateway_server.client() as client,
        client.stream("GET", f"/missions/{script.mission_id}/events") as response,
    ):
        stream = messages(response)
        assert (await asyncio.wait_for(anext(stream), timeout=10))["event"] == "mission_requested"
        # Well inside uvicorn's graceful timeout (5 s here): the stream was told to end.
        await asyncio.wait_for(gateway_server.stop(), timeout=4)
        rest = [m async for m in stream]
    assert all("event" not in m for m in rest)
