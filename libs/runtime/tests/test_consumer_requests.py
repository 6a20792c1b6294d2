"""Creating a durable, and a follower's consumer, through a moment a real cluster shows
after one of its servers comes back: the consumer's requests go unanswered until its
group has a leader. These drive ``ensure_consumer``, ``Follower.start`` and
``stream_end`` with a stand-in for the JetStream API that answers that way, and a whole
start-up replay through a real server that stops answering as it begins (the restart
itself runs on a real three-node cluster in ``tests/e2e/test_cluster.py``)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from aether.infra import EmbeddedNats
from aether_events import (
    ALL_MISSION_EVENTS,
    Event,
    EventPublisher,
    MissionMessagePosted,
    StreamSettings,
    derived_id,
    ensure_streams,
)
from aether_runtime import ConsumerSpec, Delivery, Projection, ensure_consumer, unanswered
from aether_runtime.follow import Follower
from aether_runtime.testing import Unanswering
from aether_runtime.unanswered import stream_end


async def ignore(event: Event, delivery: Delivery) -> None:
    return None


SPEC = ConsumerSpec(durable="scheduler", subject=ALL_MISSION_EVENTS, handler=ignore)


class Electing(Unanswering):
    """Unanswered for ``silent`` requests (a timeout, or "temporarily unavailable"),
    then a cluster with no such consumer yet, where our add may itself go unanswered
    although it created the consumer."""

    def __init__(self, silent: int, lost_add: bool = False) -> None:
        super().__init__(silent)
        self.lost_add = lost_add
        self.created: list[Any] = []

    async def consumer_info(self, stream: str, durable: str) -> Any:
        self.answer()
        if not self.created:
            raise NotFoundError(description="consumer not found")
        return type("Info", (), {"config": self.created[-1]})()

    async def add_consumer(self, stream: str, config: Any) -> Any:
        self.answer()
        self.created.append(config)
        if self.lost_add and len(self.created) == 1:
            raise nats.errors.TimeoutError
        return None


async def test_a_consumer_request_the_cluster_does_not_answer_yet_is_asked_again() -> None:
    js = Electing(silent=3)
    await ensure_consumer(cast(JetStreamContext, js), SPEC, 41)
    (config,) = js.created
    assert config.opt_start_seq == 42


async def test_a_creation_that_timed_out_but_happened_is_found_not_made_twice() -> None:
    js = Electing(silent=0, lost_add=True)
    await ensure_consumer(cast(JetStreamContext, js), SPEC, 0)
    assert len(js.created) == 1


class QuietConnection:
    """A follower's connection, with nothing to deliver."""

    def __init__(self) -> None:
        self._nuid = type("Nuid", (), {"next": lambda self: b"follower-1"})()
        self.published: list[str] = []

    def new_inbox(self) -> str:
        return "_INBOX.quiet"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        class Quiet:
            async def unsubscribe(self) -> None:
                return None

        quiet = Quiet()
        quiet.subject = subject  # type: ignore[attr-defined]
        return quiet

    async def publish(self, subject: str, payload: bytes, reply: str) -> None:
        self.published.append(subject)


class ElectingForFollowers(Electing):
    _prefix = "$JS.API"

    def __init__(self, silent: int) -> None:
        super().__init__(silent)
        self._nc = QuietConnection()

    async def stream_info(self, stream: str) -> Any:
        self.answer()
        return type("Info", (), {"state": type("State", (), {"last_seq": 41})()})()


async def ignore_message(msg: Any) -> None:
    return None


async def test_a_follower_starting_on_a_cluster_that_does_not_answer_yet_asks_again() -> None:
    js = ElectingForFollowers(silent=3)
    follower = Follower(
        cast(JetStreamContext, js), "S", ["a.>"], ignore_message, new_only=True, name="control"
    )
    await follower.start()
    try:
        assert follower.consumer == "follower-1"
        (config,) = js.created
        assert config.name == "follower-1"
        assert config.opt_start_seq == 42
        assert follower.last_sequence == 41
    finally:
        await follower.stop()


async def test_the_end_of_a_stream_is_asked_again_while_the_cluster_does_not_answer() -> None:
    js = ElectingForFollowers(silent=3)
    assert await stream_end(cast(JetStreamContext, js), "S") == 41
    assert js.requests == 4


# What a start asks a cluster about, each asked again until its patience runs out.
NEVER_ANSWERED: dict[str, Callable[[JetStreamContext], Awaitable[object]]] = {
    "a durable": lambda js: ensure_consumer(js, SPEC, 0),
    "a follower's consumer": lambda js: Follower(js, "S", ["a.>"], ignore_message).start(),
    "the stream's end": lambda js: stream_end(js, "S"),
}


@pytest.mark.parametrize("request_of", NEVER_ANSWERED)
async def test_a_cluster_that_never_answers_fails_the_start_in_the_end(
    request_of: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unanswered, "PATIENCE_SECONDS", 0.5)
    js = ElectingForFollowers(silent=10_000)
    with pytest.raises((nats.errors.TimeoutError, ServiceUnavailableError)):
        await NEVER_ANSWERED[request_of](cast(JetStreamContext, js))
    assert js.requests > 1


async def test_a_start_up_replay_goes_through_a_server_that_stops_answering_at_its_start(
    nats_server: EmbeddedNats,
) -> None:
    """A projection's rebuild asks the stream where it ends, then reads it back. A real
    server stopped (SIGSTOP) for 2.5 s as the rebuild begins, with requests that time
    out after 1 s: the rebuild waits it out and folds every event once."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream(timeout=1.0)
        await ensure_streams(js, StreamSettings())
        publisher = EventPublisher(js)
        events = [posted(n) for n in range(20)]
        for event in events:
            await publisher.publish(event)
        projection: Projection[tuple[str, ...]] = Projection((), remember)
        assert nats_server.process is not None
        pid = nats_server.process.pid
        os.kill(pid, signal.SIGSTOP)
        resumed = asyncio.get_running_loop().call_later(2.5, os.kill, pid, signal.SIGCONT)
        try:
            last = await asyncio.wait_for(projection.rebuild(js, "test"), 60)
        finally:
            resumed.cancel()
            os.kill(pid, signal.SIGCONT)
        assert projection.state == tuple(e.event_id for e in events)
        assert last == 20
    finally:
        await nc.close()


def posted(n: int) -> MissionMessagePosted:
    return MissionMessagePosted(
        event_id=derived_id("m", f"posted-{n}"),
        mission_id="m",
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id("m", "requested"),
        text="x",
        author="a",
    )


def remember(state: tuple[str, ...], event: Event) -> tuple[str, ...]:
    return (*state, event.event_id)
