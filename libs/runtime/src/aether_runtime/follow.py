"""Following a stream in order from one process: what nats-py's ordered consumer does,
with a consumer named by the client.

nats-py's ordered consumer creates its consumer through ``$JS.API.CONSUMER.CREATE.<stream>``,
the one JetStream API subject that names no consumer: the server takes the name from the
request body, a durable's too, so bus permissions cannot let a service use it without
letting it reconfigure another service's durable (see ``bus_auth``). A ``Follower`` is an
ephemeral pull consumer with a name of its own (created through
``…CONSUMER.CREATE.<stream>.<name>``), made again from the last sequence it delivered when
it is lost (a server restart, a disconnection longer than its idle limit): every message
once, in stream order.

It keeps a *standing* request at the server: one pull request for up to ``MAX_BATCH``
messages that lives ``fetch_seconds``, renewed while half of it is still unused, so the
server sends each new message as it is stored, on a request already waiting. Fetching one
message per request (as nats-py's ``fetch`` does while nothing is known to wait) cost a
request and its round trip for every message followed: the gateway's two followers
alone made thirteen requests a task of a chained mission. A request the server ends
(expired, 408) is renewed; one that ends otherwise (the consumer deleted, no consumer
to answer), or that nothing is heard of past its life, has the consumer looked up, and
made again from the last sequence delivered when it is gone. Given the service's
``Reconnects``, it asks again at once when the connection comes back (the request in
flight went down with the server) instead of waiting out the request's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from aether_runtime.alarm import Alarm
from aether_runtime.pull import request_status, still_asked
from aether_runtime.reconnect import Reconnects
from aether_runtime.service import delivered_as
from aether_runtime.unanswered import asked_again, stream_end

log = logging.getLogger("aether.runtime.follow")

# How many messages one standing request asks for.
MAX_BATCH = 256
# How long past a request's life it is taken for lost when the server said nothing.
GRACE_SECONDS = 1.0
# The pause before asking again after the server ended a request for another reason than
# its expiry and the consumer was found in place, so a follower does not spin.
REFUSED_PAUSE_SECONDS = 0.25
_LOST: Final = object()  # the connection came back: the requests in flight are gone
_TICK: Final = object()  # the time a word from the server was due came


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
        reconnects: Reconnects | None = None,
        patience: float | None = None,
    ) -> None:
        self._js = js
        # How long ``start`` asks a server that does not answer (None: a start's patience).
        self._patience = patience
        # The connection the JetStream context speaks through: the follower's requests
        # and the inbox its messages come to.
        self._nc: NatsClient = js._nc
        self._stream = stream
        self._subjects = subjects
        self._on_message = on_message
        self.last_sequence = after_sequence
        self._new_only = new_only and not after_sequence
        self._name = name
        self._fetch_seconds = fetch_seconds
        self._idle_seconds = idle_seconds
        self._check_every = check_every
        self._reconnects = reconnects
        self._woken: asyncio.Task[None] | None = None
        self._consumer: str | None = None
        self._sub: Subscription | None = None
        self._queue: asyncio.Queue[Msg | object] = asyncio.Queue()
        self._asked = 0  # messages asked for and not yet delivered, over live requests
        self._heard_by = 0.0  # when a word is due from the server, if a request is live
        # Rings when a word from the server was due (``aether_runtime.alarm``); the queue
        # is the one of the moment (made again with each consumer).
        self._alarm = Alarm(lambda: self._queue.put_nowait(_TICK))
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def consumer(self) -> str | None:
        """The name of the consumer in use (None between two)."""
        return self._consumer

    async def start(self) -> None:
        """Create the consumer (so a failure shows at start-up) and start following.
        Asked again while the server does not answer (``unanswered``: a cluster electing
        leaders as one of its servers comes back)."""
        if self._new_only:
            # From the stream's end now, as a position: a consumer made again later goes on
            # from there rather than from its own "now".
            self.last_sequence = await stream_end(self._js, self._stream, self._patience)
            self._new_only = False
        await asked_again(self._subscribe, self._name, self._patience)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self._name)
        if self._reconnects is not None:
            self._woken = asyncio.create_task(
                self._wake_at_reconnects(self._reconnects), name=f"{self._name}-reconnects"
            )

    async def _wake_at_reconnects(self, reconnects: Reconnects) -> None:
        while True:
            await reconnects.upcoming().wait()
            self._queue.put_nowait(_LOST)

    async def stop(self) -> None:
        self._stopping = True
        if self._woken is not None:
            self._woken.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._woken
            self._woken = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._alarm.cancel()
        await self._unsubscribe()

    async def _subscribe(self) -> None:
        """A consumer from the last sequence delivered, and a fresh inbox for it (what the
        previous one still sends is not read)."""
        await self._unsubscribe()
        after = self.last_sequence
        if after:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, after + 1
        else:
            policy, start = DeliverPolicy.ALL, None
        name = self._nc._nuid.next().decode()
        config = ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            deliver_policy=policy,
            opt_start_seq=start,
            inactive_threshold=self._idle_seconds,
        )
        if len(self._subjects) > 1:
            config.filter_subjects = list(self._subjects)
        else:
            config.filter_subject = self._subjects[0]
        await self._js.add_consumer(self._stream, config=config)
        self._queue = asyncio.Queue()
        self._sub = await self._nc.subscribe(self._nc.new_inbox(), cb=self._arrived)
        self._consumer = name
        self._asked = 0

    async def _arrived(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    async def _unsubscribe(self) -> None:
        self._consumer = None
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._sub.unsubscribe()
            self._sub = None

    async def _ask(self) -> None:
        """A request for ``MAX_BATCH`` more messages, living ``fetch_seconds``."""
        assert self._sub is not None
        assert self._consumer is not None
        body = {"batch": MAX_BATCH, "expires": int(self._fetch_seconds * 1e9)}
        await self._nc.publish(
            f"{self._js._prefix}.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}",
            json.dumps(body).encode(),
            reply=self._sub.subject,
        )
        self._asked += MAX_BATCH
        self._heard_by = time.monotonic() + self._fetch_seconds + GRACE_SECONDS

    async def _run(self) -> None:
        idle = 0
        while not self._stopping:
            try:
                if self._sub is None:
                    await self._subscribe()
                if self._asked <= MAX_BATCH // 2:
                    await self._ask()
                if self._queue.empty():
                    self._alarm.at(self._heard_by)
                    item = await self._queue.get()
                else:
                    item = self._queue.get_nowait()
                if item is _TICK:
                    if time.monotonic() >= self._heard_by:
                        # Not a word past the request's life: lost with the connection.
                        self._asked = 0
                        await self._check()
                    continue
                if item is _LOST:
                    self._asked = 0  # ask the restarted server now
                    continue
                assert isinstance(item, Msg)
                status = request_status(item)
                if status is None:
                    idle = 0
                    self._asked = max(self._asked - 1, 0)
                    await self._deliver(item)
                elif status == "408":  # expired
                    self._asked = still_asked(self._asked, item)
                    idle += 1
                    if idle % self._check_every == 0:
                        await self._check()  # nothing for a while: is the consumer there?
                elif status != "100":  # 100: a heartbeat
                    # Ended otherwise: the consumer deleted, or nobody there to answer.
                    self._asked = 0
                    log.debug(
                        "pull request ended",
                        extra={"follower": self._name, "status": status},
                    )
                    await self._check()
                    await asyncio.sleep(REFUSED_PAUSE_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "following interrupted", extra={"follower": self._name, "error": repr(error)}
                )
                await self._unsubscribe()
                await asyncio.sleep(0.5)

    async def _check(self) -> None:
        """Look the consumer up; when it is gone, follow again from the last sequence."""
        if self._consumer is None:
            return
        try:
            await self._js.consumer_info(self._stream, self._consumer)
        except NotFoundError:
            log.info(
                "consumer lost; following again",
                extra={"follower": self._name, "after": self.last_sequence},
            )
            await self._unsubscribe()

    async def _deliver(self, msg: Msg) -> None:
        sequence = delivered_as(msg)[0]
        if sequence <= self.last_sequence:
            return  # already delivered before the consumer was made again
        self.last_sequence = sequence
        try:
            await self._on_message(msg)
        except Exception:
            log.exception("message not handled", extra={"follower": self._name})
