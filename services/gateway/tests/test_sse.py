"""Following a mission over Server-Sent Events: replay, live events, resumption."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from aether_events import MISSIONS_STREAM, EventPublisher, tag_of

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


async def test_resuming_after_the_terminal_event_ends_the_stream_at_once(http, nc, script):
    # A client that had the terminal event (its connection dropped before the stream
    # ended) resumes after it: no replay nor live event would end the stream again.
    acks = await EventPublisher(nc.jetstream()).publish_all(script.happy_path())
    url = f"/missions/{script.mission_id}/events"
    last = acks[-1].seq
    for resume in ({"headers": {"Last-Event-ID": str(last)}}, {"params": {"after": str(last)}}):
        params = {"until_terminal": "1", **resume.get("params", {})}
        headers = resume.get("headers", {})
        received = await asyncio.wait_for(
            collect(http, url, params=params, headers=headers), timeout=20
        )
        assert received == []


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
        sent = re.search(r"^aether_sse_events_sent_total (\S+)$", metrics, re.M)
        assert sent is not None and float(sent.group(1)) >= 2

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
    # Past the stream's newest event: no event would ever be sent after it.
    newest = (await nc.jetstream().stream_info(MISSIONS_STREAM)).state.last_seq
    for resume in (
        {"headers": {"Last-Event-ID": str(newest + 1)}},
        {"params": {"after": "10" * 11}},
    ):
        # (Taken as a resume point, it is a stream that never ends: bounded here.)
        ahead = await asyncio.wait_for(http.get(url, **resume), timeout=10)
        assert ahead.status_code == 400
        assert ahead.json()["detail"]["newest"] == newest
    ahead = await asyncio.wait_for(
        http.get("/events/stream", headers={"Last-Event-ID": str(newest + 1)}), timeout=10
    )
    assert ahead.status_code == 400
    # The newest event itself is a resume point: the stream waits for the next.
    async with http.stream("GET", url, headers={"Last-Event-ID": str(newest)}) as resumed:
        assert resumed.status_code == 200


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


# --- resumption, fan-out and the global stream -------------------------------------------


async def read_events(stream, count, timeout=20):
    """The next ``count`` event messages (skipping keep-alives)."""
    found = []

    async def take():
        async for message in stream:
            if "event" in message:
                found.append(message)
                if len(found) == count:
                    return

    await asyncio.wait_for(take(), timeout)
    return found


@pytest.mark.parametrize("ring_size", [10_000, 2])
async def test_a_dropped_connection_resumes_with_no_gap_and_no_duplicate(
    make_gateway, nc, script, ring_size
):
    # With a ring of 2, what was missed comes from the read model, not from memory.
    server = await make_gateway(sse_ring_size=ring_size)
    publisher = EventPublisher(nc.jetstream())
    events = script.happy_path()
    acks = [await publisher.publish(e) for e in events[:3]]
    url = f"/missions/{script.mission_id}/events"
    async with server.client() as http:
        async with http.stream("GET", url) as response:
            stream = messages(response)
            first = await read_events(stream, 3)
            acks += [await publisher.publish(e) for e in events[3:5]]
            first += await read_events(stream, 2)
        # Disconnected: these happen while nobody listens.
        acks += [await publisher.publish(e) for e in events[5:]]
        last_seen = first[-1]["id"]
        resumed = await asyncio.wait_for(
            collect(
                http, url, params={"until_terminal": "1"}, headers={"Last-Event-ID": last_seen}
            ),
            timeout=20,
        )
    ids = [int(m["id"]) for m in first + resumed]
    assert ids == [a.seq for a in acks]
    assert [m["event"] for m in first + resumed] == [tag_of(type(e)) for e in events]


@pytest.mark.slow
async def test_two_hundred_clients_share_one_subscription(make_gateway, nc, script):
    clients = 200
    # One token's 200 streams: past a caller's default bound on streams open at once.
    gateway_server = await make_gateway(stream_limit=clients)
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish(script.requested())
    url = f"/missions/{script.mission_id}/events"
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with gateway_server.client(limits=limits, timeout=60.0) as http:
        connected = asyncio.Event()
        ready = 0

        async def follow():
            nonlocal ready
            async with http.stream("GET", url, params={"until_terminal": "1"}) as response:
                assert response.status_code == 200
                received = []
                async for message in messages(response):
                    if "event" not in message:
                        continue
                    received.append(int(message["id"]))
                    if len(received) == 1:
                        ready += 1
                        if ready == clients:
                            connected.set()
                return received

        followers = [asyncio.create_task(follow()) for _ in range(clients)]
        await asyncio.wait_for(connected.wait(), 60)
        hub = gateway_server.gateway.hub
        assert hub.subscriber_count == clients
        info = await nc.jetstream().stream_info("AETHER_MISSIONS")
        # The durable projection consumer, the step-retry consumer and the hub's one
        # ordered consumer, plus the read-model watch's and replays' short-lived ones,
        # which expire on their own (a loaded machine sees one or two more): not 200.
        assert info.state.consumer_count <= 8
        acks = [await publisher.publish(e) for e in script.happy_path()[1:]]
        results = await asyncio.wait_for(asyncio.gather(*followers), 60)
    expected = [results[0][0]] + [a.seq for a in acks]
    assert all(received == expected for received in results)


async def test_the_global_stream_follows_every_mission_with_type_filters(http, nc, script):
    from aether_events import new_mission_id

    from .conftest import Script

    other = Script(new_mission_id())
    publisher = EventPublisher(nc.jetstream())
    before = await publisher.publish(script.requested())
    async with (
        http.stream("GET", "/events/stream") as everything,
        http.stream("GET", "/events/stream", params={"type": "mission_requested"}) as requests_only,
    ):
        assert everything.status_code == 200 and requests_only.status_code == 200
        all_stream, requests_stream = messages(everything), messages(requests_only)
        assert [int(m["id"]) for m in await read_events(all_stream, 1)] == [before.seq]
        assert [int(m["id"]) for m in await read_events(requests_stream, 1)] == [before.seq]
        prepared = await publisher.publish(script.prepared())
        requested = await publisher.publish(other.requested())
        live = await read_events(all_stream, 2)
        assert [(int(m["id"]), m["event"]) for m in live] == [
            (prepared.seq, "repository_prepared"),
            (requested.seq, "mission_requested"),
        ]
        [only] = await read_events(requests_stream, 1)
        assert int(only["id"]) == requested.seq
    assert (await http.get("/events/stream", params={"type": "nonsense"})).status_code == 400
    resumed = await http.get("/events/stream", headers={"Last-Event-ID": "x"})
    assert resumed.status_code == 400


async def test_telemetry_is_sent_on_request_without_an_id(http, nc, script):
    from aether_events import AgentProgress

    publisher = EventPublisher(nc.jetstream())
    requested = await publisher.publish(script.requested())
    url = f"/missions/{script.mission_id}/events"
    async with (
        http.stream("GET", url, params={"telemetry": "1"}) as response,
        http.stream("GET", url) as plain,
    ):
        stream, plain_stream = messages(response), messages(plain)
        await read_events(stream, 1)
        await read_events(plain_stream, 1)
        await publisher.publish(
            AgentProgress(**script.meta(), task_id="t1", attempt=1, runner_id="r", turns=4)
        )
        prepared = await publisher.publish(script.prepared())
        # Telemetry and mission events come from two streams: no order between them.
        received = await read_events(stream, 2)
        [progress] = [m for m in received if m["event"] == "agent_progress"]
        [after] = [m for m in received if m["event"] != "agent_progress"]
        assert "id" not in progress
        assert json.loads(progress["data"])["turns"] == 4
        assert int(after["id"]) == prepared.seq
        [only] = await read_events(plain_stream, 1)
        assert int(only["id"]) == prepared.seq
    assert requested.seq < prepared.seq


async def test_a_client_that_falls_behind_is_let_go_cleanly():
    from aether_gateway.adapters.hub import CLOSED, Filter, Hub, StreamedEvent

    hub = Hub(max_queue=3)
    slow = await hub.subscribe(Filter(mission_id="m-1"))
    for seq in range(1, 6):
        event = StreamedEvent(sequence=seq, mission_id="m-1", type="x", task_id=None, data=b"{}")
        hub._dispatch(event, hub._targets("m-1"))
    # Dropped, with nothing half-delivered: it resumes from the last event it received.
    assert slow.overflowed
    assert await slow.next(0.1) is CLOSED
    assert hub.subscriber_count == 0


async def test_telemetry_is_decoded_only_while_a_client_asks_for_it(script):
    """Telemetry is not kept for replay: with no client asking for it, a message is
    passed over as it arrives, undecoded; a client that asks for it gets it."""
    from nats.aio.msg import Msg

    from aether_events import AgentProgress, encode, subject_for
    from aether_gateway.adapters.hub import Filter, Hub, StreamedEvent

    progress = AgentProgress(**script.meta(), task_id="t1", attempt=1, runner_id="r", turns=4)
    msg = Msg(_client=None, subject=subject_for(progress), data=encode(progress))  # type: ignore[arg-type]
    hub = Hub()
    plain = await hub.subscribe(Filter(mission_id=script.mission_id))
    await hub._on_telemetry(msg)
    assert hub.telemetry_passed_over == 1

    watching = await hub.subscribe(Filter(mission_id=script.mission_id, telemetry=True))
    await hub._on_telemetry(msg)
    assert hub.telemetry_passed_over == 1
    received = await watching.next(0.1)
    assert isinstance(received, StreamedEvent)
    assert received.sequence is None and received.type == "agent_progress"
    assert json.loads(received.data)["turns"] == 4
    assert plain._queue.empty()

    watching.close()
    await hub._on_telemetry(msg)
    assert hub.telemetry_passed_over == 2
    plain.close()


def test_a_kept_event_is_encoded_for_clients_without_its_secrets(script):
    """The hub keeps the decoded event and encodes it when a client first needs it:
    the same bytes as before, the attempt's push token withheld."""
    from aether_events import PlannedTask, WorkspaceReady, encode
    from aether_events.codec import without_secrets
    from aether_gateway.adapters.hub import StreamedEvent

    ready = WorkspaceReady(
        **script.meta(),
        task=PlannedTask(id="t1", title="T1", files=["a"]),
        attempt=1,
        model="m",
        branch="b",
        worktree_path="/w",
        base_sha="a" * 40,
        push_token="secret-token",
    )
    kept = StreamedEvent(1, script.mission_id, "workspace_ready", "t1", event=ready)
    assert kept.data == encode(without_secrets(ready))
    assert b"secret-token" not in kept.data
    assert kept.data is kept.data  # encoded once
