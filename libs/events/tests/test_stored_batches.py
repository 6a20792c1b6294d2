"""Reading a stream back in batches, against a real NATS JetStream server: every message
once, in stream order, across many pull requests, filtered, after a sequence, and ended
early without leaving the read half open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from aether.infra import EmbeddedNats
from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    EventPublisher,
    MissionMessagePosted,
    MissionRequested,
    ReplayStalled,
    derived_id,
    ensure_streams,
    stored_messages,
)
from aether_events.replay import stored_batches
from aether_events.subjects import type_subject

NOW = datetime(2026, 11, 30, tzinfo=UTC)


async def store(nc: NatsClient, count: int) -> None:
    """``count`` events, a MissionRequested every third (seq 1, 4, 7, …), the rest posts."""
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    for i in range(count):
        mission = f"m{i % 4}"
        if i % 3 == 0:
            await publisher.publish(
                MissionRequested(
                    event_id=derived_id(mission, f"requested-{i}"),
                    mission_id=mission,
                    occurred_at=NOW,
                    correlation_id="c",
                    repository="/r",
                    requirement=f"r{i}",
                )
            )
        else:
            await publisher.publish(
                MissionMessagePosted(
                    event_id=derived_id(mission, f"posted-{i}"),
                    mission_id=mission,
                    occurred_at=NOW,
                    correlation_id="c",
                    text=f"t{i}",
                )
            )


async def test_many_small_batches_give_every_message_once_in_order(nc: NatsClient) -> None:
    await store(nc, 50)
    js = nc.jetstream()
    sizes: list[int] = []
    seqs: list[int] = []
    async for batch in stored_batches(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, batch=7):
        sizes.append(len(batch))
        seqs += [msg.metadata.sequence.stream for msg in batch]
    assert seqs == list(range(1, 51))
    assert sizes == [7] * 7 + [1]


async def test_a_filtered_read_after_a_sequence_gives_only_that_type_after_it(
    nc: NatsClient,
) -> None:
    await store(nc, 40)
    js = nc.jetstream()
    subject = type_subject(MissionRequested)
    seqs = [
        msg.metadata.sequence.stream
        async for msg in stored_messages(js, MISSIONS_STREAM, subject, after=10, batch=3)
    ]
    assert seqs == list(range(13, 41, 3))
    nothing = [m async for m in stored_messages(js, MISSIONS_STREAM, subject, after=40)]
    assert nothing == []


async def test_a_read_ended_early_can_be_followed_by_another(nc: NatsClient) -> None:
    await store(nc, 30)
    js = nc.jetstream()
    first: list[int] = []
    messages = stored_messages(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, batch=4)
    async with contextlib.aclosing(messages):
        async for msg in messages:
            first.append(msg.metadata.sequence.stream)
            if len(first) == 6:
                break
    assert first == [1, 2, 3, 4, 5, 6]
    again = [
        msg.metadata.sequence.stream
        async for msg in stored_messages(js, MISSIONS_STREAM, ALL_MISSION_EVENTS, after=6)
    ]
    assert again == list(range(7, 31))


STORED = 500


class Pausable:
    """A NATS server of the test's own that it can stop answering (SIGSTOP: it takes
    requests and answers none) and let go on."""

    def __init__(self, server: EmbeddedNats) -> None:
        self.server = server
        self.paused = False

    def pause(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.server.process is not None:
            os.kill(self.server.process.pid, signal.SIGCONT)
        self.paused = False


@contextlib.asynccontextmanager
async def pausable_server() -> AsyncIterator[tuple[Pausable, NatsClient]]:
    """A server of the test's own with ``STORED`` events, and a client of it; let go on
    and removed at the end."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-nats-"))
    server = EmbeddedNats(data).start()
    pausable = Pausable(server)
    nc = await nats.connect(server.url)
    try:
        await store(nc, STORED)
        yield pausable, nc
    finally:
        pausable.resume()
        await nc.close()
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


