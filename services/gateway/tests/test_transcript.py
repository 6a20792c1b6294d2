"""GET /missions/{id}/tasks/{task}/transcript: every entry of every attempt, kept in
PostgreSQL once (a repeated entry is not doubled), paged in order, read-only tokens
allowed, kept when the telemetry stream forgets it, and sent live on the event stream."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY

from aether.infra import free_port
from aether_events import (
    ATTEMPT_MAX_PAYLOAD,
    TELEMETRY_STREAM,
    AgentStarted,
    EventPublisher,
    TranscriptEntries,
    TranscriptRecorded,
    Usage,
    encode,
)
from aether_runtime import RuntimeSettings

from .conftest import Script, eventually
from .test_auth import new_token
from .test_sse import messages, read_events


def entry(script: Script, attempt: int, sequence: int, kind: str = "turn", **fields):
    return TranscriptRecorded(
        **script.meta(),
        task_id="t1",
        attempt=attempt,
        runner_id="r-1",
        sequence=sequence,
        kind=kind,
        runtime="builtin",
        **fields,
    )


async def publish(nc, *events):
    return await EventPublisher(nc.jetstream()).publish_all(events)


def path(script: Script, task: str = "t1") -> str:
    return f"/missions/{script.mission_id}/tasks/{task}/transcript"


async def complete(http, script: Script, count: int, **params):
    async def read():
        answer = (await http.get(path(script), params=params)).json()
        return answer if len(answer.get("entries", [])) >= count else None

    return await eventually(read, what=f"{count} transcript entries")


async def test_entries_are_stored_once_in_order_and_paged(http, nc, script):
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await publish(
        nc,
        entry(script, 1, 0, "prompt", text="<task>do it</task>"),
        entry(
            script,
            1,
            1,
            text="Looking first.",
            tool="read_file",
            stop_reason="tool_use",
            usage=Usage(input_tokens=120, output_tokens=8),
        ),
        entry(script, 1, 2, "tool_call", tool="read_file", arguments='{"path": "a"}', result="x"),
        # The same entry again under another id (a copy the duplicate window missed).
        entry(script, 1, 2, "tool_call", tool="read_file", result="a later copy"),
        entry(
            script,
            1,
            3,
            "command",
            tool="run_command",
            arguments='{"command": "pytest"}',
            result="$ pytest\n[exit code 1]\n\x00F",
            exit_code=1,
            status="exit code 1 after 0.2 s",
            truncated=True,
        ),
        entry(script, 2, 0, "prompt", text="second attempt"),
        entry(script, 2, 1, text="Done.", tool="finish"),
        TranscriptRecorded(
            **script.meta(), task_id="t2", attempt=1, runner_id="r-2", sequence=0, kind="prompt"
        ),
    )

    everything = await complete(http, script, 6)
    entries = everything["entries"]
    assert [(e["attempt"], e["sequence"], e["kind"]) for e in entries] == [
        (1, 0, "prompt"),
        (1, 1, "turn"),
        (1, 2, "tool_call"),
        (1, 3, "command"),
        (2, 0, "prompt"),
        (2, 1, "turn"),
    ]
    assert everything["next"] is None
    turn, call, command = entries[1], entries[2], entries[3]
    assert turn["usage"]["input_tokens"] == 120 and turn["stop_reason"] == "tool_use"
    assert call["result"] == "x" and call["arguments"] == '{"path": "a"}'
    assert command["exit_code"] == 1 and command["truncated"] is True
    assert command["result"].endswith("\ufffdF")  # a NUL the database cannot hold

    second = (await http.get(path(script), params={"attempt": 2})).json()["entries"]
    assert [(e["attempt"], e["sequence"]) for e in second] == [(2, 0), (2, 1)]

    first_page = (await http.get(path(script), params={"limit": 4})).json()
    assert len(first_page["entries"]) == 4
    assert first_page["next"] == {"after_attempt": 1, "after": 3}
    rest = (await http.get(path(script), params={"limit": 4, **first_page["next"]})).json()
    assert [(e["attempt"], e["sequence"]) for e in rest["entries"]] == [(2, 0), (2, 1)]
    assert rest["next"] is None
    after = (await http.get(path(script), params={"attempt": 1, "after": 1})).json()["entries"]
    assert [e["sequence"] for e in after] == [2, 3]


async def test_the_transcript_is_a_read_like_the_others(http, gateway_server, nc, script):
    await publish(nc, script.requested(), entry(script, 1, 0, "prompt", text="hello"))
    await complete(http, script, 1)
    reader = (await new_token(http, "read"))["token"]
    async with gateway_server.client(token=reader) as client:
        answer = await client.get(path(script))
        assert answer.status_code == 200 and answer.json()["entries"][0]["text"] == "hello"
    async with gateway_server.client(token=None) as anonymous:
        assert (await anonymous.get(path(script))).status_code == 401
    assert (await http.get("/missions/m-unknown/tasks/t1/transcript")).status_code == 404
    assert (await http.get(path(script, "bad task"))).status_code == 400
    schema = (await http.get("/schema/openapi.json")).json()
    assert "/missions/{mission_id}/tasks/{task_id}/transcript" in schema["paths"]


async def test_entries_outlive_the_telemetry_stream_and_a_rebuild(http, gateway_server, nc, script):
    await publish(nc, script.requested(), entry(script, 1, 0, "prompt", text="kept"))
    await complete(http, script, 1)
    await gateway_server.stop()
    await nc.jetstream().purge_stream(TELEMETRY_STREAM)
    await gateway_server.start()
    async with gateway_server.client() as client:
        rebuilt = await client.post("/admin/read-model/rebuild")
        assert rebuilt.status_code in (200, 201), rebuilt.text
        answer = (await client.get(path(script))).json()
    assert [e["text"] for e in answer["entries"]] == ["kept"]


async def test_new_entries_are_sent_live_on_the_missions_event_stream(http, nc, script):
    await publish(nc, script.requested())
    url = f"/missions/{script.mission_id}/events"
    async with http.stream("GET", url, params={"telemetry": "1"}) as response:
        stream = messages(response)
        await read_events(stream, 1)
        await publish(nc, entry(script, 1, 4, "command", tool="run_command", exit_code=0))
        [live] = await read_events(stream, 1)
    assert live["event"] == "transcript_recorded" and "id" not in live
    data = json.loads(live["data"])
    assert (data["task_id"], data["sequence"], data["exit_code"]) == ("t1", 4, 0)


def together(script: Script, *entries: TranscriptRecorded) -> TranscriptEntries:
    first = entries[0]
    return TranscriptEntries(
        **script.meta(),
        task_id=first.task_id,
        attempt=first.attempt,
        runner_id=first.runner_id,
        entries=list(entries),
    )


async def test_entries_sent_together_are_kept_and_sent_live_each_as_itself(http, nc, script):
    await publish(nc, script.requested(), entry(script, 1, 0, "prompt", text="first"))
    await complete(http, script, 1)
    url = f"/missions/{script.mission_id}/events"
    async with http.stream("GET", url, params={"telemetry": "1"}) as response:
        stream = messages(response)
        await read_events(stream, 1)
        await publish(
            nc,
            together(
                script,
                # Sent before on its own: kept once.
                entry(script, 1, 0, "prompt", text="a later copy"),
                entry(script, 1, 1, text="Writing.", tool="write_file", stop_reason="tool_use"),
                entry(script, 1, 2, "tool_call", tool="write_file", result="wrote 3 bytes"),
            ),
        )
        live = await read_events(stream, 3)
    assert [e["event"] for e in live] == ["transcript_recorded"] * 3
    assert [json.loads(e["data"])["sequence"] for e in live] == [0, 1, 2]
    entries = (await complete(http, script, 3))["entries"]
    assert [(e["sequence"], e["kind"]) for e in entries] == [
        (0, "prompt"),
        (1, "turn"),
        (2, "tool_call"),
    ]
    assert entries[0]["text"] == "first" and entries[2]["result"] == "wrote 3 bytes"


async def test_entries_sent_together_with_a_nul_in_one_are_all_kept(http, nc, script):
    """The database cannot hold a NUL: the entries sent together are stored sanitised,
    every one of them, not lost with the one that held it."""
    await publish(nc, script.requested())
    await publish(
        nc,
        together(
            script,
            entry(script, 1, 0, "prompt", text="first"),
            entry(script, 1, 1, "command", tool="run_command", result="out\x00put"),
            entry(script, 1, 2, text="Done."),
        ),
    )
    entries = (await complete(http, script, 3))["entries"]
    assert [e["sequence"] for e in entries] == [0, 1, 2]
    assert entries[1]["result"] == "out\ufffdput" and entries[2]["text"] == "Done."


async def test_an_attempts_end_reaches_a_telemetry_client_after_the_entries_before_it(
    gateway_server, nc, script
):
    """The runner stores an attempt's transcript before its end; the hub's two followers
    run apart, and a client following both gets the end after those entries however
    far the telemetry follower lags (a client that stops at the mission's end would
    otherwise never print them)."""
    import asyncio

    from aether_gateway.adapters.hub import Filter, Hub, StreamedEvent

    hub = Hub()
    await hub.start(nc.jetstream(), asyncio.Event())
    try:
        watching = await hub.subscribe(Filter(mission_id=script.mission_id, telemetry=True))
        plain = await hub.subscribe(Filter(mission_id=script.mission_id))
        follower = hub._telemetry
        assert follower is not None
        delivered = follower._deliver

        async def lagging(msg):
            await asyncio.sleep(0.3)
            await delivered(msg)

        follower._deliver = lagging  # type: ignore[method-assign]
        await publish(nc, entry(script, 1, 3, "command", exit_code=0))
        await publish(nc, script.agent_completed("t1"))
        received = [await watching.next(5), await watching.next(5)]
        assert [e.type for e in received if isinstance(e, StreamedEvent)] == [
            "transcript_recorded",
            "agent_completed",
        ]
        only = await plain.next(5)
        assert isinstance(only, StreamedEvent) and only.type == "agent_completed"
    finally:
        await hub.stop()


async def test_the_cli_prints_the_transcript_and_follows_it_until_the_mission_ends(
    http, gateway_server, nc, script, capsys
):
    import asyncio

    from aether.cli import main

    from .conftest import ADMIN_TOKEN

    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await publish(
        nc,
        script.task_ready("t1"),
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),
        entry(script, 1, 0, "prompt", text="<task>greet</task>"),
        entry(script, 1, 1, text="Editing greet.", tool="write_file", stop_reason="tool_use"),
        entry(script, 1, 2, "tool_call", tool="write_file", arguments='{"path": "g.py"}'),
    )
    await complete(http, script, 3)
    cli = ["--url", gateway_server.base_url, "--token", ADMIN_TOKEN, "mission", "logs"]

    assert await asyncio.to_thread(main, [*cli, script.mission_id, "t1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "started    on r-1 with m" in listed[0]
    assert listed[1].endswith("prompt (18 characters)")
    assert "model (tool_use)  asks write_file" in listed[2]
    assert listed[3].strip() == "Editing greet."
    assert listed[4].endswith('write_file {"path": "g.py"}')

    following = asyncio.create_task(
        asyncio.to_thread(main, [*cli, script.mission_id, "t1", "-f", "--json"])
    )

    so_far: list[str] = []

    async def listing():
        so_far.extend(capsys.readouterr().out.splitlines())
        return so_far if len(so_far) >= 4 else None

    # The listing comes first; then entries published while it follows, then the end.
    first = await eventually(listing, what="the listing")
    assert [json.loads(line)["type"] for line in first] == [
        "agent_started",
        *["transcript_recorded"] * 3,
    ]
    await publish(
        nc,
        entry(script, 1, 3, "command", arguments='{"command": "pytest"}', exit_code=0),
        script.agent_completed("t1"),
        script.merged("t1"),
        script.task_ready("t2"),
        script.merged("t2"),
        script.completed(),
    )
    assert await asyncio.wait_for(following, 30) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["type"], e.get("sequence")) for e in streamed] == [
        ("transcript_recorded", 3),
        ("agent_completed", None),
    ]
    assert streamed[0]["exit_code"] == 0


async def test_the_hub_follows_the_streams_only_while_a_client_wants_them(
    gateway_server, nc, script
):
    """No client, no followers: the server delivers the gateway nothing for its hub.
    The first client starts them at the streams' ends; once the last client has been
    gone for the linger time they stop, and a client in between keeps them."""
    import asyncio

    from aether_gateway.adapters.hub import Filter, Hub, StreamedEvent

    js = nc.jetstream()

    async def consumers() -> set[str]:
        names: set[str] = set()
        for stream in ("AETHER_MISSIONS", "AETHER_TELEMETRY"):
            names |= {c.name for c in await js.consumers_info(stream)}
        return names

    hub = Hub(linger_seconds=0.5)
    await hub.start(js, asyncio.Event())
    try:
        requested, prepared, plan, *_ = script.happy_path()
        await publish(nc, requested)
        assert not hub.following
        before = hub.last_sequence

        client = await hub.subscribe(Filter(mission_id=script.mission_id))
        assert hub.following and client.start > before  # from the stream's end now
        followed = {f.consumer for f in hub._followers}
        assert None not in followed and followed <= await consumers()
        [ack] = await publish(nc, prepared)
        received = await client.next(5)
        assert isinstance(received, StreamedEvent) and received.sequence == ack.seq
        assert hub.recent(client.start, ack.seq, Filter()) == [received]
        client.close()

        await asyncio.sleep(0.2)
        again = await hub.subscribe(Filter())  # within the linger: the same followers
        await asyncio.sleep(0.5)
        assert hub.following and {f.consumer for f in hub._followers} == followed
        again.close()

        async def stopped() -> bool:
            return not hub.following

        await eventually(stopped, timeout=5, what="the hub's followers to stop")
        seen = hub.last_sequence
        await publish(nc, plan)
        await asyncio.sleep(0.3)
        assert hub.last_sequence == seen  # nothing delivered to it any more
        assert hub.recent(client.start, ack.seq, Filter()) is None  # the read model's now
    finally:
        await hub.stop()


async def test_an_attempt_or_sequence_too_large_to_store_is_refused_by_name(http, nc, script):
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await eventually(
        lambda: _found(http, f"/missions/{script.mission_id}"), what="the mission folded"
    )
    for name, largest in (
        ("attempt", 2**31 - 1),
        ("after_attempt", 2**31 - 1),
        ("after", 2**63 - 1),
    ):
        # A sequence names a place only with its attempt.
        with_attempt = {"after_attempt": 1} if name == "after" else {}
        response = await http.get(path(script), params={name: largest, **with_attempt})
        assert response.status_code == 200, response.text
        response = await http.get(path(script), params={name: largest + 1, **with_attempt})
        assert response.status_code == 400, response.text
        assert name in response.json()["error"]


async def test_a_sequence_without_its_attempt_is_refused_rather_than_read_as_any_attempt(
    http, nc, script
):
    """Entries are ordered by attempt, then sequence: ``after`` alone once answered every
    entry of every attempt (each is after attempt 0), so a caller paging by sequence alone
    was handed the same entries for ever."""
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await publish(nc, *(entry(script, 1, n) for n in range(3)))
    await eventually(lambda: _count(http, script, 3), what="the entries stored")
    response = await http.get(path(script), params={"after": 1})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("after needs after_attempt")
    page = (await http.get(path(script), params={"after_attempt": 1, "after": 1})).json()
    assert [e["sequence"] for e in page["entries"]] == [2]
    page = (await http.get(path(script), params={"attempt": 1, "after": 1})).json()
    assert [e["sequence"] for e in page["entries"]] == [2]


async def _count(http, script: Script, count: int) -> bool:
    return len((await http.get(path(script))).json().get("entries", [])) == count


async def _found(http, url: str) -> bool:
    return (await http.get(url)).status_code == 200


async def _stored_texts(http, script: Script) -> list[str]:
    answer = (await http.get(path(script))).json()
    return [e["text"] for e in answer["entries"]]


async def test_entries_published_while_no_gateway_runs_are_kept_within_the_streams_age(
    http, gateway_server, nc, script
):
    """With the default retention (a week) the telemetry stream outlives a gateway's
    night away: entries published while it is stopped are folded when it starts, and
    nothing is counted lost."""
    config = (await nc.jetstream().stream_info(TELEMETRY_STREAM)).config
    assert config.max_age == 7 * 24 * 3600 and config.max_age > 3600
    await publish(nc, script.requested(), entry(script, 1, 0, "prompt", text="before"))
    await complete(http, script, 1)
    await gateway_server.stop()
    await publish(nc, entry(script, 1, 1, text="while away"), entry(script, 1, 2, text="later"))
    await gateway_server.start()
    async with gateway_server.client() as client:
        await complete(client, script, 3)
        assert await _stored_texts(client, script) == ["before", "while away", "later"]
    assert gateway_server.gateway is not None
    assert gateway_server.gateway.projector.telemetry_lost == 0


async def test_entries_the_stream_dropped_while_no_gateway_ran_are_counted_lost(
    make_gateway, nc, nats_url, script
):
    """The stream's own age (one second here, for the week of the default): entries
    published while no gateway runs and older than it are gone when a gateway starts;
    it counts the sequences it never saw, says so, and folds what came after them."""
    runtime = RuntimeSettings(
        nats_url=nats_url, host="127.0.0.1", port=free_port(), telemetry_max_age_seconds=1.0
    )
    server = await make_gateway(runtime=runtime)
    js = nc.jetstream()
    assert (await js.stream_info(TELEMETRY_STREAM)).config.max_age == 1.0
    async with server.client() as client:
        await publish(nc, script.requested(), entry(script, 1, 0, "prompt", text="before"))
        await complete(client, script, 1)
    await server.stop()
    lost_before = REGISTRY.get_sample_value("aether_telemetry_lost_total") or 0.0
    await publish(nc, entry(script, 1, 1, text="lost"), entry(script, 1, 2, text="lost too"))

    async def expired() -> bool:
        return (await js.stream_info(TELEMETRY_STREAM)).state.messages == 0

    await eventually(expired, timeout=30, what="the entries to expire")
    await server.start()
    async with server.client() as client:
        await publish(nc, entry(script, 1, 3, text="after"))
        await complete(client, script, 2)
        assert await _stored_texts(client, script) == ["before", "after"]
    assert server.gateway is not None and server.gateway.projector.telemetry_lost == 2
    assert REGISTRY.get_sample_value("aether_telemetry_lost_total") == lost_before + 2


async def test_entries_as_large_as_the_bus_carries_are_folded_and_other_missions_go_on(
    http, nc, script
):
    """An attempt's credential may publish what the runner's bounds would never send: one
    entry of nearly the largest message an attempt may publish (multi-byte characters, so
    the most bytes for the characters) and a group of many tiny entries filling it too.
    The gateway stores them and folds another mission's entry after them; an entry past
    that size (up to the server's largest message, which the server lets an attempt's
    credential publish) is passed over unread, and the rest goes on."""
    from .conftest import Script as Scripted
    from .conftest import new_mission_id

    await publish(nc, script.requested())
    largest = ATTEMPT_MAX_PAYLOAD
    # ``é`` is two bytes: the text alone is most of the message, the rest its envelope.
    big = entry(script, 1, 0, "output", text="é" * ((largest - 4096) // 2))
    one = len(encode(entry(script, 1, 999_999, "note", text="x")))
    tiny = [entry(script, 1, n, "note", text="x") for n in range(1, (largest - 4096) // one)]
    many = TranscriptEntries(
        **script.meta(), task_id="t1", attempt=1, runner_id="r-1", entries=tiny
    )
    past = entry(script, 2, 0, "output", text="é" * ((nc.max_payload - 4096) // 2))
    assert len(encode(past)) > ATTEMPT_MAX_PAYLOAD
    other = Scripted(new_mission_id())
    late = entry(other, 1, 0, "prompt", text="other")
    await publish(nc, big, past, many, other.requested(), late)
    await eventually(lambda: _texts_of(http, other, ["other"]), what="the other mission's entry")
    stored: list[dict] = []
    params: dict = {"limit": 1000}
    while True:
        answer = (await http.get(path(script), params=params)).json()
        stored += answer["entries"]
        if not answer.get("next"):
            break
        params = {"limit": 1000, **answer["next"]}
    assert [e["sequence"] for e in stored] == list(range(1 + len(tiny)))
    assert {e["attempt"] for e in stored} == {1}
    assert stored[0]["text"] == big.text
    assert len(encode(many)) <= largest


async def _texts_of(http, script: Script, expected: list[str]) -> bool:
    return await _stored_texts(http, script) == expected


async def test_entries_missing_from_a_run_are_said_where_the_numbering_allows(
    http, gateway_server, nc, script, capsys
):
    """Entries the telemetry stream dropped before a gateway read them left no trace in
    a transcript. A runtime other than the built-in loop numbers one run's entries without
    a hole, each run from a multiple of the stride: a jump there is entries missing, said
    by the route (``missing_before``, across pages too) and the CLI. The built-in loop's
    numbers have holes of their own (journal records that show nothing): nothing is said."""
    import asyncio

    from aether.cli import main
    from aether_events import TRANSCRIPT_RUN_STRIDE as STRIDE

    from .conftest import ADMIN_TOKEN

    def cli_entry(attempt: int, sequence: int, runtime: str = "claude-code"):
        return TranscriptRecorded(
            **script.meta(),
            task_id="t1",
            attempt=attempt,
            runner_id="r-1",
            sequence=sequence,
            kind="turn",
            runtime=runtime,
            text=f"said {sequence}",
        )

    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await publish(
        nc,
        cli_entry(1, 0),
        cli_entry(1, 1),
        cli_entry(1, 4),  # 2 and 3 dropped
        cli_entry(1, STRIDE + 2),  # the second run's first two dropped
        cli_entry(1, STRIDE + 3),
        cli_entry(2, 1),  # the attempt's first dropped
        cli_entry(3, 0, "builtin"),
        cli_entry(3, 5, "builtin"),  # a hole of the journal's: not a loss
    )
    whole = await complete(http, script, 8)
    said = {(e["attempt"], e["sequence"]): e["missing_before"] for e in whole["entries"]}
    assert said == {
        (1, 0): 0,
        (1, 1): 0,
        (1, 4): 2,
        (1, STRIDE + 2): 2,
        (1, STRIDE + 3): 0,
        (2, 1): 1,
        (3, 0): 0,
        (3, 5): 0,
    }
    # A page that starts after an entry held counts from it.
    page = (await http.get(path(script), params={"after_attempt": 1, "after": 1})).json()
    assert page["entries"][0]["sequence"] == 4 and page["entries"][0]["missing_before"] == 2
    page = (await http.get(path(script), params={"attempt": 1, "after": 4, "limit": 1})).json()
    assert page["entries"][0]["missing_before"] == 2

    cli = ["--url", gateway_server.base_url, "--token", ADMIN_TOKEN, "mission", "logs"]
    assert await asyncio.to_thread(main, [*cli, script.mission_id, "t1", "--attempt", "1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    gaps = [line.strip() for line in listed if "missing" in line]
    assert gaps == [
        "… 2 entries missing: the telemetry stream dropped them before the gateway stored them",
        "… 2 entries missing: the telemetry stream dropped them before the gateway stored them",
    ]
    assert (
        listed.index(next(line for line in listed if "missing" in line))
        == listed.index(next(line for line in listed if line.strip() == "said 1")) + 1
    )


async def _all_entries(http, script: Script, **params) -> tuple[list[dict], list[dict]]:
    stored: list[dict] = []
    query: dict = {"limit": 1000, **params}
    while True:
        answer = (await http.get(path(script), params=query)).json()
        stored += answer["entries"]
        if not answer.get("next"):
            return stored, answer["dropped"]
        query = {"limit": 1000, **params, **answer["next"]}


async def test_an_attempts_entries_past_the_gateways_cap_are_counted_not_kept(
    make_gateway, nc, script, capsys
):
    """A runner that ignores its own cap (or a stolen attempt credential) publishing
    without end: the gateway keeps the first ``AETHER_TRANSCRIPT_MAX_ENTRIES`` of the
    attempt, counts the rest once each (an attempt resumed publishes them again), says
    so on the transcript and in the metric, and other missions and attempts go on."""
    import asyncio

    from aether.cli import main

    from .conftest import ADMIN_TOKEN, new_mission_id
    from .conftest import Script as Scripted

    cap = 40
    server = await make_gateway(transcript_max_entries=cap)
    dropped_before = REGISTRY.get_sample_value("aether_transcript_entries_dropped_total") or 0.0
    other = Scripted(new_mission_id())
    await publish(nc, script.requested(), other.requested())
    # Singly and in groups (each folded its own way), another mission's events between.
    singles = [entry(script, 1, n, "note", text=f"e{n}") for n in range(30)]
    grouped = TranscriptEntries(
        **script.meta(),
        task_id="t1",
        attempt=1,
        runner_id="r-1",
        entries=[entry(script, 1, n, "note", text=f"e{n}") for n in range(30, 100)],
    )
    await publish(nc, *singles[:20], other.prepared(), *singles[20:], grouped)
    await publish(nc, entry(other, 1, 0, "prompt", text="other"), other.plan())
    # Resumed: the same entries again, then more; a second attempt has a cap of its own.
    await publish(nc, *singles, grouped, entry(script, 1, 100, "note", text="e100"))
    await publish(nc, *[entry(script, 2, n, "note", text=f"b{n}") for n in range(3)])
    async with server.client() as client:

        async def settled():
            stored, dropped = await _all_entries(client, script)
            return (stored, dropped) if len(stored) == cap + 3 and dropped else None

        stored, dropped = await eventually(settled, what="the capped transcript")
        await eventually(lambda: _texts_of(client, other, ["other"]), what="the other mission")
        mission = (await client.get(f"/missions/{other.mission_id}")).json()
        assert mission["tasks"], "the other mission's plan was folded"
        assert [e["sequence"] for e in stored if e["attempt"] == 1] == list(range(cap))
        assert [e["text"] for e in stored if e["attempt"] == 2] == ["b0", "b1", "b2"]
        assert dropped == [{"attempt": 1, "entries": 101 - cap}]
        only_two = await _all_entries(client, script, attempt=2)
        assert only_two[1] == []
    cli = ["--url", server.base_url, "--token", ADMIN_TOKEN, "mission", "logs"]
    assert await asyncio.to_thread(main, [*cli, script.mission_id, "t1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # Said after attempt 1's entries, before attempt 2's.
    said = printed.index(f"attempt 1: {101 - cap} entries dropped by the gateway's cap")
    assert any("e39" in line for line in printed[:said])
    assert not any("b0" in line for line in printed[:said])
    assert any("b0" in line for line in printed[said:])
    assert REGISTRY.get_sample_value("aether_transcript_entries_dropped_total") == (
        dropped_before + 101 - cap
    )
