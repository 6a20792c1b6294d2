"""Rebuilding a projection by replaying a stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.errors import ServiceUnavailableError

from aether_events.catalogue import Event
from aether_events.codec import UnknownEventType, decode
from aether_events.streams import MISSIONS_STREAM
from aether_events.subjects import mission_subject, on_its_subject

S = TypeVar("S")

log = logging.getLogger("aether.events.replay")


# One subject filter, or several that do not overlap (an event type's two subject forms:
# ``type_subjects``).
Subjects = str | Sequence[str]


def filters_of(subject: Subjects) -> tuple[str | None, list[str] | None]:
    """The ``filter_subject`` and ``filter_subjects`` of a consumer reading ``subject``."""
    if isinstance(subject, str):
        return subject, None
    subjects = list(dict.fromkeys(subject))
    if not subjects:
        raise ValueError("no subject to read")
    if len(subjects) == 1:
        return subjects[0], None
    return None, subjects


class ReplayResult(msgspec.Struct, kw_only=True):
    last_sequence: int = 0
    applied: int = 0
    skipped: int = 0


# How long a read waits for the server to answer one pull request.
PULL_TIMEOUT = 5.0
# How long a service's start-up reads of its history go on through a server that stops
# answering (``stored_batches``' patience): a cluster electing a leader.
START_PATIENCE_SECONDS = 30.0
# What a server says while it cannot answer yet (a request timed out, or "temporarily
# unavailable").
UNANSWERED = (nats.errors.TimeoutError, ServiceUnavailableError)


class ReplayStalled(TimeoutError):
    """The server stopped answering a read of stored messages before it had given them
    all: what was read is not the whole history. The read can be made again."""


async def stored_messages(
    js: JetStreamContext,
    stream: str,
    subject: Subjects,
    *,
    after: int = 0,
    batch: int = 2048,
    patience: float = 0.0,
) -> AsyncGenerator[Msg, None]:
    """Every message stored on ``subject`` (one filter or several) after sequence
    ``after``, in stream order, as stored (undecoded). Read in batches by ``stored_batches``."""
    batches = stored_batches(js, stream, subject, after=after, batch=batch, patience=patience)
    async with contextlib.aclosing(batches):
        async for msgs in batches:
            for msg in msgs:
                yield msg


async def stored_batches(
    js: JetStreamContext,
    stream: str,
    subject: Subjects,
    *,
    after: int = 0,
    batch: int = 2048,
    patience: float = 0.0,
    max_bytes: int = 0,
) -> AsyncGenerator[list[Msg], None]:
    """``stored_messages`` in lists of up to ``batch``, one pull request each, and of
    about ``max_bytes`` at most when given (which must hold the largest message stored:
    the server answers a pull whose first message does not fit with nothing).

    ``patience``: for how many seconds a read the server stops answering (``ReplayStalled``),
    or whose consumer it does not create in time, is made again from the last message
    read, rather than failing at once: a service starting while a cluster elects a leader
    (a server of it just back) reads its history through that moment. Every message is
    still given once, in order, and a read that cannot go on past the patience fails as
    before.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + patience
    while True:
        reads = _stored_batches(js, stream, subject, after=after, batch=batch, max_bytes=max_bytes)
        try:
            async with contextlib.aclosing(reads):
                async for msgs in reads:
                    after = msgs[-1].metadata.sequence.stream
                    yield msgs
            return
        except (ReplayStalled, *UNANSWERED) as error:
            if loop.time() >= give_up_at:
                raise
            log.warning(
                "read of stored messages not answered; reading on",
                extra={"stream": stream, "after": after, "error": str(error)},
            )
        await asyncio.sleep(_EMPTY_PAUSE)