async def test_a_server_that_stops_answering_mid_read_ends_it_with_an_error_not_a_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What arrived is given, and then the read fails: a silent server must not make a
    part of the history pass for all of it."""
    # Many more stored than the read can take before the stop holds (a signal may take a
    # moment to stop a server answering on the other core, or a loaded machine's
    # scheduler longer): what it reads then is still a part, never the whole.
    async with pausable_server() as (server, nc):
        seqs: list[int] = []

        async def read() -> None:
            async for batch in stored_batches(
                nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS, batch=5
            ):
                seqs.extend(msg.metadata.sequence.stream for msg in batch)
                if not server.paused:
                    server.pause()
                    # A short wait from here on (the module, not the package's ``replay``
                    # function of the same name); the first batch had the usual one.
                    monkeypatch.setattr(sys.modules["aether_events.replay"], "PULL_TIMEOUT", 1.0)

        with pytest.raises(ReplayStalled) as stalled:
            await read()
        # What arrived, in order, and not all of it.
        assert 5 <= len(seqs) < STORED and seqs == list(range(1, len(seqs) + 1))
        assert f"{STORED - len(seqs)} messages still to come" in str(stalled.value)


async def test_a_patient_read_goes_on_from_where_it_stopped_once_the_server_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start-up replay through a server that stops answering for a while (a cluster
    electing a leader): read again from the last message read, every message once, in
    order."""
    monkeypatch.setattr(sys.modules["aether_events.replay"], "PULL_TIMEOUT", 1.0)
    async with pausable_server() as (server, nc):
        seqs: list[int] = []
        loop = asyncio.get_running_loop()
        async for batch in stored_batches(
            nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS, batch=50, patience=30.0
        ):
            seqs.extend(msg.metadata.sequence.stream for msg in batch)
            if len(seqs) == 50:
                # Silent for longer than a pull waits, then answering again.
                server.pause()
                loop.call_later(2.5, server.resume)
        assert seqs == list(range(1, STORED + 1))


class _FirstAnswerEmpty:
    """Makes the server answer a read's first pull request with nothing though messages
    are stored, as a stream's new leader in a cluster can before it has caught up: the
    request asks for at most one byte, so the server answers with a status and delivers
    (and so uses up) nothing. ``then`` runs before that request is sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, then: Any = None) -> None:
        module = sys.modules["aether_events.replay"]
        self.emptied = 0
        outer = self

        class Json:
            @staticmethod
            def dumps(request: dict[str, Any]) -> str:
                if outer.emptied == 0:
                    outer.emptied += 1
                    request = {**request, "max_bytes": 1}
                return json.dumps(request)

        monkeypatch.setattr(module, "json", Json)
        if then is not None:
            real_add = module.JetStreamContext.add_consumer

            async def add_then(js: Any, *args: Any, **kwargs: Any) -> Any:
                info = await real_add(js, *args, **kwargs)
                await then()
                return info

            monkeypatch.setattr(module.JetStreamContext, "add_consumer", add_then)


async def test_a_read_answered_with_nothing_while_more_is_stored_asks_again(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty answer is not the end while the consumer still counts messages to
    deliver: the read asks again and gives them all, in order."""
    await store(nc, 20)
    empty = _FirstAnswerEmpty(monkeypatch)
    seqs = [
        msg.metadata.sequence.stream
        async for msg in stored_messages(nc.jetstream(), MISSIONS_STREAM, ALL_MISSION_EVENTS)
    ]
    assert empty.emptied == 1
    assert seqs == list(range(1, 21))


async def test_a_read_answered_with_nothing_because_the_messages_are_gone_ends(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages purged (or aged out) after the read began: the consumer counts none
    left, so the empty answer ends the read, with no error."""
    await store(nc, 20)
    js = nc.jetstream()

    async def purge() -> None:
        await js.purge_stream(MISSIONS_STREAM)

    empty = _FirstAnswerEmpty(monkeypatch, then=purge)
    seqs = [msg async for msg in stored_messages(js, MISSIONS_STREAM, ALL_MISSION_EVENTS)]
    assert empty.emptied == 1
    assert seqs == []
