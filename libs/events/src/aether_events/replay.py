"""Rebuilding a projection by replaying a stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aether_events.catalogue import Event
from aether_events.codec import UnknownEventType, decode
from aether_events.streams import MISSIONS_STREAM
from aether_events.subjects import mission_subject

S = TypeVar("S")


class ReplayResult(msgspec.Struct, kw_only=True):
    last_sequence: int = 0
    applied: int = 0
    skipped: int = 0


async def stored_messages(
    js: JetStreamContext, stream: str, subject: str, *, after: int = 0, batch: int = 256
) -> AsyncGenerator[Msg, None]:
    """Every message stored on ``subject`` after sequence ``after``, in stream order, as
    stored (undecoded). Uses an ephemeral pull consumer, deleted afterwards."""
    config = ConsumerConfig(
        filter_subject=subject,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=60.0,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=5.0)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                yield msg
                remaining = msg.metadata.num_pending or 0
    finally:
        await sub.unsubscribe()


async def replay(
    js: JetStreamContext,
    stream: str,
    subject: str,
    state: S,
    fold: Callable[[S, Event, int], S],
    *,
    after_sequence: int = 0,
    batch: int = 256,
) -> tuple[S, ReplayResult]:
    """Fold every stored event on ``subject`` (after ``after_sequence``) into ``state``.

    ``fold(state, event, stream_sequence)`` is called in stream order. Payloads that do not
    decode are counted and skipped: a projection is rebuilt from what can be read.
    """
    result = ReplayResult(last_sequence=after_sequence)
    messages = stored_messages(js, stream, subject, after=after_sequence, batch=batch)
    async with contextlib.aclosing(messages):
        async for msg in messages:
            seq = msg.metadata.sequence.stream
            try:
                event = decode(msg.data)
            except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
                result.skipped += 1
            else:
                state = fold(state, event, seq)
                result.applied += 1
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