async def _stored_batches(
    js: JetStreamContext,
    stream: str,
    subject: Subjects,
    *,
    after: int = 0,
    batch: int = 2048,
    max_bytes: int = 0,
) -> AsyncGenerator[list[Msg], None]:
    """One read of ``stored_batches``, with no patience.

    An ephemeral pull consumer (named here, so per-service permissions allow it; left to
    its inactivity threshold, like nats-py's own) is asked for ``batch`` messages at a
    time, and they are gathered by a subscription's callback. nats-py's ``fetch`` makes a
    task and a timer for every message it returns, which a start-up replay of tens of
    thousands of events pays over and over; here a batch costs one request and one wait.
    A server that stops answering while the stream holds more raises ``ReplayStalled``
    (after the messages that did arrive).
    """
    nc = js._nc
    one, several = filters_of(subject)
    name = nc._nuid.next().decode()
    config = ConsumerConfig(
        name=name,
        filter_subject=one,
        filter_subjects=several,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=60.0,
    )
    info = await js.add_consumer(stream, config=config)
    remaining = info.num_pending or 0
    next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{name}"
    loop = asyncio.get_running_loop()
    # Since when pulls have been answered with nothing while the consumer counted more.
    empty_since: float | None = None
    while remaining > 0:
        wanted = min(batch, remaining)
        # A subscription of its own for each request, so nothing late of an earlier one
        # (a message or a status) is taken for it.
        pull = _Pull(wanted)
        sub = await nc.subscribe(nc.new_inbox(), cb=pull.arrive)
        try:
            asked: dict[str, object] = {"batch": wanted, "no_wait": True}
            if max_bytes:
                asked["max_bytes"] = max_bytes
            request = json.dumps(asked).encode()
            await nc.publish(next_subject, request, reply=sub.subject)
            timed_out = False
            try:
                await asyncio.wait_for(pull.done.wait(), timeout=PULL_TIMEOUT)
            except TimeoutError:
                timed_out = True
        finally:
            await sub.unsubscribe()
        msgs = pull.msgs
        if msgs:
            yield msgs
        if timed_out:
            # The server stopped answering (a node lost, a leader being elected) while
            # the stream held more: a read that ended here would pass a part of the
            # history for the whole of it (a start-up replay, a mission's history).
            raise ReplayStalled(
                f"{stream} did not answer a read of {subject!r} for"
                f" {PULL_TIMEOUT:.0f} s with {remaining - len(msgs)} messages still to come"
            )
        if msgs:
            remaining = msgs[-1].metadata.num_pending or 0
            empty_since = None
            continue
        # Answered with nothing while the consumer counted more: either they are gone
        # (an age limit, a purge) or the server cannot give them yet (a new stream leader
        # in a cluster, catching up). The consumer's own count says which; a read that
        # ended here on the second would pass a part of the history for all of it.
        remaining = await _pending(js, stream, name, remaining)
        if remaining == 0:
            break
        empty_since = loop.time() if empty_since is None else empty_since
        if loop.time() - empty_since > PULL_TIMEOUT:
            raise ReplayStalled(
                f"{stream} answered reads of {subject!r} with nothing for"
                f" {PULL_TIMEOUT:.0f} s with {remaining} messages still to come"
            )
        await asyncio.sleep(_EMPTY_PAUSE)


# Between reads answered with nothing while more are stored.
_EMPTY_PAUSE = 0.05


async def _pending(js: JetStreamContext, stream: str, consumer: str, known: int) -> int:
    """The consumer's count of messages still to deliver, or ``known`` when the server
    does not say (it may be electing a leader)."""
    try:
        info = await js.consumer_info(stream, consumer)
    except (TimeoutError, nats.errors.Error):
        return known
    return info.num_pending or 0


class _Pull:
    """The messages that answer one pull request, gathered by its subscription's callback
    (nats-py runs a subscription's callbacks one after another, in arrival order)."""

    def __init__(self, wanted: int) -> None:
        self.done = asyncio.Event()
        self.msgs: list[Msg] = []
        self._wanted = wanted

    async def arrive(self, msg: Msg) -> None:
        if self.done.is_set():
            return
        if msg.headers and msg.headers.get(Header.STATUS):
            # No more now (404), the request expired (408), the next message would pass
            # the request's bytes (409), or the consumer is gone (409).
            self.done.set()
            return
        self.msgs.append(msg)
        if len(self.msgs) >= self._wanted:
            self.done.set()


async def replay(
    js: JetStreamContext,
    stream: str,
    subject: Subjects,
    state: S,
    fold: Callable[[S, Event, int], S],
    *,
    after_sequence: int = 0,
    batch: int = 2048,
    patience: float = 0.0,
) -> tuple[S, ReplayResult]:
    """Fold every stored event on ``subject`` (after ``after_sequence``) into ``state``.

    ``fold(state, event, stream_sequence)`` is called in stream order. Payloads that do not
    decode, and events on a subject that does not name what they report on
    (``on_its_subject``), are counted and skipped: a projection is rebuilt from what can be
    read.
    """
    result = ReplayResult(last_sequence=after_sequence)
    messages = stored_messages(
        js, stream, subject, after=after_sequence, batch=batch, patience=patience
    )
    async with contextlib.aclosing(messages):
        async for msg in messages:
            seq = msg.metadata.sequence.stream
            try:
                event = decode(msg.data)
            except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
                result.skipped += 1
            else:
                if on_its_subject(event, msg.subject, len(msg.data)):
                    state = fold(state, event, seq)
                    result.applied += 1
                else:
                    result.skipped += 1
            result.last_sequence = seq
    return state, result


async def mission_history(js: JetStreamContext, mission_id: str) -> list[Event]:
    """Every stored event of one mission, in stream order (what cannot be read is skipped)."""

    def collect(events: list[Event], event: Event, _: int) -> list[Event]:
        events.append(event)
        return events

    initial: list[Event] = []
    events, _ = await replay(js, MISSIONS_STREAM, mission_subject(mission_id), initial, collect)
    return events
