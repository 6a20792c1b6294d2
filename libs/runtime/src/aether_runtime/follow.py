"""Following a stream in order from one process: what nats-py's ordered consumer does,
with a consumer named by the client.

nats-py's ordered consumer creates its consumer through ``$JS.API.CONSUMER.CREATE.<stream>``,
the one JetStream API subject that names no consumer: the server takes the name from the
request body, a durable's too, so bus permissions cannot let a service use it without
letting it reconfigure another service's durable (see ``bus_auth``). A ``Follower`` is an
ephemeral pull consumer with a name of its own (created through
``…CONSUMER.CREATE.<stream>.<name>``), fetching what is known to wait, else one message
(a larger batch than what is there waits out its timeout for more), and made again from
the last sequence it delivered when it is lost (a server restart, a disconnection longer
than its idle limit): every message once, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from aether_runtime.unanswered import asked_again

log = logging.getLogger("aether.runtime.follow")

MAX_BATCH = 256


class Follower:
    """Delivers the messages of ``stream`` on ``subjects`` after ``after_sequence`` (or,
    with ``new_only``, those stored from now on) to ``on_message``, one at a time."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subjects: list[str],
        on_message: Callable[[Msg], Awaitable[None]],
        *,
        after_sequence: int = 0,
        new_only: bool = False,
        name: str = "follower",
        fetch_seconds: float = 2.0,
        idle_seconds: float = 120.0,
        check_every: int = 5,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subjects = subjects
        self._on_message = on_message
        self.last_sequence = after_sequence
        self._new_only = new_only and not after_sequence
        self._name = name
        self._fetch_seconds = fetch_seconds
        self._idle_seconds = idle_seconds
        self._check_every = check_every
        self._pending = 0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def consumer(self) -> str | None:
        """The name of the consumer in use (None between two)."""
        return None if self._sub is None else self._sub._consumer

    async def start(self) -> None:
        """Create the consumer (so a failure shows at start-up) and start following.
        Asked again while the server does not answer (``unanswered``: a cluster electing
        leaders as one of its servers comes back)."""
        if self._new_only:
            # From the stream's end now, as a position: a consumer made again later goes on
            # from there rather than from its own "now".
            info = await asked_again(lambda: self._js.stream_info(self._stream), self._name)
            self.last_sequence = info.state.last_seq
            self._new_only = False
        await asked_again(self._subscribe, self._name)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        # The loop ends on the flag too, not on its cancellation alone: on Python 3.11 a
        # cancellation that arrives as a fetch's answer does is swallowed by the
        # ``asyncio.wait_for`` inside nats-py (the fetch returns normally), and a loop that
        # only stopped when cancelled then fetched on forever, its stop waiting behind it.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unsubscribe()

    async def _subscribe(self) -> None:
        after = self.last_sequence
        if after:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, after + 1
        else:
            policy, start = DeliverPolicy.ALL, None
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=policy,
            opt_start_seq=start,
            inactive_threshold=self._idle_seconds,
        )
        if len(self._subjects) > 1:
            config.filter_subjects = list(self._subjects)
        self._sub = await self._js.pull_subscribe(
            self._subjects[0], stream=self._stream, config=config
        )

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._sub.unsubscribe()
            self._sub = None

    async def _run(self) -> None:
        idle = 0
        while not self._stopping:
            try:
                if self._sub is None:
                    await self._subscribe()
                assert self._sub is not None
                try:
                    # What the last message said is waiting, at once (it is there: the
                    # fetch returns without waiting); else one, as soon as it comes.
                    batch = min(max(self._pending, 1), MAX_BATCH)
                    messages = await self._sub.fetch(batch, timeout=self._fetch_seconds)
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
                    "consumer lost; following again",
                    extra={"follower": self._name, "after": self.last_sequence},
                )
                await self._unsubscribe()
            except Exception as error:
                log.warning(
                    "following interrupted", extra={"follower": self._name, "error": repr(error)}
                )
                await self._unsubscribe()
                await asyncio.sleep(0.5)

    async def _deliver(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        if sequence <= self.last_sequence:
            return  # already delivered before the consumer was made again
        self.last_sequence = sequence
        self._pending = msg.metadata.num_pending or 0
        try:
            await self._on_message(msg)
        except Exception:
            log.exception("message not handled", extra={"follower": self._name})
