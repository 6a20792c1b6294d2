"""The runner's own uses of JetStream beyond the runtime's work consumer.

* The **work consumer** is one durable pull consumer shared by every runner process. The
  runner creates it itself, before the runtime would, because the runtime sizes
  ``max_ack_pending`` by one process's concurrency, and that limit is shared by every
  process bound to the consumer: two runners of two agents each would work two tasks
  between them. Here it is large; each process bounds itself by how many single-message
  subscribers ("lanes") it binds to the consumer.
* The **control follower** is an ephemeral, per-process consumer (``aether_runtime.follow``)
  on the events
  that end agents: a mission cancelled, failed or completed, an attempt timed out, a task
  skipped, and results of attempts (so a runner knows what others reported). Every process
  must see every such event, which a shared durable consumer cannot do; it starts right
  after the replayed position, so nothing between the replay and the subscription is
  missed, and it is made again after a disconnect from the last sequence it saw.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from aether_events import (
    MISSIONS_STREAM,
    AgentCompleted,
    AgentFailed,
    Event,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    TaskSkipped,
    TaskTimedOut,
    UnknownEventType,
    decode,
    type_subject,
)
from aether_runtime.follow import Follower

log = logging.getLogger("aether.agent-runner.bus")

CONTROL_TYPES: tuple[type[Event], ...] = (
    MissionAnswered,
    MissionCancelled,
    MissionFailed,
    MissionCompleted,
    TaskTimedOut,
    TaskSkipped,
    AgentCompleted,
    AgentFailed,
)
# Enough for every runner process of a large deployment; the real bound is the lanes.
MAX_ACK_PENDING = 4096


async def ensure_work_consumer(
    js: JetStreamContext,
    durable: str,
    subject: str,
    after_sequence: int,
    ack_wait_seconds: float,
    max_deliver: int = 20,
) -> None:
    """Create the shared work consumer (starting after ``after_sequence``: the replayed
    position, or earlier where attempts are still owed), or bring an existing one's ack
    wait and pending limit up to date (it keeps its position)."""
    try:
        info = await js.consumer_info(MISSIONS_STREAM, durable)
    except NotFoundError:
        config = ConsumerConfig(
            durable_name=durable,
            name=durable,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_seconds,
            max_deliver=max_deliver,
            max_ack_pending=MAX_ACK_PENDING,
            deliver_policy=(
                DeliverPolicy.BY_START_SEQUENCE if after_sequence else DeliverPolicy.ALL
            ),
            opt_start_seq=after_sequence + 1 if after_sequence else None,
        )
        try:
            await js.add_consumer(MISSIONS_STREAM, config=config)
        except BadRequestError as error:
            # Another runner created it meanwhile (its replay ended elsewhere): use that.
            try:
                await js.consumer_info(MISSIONS_STREAM, durable)
            except NotFoundError:
                raise error from None
        return
    current = info.config
    if current.max_ack_pending != MAX_ACK_PENDING or current.ack_wait != ack_wait_seconds:
        current.max_ack_pending = MAX_ACK_PENDING
        current.ack_wait = ack_wait_seconds
        await js.add_consumer(MISSIONS_STREAM, config=current)
        log.info(
            "work consumer updated",
            extra={"max_ack_pending": MAX_ACK_PENDING, "ack_wait": ack_wait_seconds},
        )


async def follow_control_events(
    js: JetStreamContext,
    after_sequence: int,
    on_event: Callable[[Event, int], Awaitable[None]],
) -> Follower:
    """Deliver every control event stored after ``after_sequence`` to ``on_event``, with
    its stream sequence, in order (until the returned follower is stopped)."""

    async def deliver(msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            return
        try:
            await on_event(event, msg.metadata.sequence.stream)
        except Exception:
            log.exception("control event not handled", extra={"subject": msg.subject})

    follower = Follower(
        js,
        MISSIONS_STREAM,
        [type_subject(cls) for cls in CONTROL_TYPES],
        deliver,
        after_sequence=after_sequence,
        name="agent-runner-control-events",
    )
    await follower.start()
    return follower
