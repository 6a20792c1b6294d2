"""The runner's own uses of JetStream beyond the runtime's work consumer.

* The **work consumer** is one durable pull consumer shared by every runner process. The
  runner creates it itself, before the runtime would, because the runtime sizes
  ``max_ack_pending`` by one process's concurrency, and that limit is shared by every
  process bound to the consumer: two runners of two agents each would work two tasks
  between them. Here it is large; each process bounds itself by how many single-message
  subscribers ("lanes") it binds to the consumer.
* The **control follower** is an ephemeral, per-process consumer on the events
  that end agents: a mission cancelled, failed or completed, an attempt timed out, a task
  skipped, and results of attempts (so a runner knows what others reported). Every process
  must see every such event, which a shared durable consumer cannot do; it starts right
  after the replayed position, so nothing between the replay and the subscription is
  missed, and it is made again after a disconnect from the last sequence it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    AgentCompleted,
    AgentFailed,
    Event,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    TaskSkipped,
    TaskTimedOut,
    UnknownEventType,
    decode,
    type_subject,
)

log = logging.getLogger("aether.agent-runner.bus")

CONTROL_TYPES: tuple[type[Event], ...] = (
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


class ControlFollower:
    """Delivers every control event stored after a position to ``on_event``, in order.

    An ephemeral pull consumer with a name of its own: nats-py's ordered push consumer
    would be simpler, but it creates its consumer through the one JetStream API subject
    that names no consumer, which bus permissions cannot narrow (through it, a durable of
    another service could be reconfigured), so the runner's user is not allowed it. When
    the consumer is lost (a server restart, a disconnection longer than its idle limit)
    it is made again from the last sequence seen, so nothing is missed or repeated.
    """

    def __init__(
        self,
        js: JetStreamContext,
        after_sequence: int,
        on_event: Callable[[Event], Awaitable[None]],
        *,
        fetch_seconds: float = 2.0,
        idle_seconds: float = 120.0,
        check_every: int = 5,
    ) -> None:
        self._js = js
        self.last_sequence = after_sequence
        self._on_event = on_event
        self._fetch_seconds = fetch_seconds
        self._idle_seconds = idle_seconds
        self._check_every = check_every
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the consumer (so a failure shows at start-up) and start following."""
        await self._subscribe()
        self._task = asyncio.create_task(self._run(), name="agent-runner-control-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unsubscribe()

    async def _subscribe(self) -> None:
        after = self.last_sequence
        config = ConsumerConfig(
            filter_subjects=[type_subject(cls) for cls in CONTROL_TYPES],
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after else None,
            inactive_threshold=self._idle_seconds,
        )
        self._sub = await self._js.pull_subscribe(
            ALL_MISSION_EVENTS, stream=MISSIONS_STREAM, config=config
        )

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._sub.unsubscribe()
            self._sub = None

    async def _run(self) -> None:
        idle = 0
        while True:
            try:
                if self._sub is None:
                    await self._subscribe()
                assert self._sub is not None
                try:
                    # One at a time: a larger batch waits out its timeout for more.
                    messages = await self._sub.fetch(1, timeout=self._fetch_seconds)
                except nats.errors.TimeoutError:
                    idle += 1
                    if idle % self._check_every == 0:
                        # Nothing for a while: is the consumer still there?
                        await self._sub.consumer_info()
                    continue
                idle = 0
                for msg in messages:
                    await self._deliver(msg)
            except asyncio.CancelledError:
                raise
            except NotFoundError:
                log.info(
                    "control consumer lost; following again", extra={"after": self.last_sequence}
                )
                await self._unsubscribe()
            except Exception as error:
                log.warning("control events interrupted", extra={"error": repr(error)})
                await self._unsubscribe()
                await asyncio.sleep(0.5)

    async def _deliver(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        if sequence <= self.last_sequence:
            return  # already delivered before the consumer was made again
        self.last_sequence = sequence
        try:
            event = decode(msg.data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            return
        try:
            await self._on_event(event)
        except Exception:
            log.exception("control event not handled", extra={"subject": msg.subject})


async def follow_control_events(
    js: JetStreamContext,
    after_sequence: int,
    on_event: Callable[[Event], Awaitable[None]],
) -> ControlFollower:
    """Deliver every control event stored after ``after_sequence`` to ``on_event`` (until
    the returned follower is stopped)."""
    follower = ControlFollower(js, after_sequence, on_event)
    await follower.start()
    return follower
