"""Pulling a durable consumer's deliveries: one pull request for many messages.

Each lane of a service's consumers (``service.Service.consume``) is a ``Puller``: a
subscription on an inbox of the service's own and the pull requests it sends to the
consumer (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``). Messages are handed to the
lane's handler in the order they arrive, each as soon as it arrives: a request never
waits to fill its batch.

How much a lane asks for depends on who bounds what is in flight:

* A consumer with one lane whose limit of messages in flight is its own
  (``max_ack_pending`` of 1, the single-writer consumers; or 1 + ``hand_offs``, whose
  handlers release their message and go on, the gateway's and the planner's) keeps a
  *standing* request for a batch of messages, renewed before the message that uses it
  up is handled. The server delivers the next message once the limit allows, and then
  at once, on the request already waiting, rather than after the lane has asked again:
  a task's many deliveries cost one request per batch rather than a request and its
  round trip each. What waits on this side is bounded by that limit, and waits only for
  the handlers before it to release theirs.
* Any other lane (one the server lets deliver more than it holds: several lanes or
  processes sharing a durable under a limit of the durable's, several workers) asks
  only for what it has room for, when it has it: a message pulled by a busy lane would
  wait unhandled, and not kept alive, while another lane could have run it.

A standing lane may be *paced* (``pace``: the gateway's read model, which folds what
arrives in runs no closer than that anyway): its messages are then fetched in sweeps
rather than each as it is stored. A quiet lane keeps a standing request for one message,
so the first event after a quiet spell is delivered at once; from then on the lane asks,
at most once every ``pace`` seconds, for everything stored meanwhile (a request that does
not wait, ``no_wait``), until a sweep finds nothing and the lane is quiet again. A busy
stream's events then reach the process in a few bursts a second, each read, decoded and
acknowledged together, instead of one wake-up of the process per event, each taking CPU
from the services on the missions' path. ``hurry`` (someone waits for the read model)
sweeps at once.

A request lives ``expires`` seconds; the server ends it with a status (408) and the lane
asks again. One lost with a restarting server is not waited out: ``wake`` (called at a
reconnect) makes the lane ask again at once. Stopping, the lane unsubscribes (the server
drops requests nobody listens to), lets the running handler finish, and hands back what
arrived meanwhile.
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
from nats.js.api import Header

from aether_runtime.alarm import Alarm

log = logging.getLogger("aether.runtime.pull")

# How many messages a standing request asks for (the server still delivers them one at a
# time, each once the previous one is acknowledged).
STANDING_BATCH = 256
# How long past a request's expiry it is taken for lost when the server said nothing.
GRACE_SECONDS = 1.0
# The pause before asking again after the server refused a request (consumer gone, not
# answering yet), so a lane does not spin.
REFUSED_PAUSE_SECONDS = 0.25

_LOST: Final = object()  # the requests in flight are lost (a reconnect): ask again now
_FREED: Final = object()  # a handler finished: there may be room to ask for more
_STOP: Final = object()
_HURRY: Final = object()  # sweep now (a paced lane)
_TICK: Final = object()  # the time the lane waited for came (a request's expiry, a sweep)
# What a request the server ended still asked for.
_PENDING = "Nats-Pending-Messages"
# The status ending a request that does not wait (a sweep) with fewer messages than it
# asked for: nothing more is stored for the consumer now.
_NO_MESSAGES = "404"


class Puller:
    """Delivers the messages of one durable consumer to ``handle`` (see the module)."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        durable: str,
        inbox: str,
        handle: Callable[[Msg], Awaitable[None]],
        *,
        standing: bool,
        workers: int = 1,
        expires: float = 2.0,
        pace: float = 0.0,
    ) -> None:
        self._nc = nc
        self.durable = durable
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = inbox
        self._handle = handle
        self._standing = standing
        self._workers = max(workers, 1)
        self._expires = expires
        self._queue: asyncio.Queue[Msg | object] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Messages asked for and not yet delivered, over every live request.
        self._asked = 0
        self._expire_at = 0.0
        self.requests = 0  # pull requests sent (for tests and figures)
        # A paced lane (standing only, see the module): the earliest time of its next
        # sweep while it is busy (None: quiet, a standing request for one message), and
        # how many messages the sweep in flight brought so far (None: none in flight).
        self._pace = pace if standing else 0.0
        self._sweep_at: float | None = None
        self._swept: int | None = None
        self._last_sweep = 0.0
        # The lane's one timer for what it waits for besides its messages.
        self._alarm = Alarm(lambda: self._queue.put_nowait(_TICK))

    @property
    def asking(self) -> int:
        """How many messages the lane's live requests still ask for."""
        return self._asked

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)
        self._task = asyncio.create_task(self._run(), name=f"pull {self._subject}")

    async def _arrived(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    def wake(self) -> None:
        """The requests in flight are lost (the server restarted): ask again now."""
        self._queue.put_nowait(_LOST)

    def hurry(self) -> None:
        """A paced lane sweeps now rather than at its next turn (someone waits for what
        the stream holds to be handled); any other lane already has it delivered."""
        if self._pace > 0:
            self._queue.put_nowait(_HURRY)

    async def stop(self, graceful: float = 30.0) -> None:
        """Stop asking, let the running handlers finish (up to ``graceful`` seconds),
        and hand back what arrived and was not handled."""
        self._stopping = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._queue.put_nowait(_STOP)
        self._alarm.cancel()
        tasks = [t for t in (self._task, *self._running) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=graceful)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Msg) and request_status(item) is None and not item.is_acked:
                with contextlib.suppress(Exception):
                    await item.nak()

    def _room(self) -> int:
        """How many more messages to ask for now."""
        if self._pace > 0:
            if self._asked > 0 or (
                self._sweep_at is not None and time.monotonic() < self._sweep_at
            ):
                return 0
            # Quiet: one message, waited for; busy: a sweep of what is stored.
            return 1 if self._sweep_at is None else STANDING_BATCH
        if self._standing:
            return STANDING_BATCH if self._asked <= 0 else 0
        return self._workers - len(self._running) - self._asked

    async def _ask(self, count: int) -> None:
        request: dict[str, object] = {"batch": count}
        if self._pace > 0 and self._sweep_at is not None:
            # A sweep: what is stored now, ended at once by a status when it is less.
            request["no_wait"] = True
            self._swept = 0
            self._last_sweep = time.monotonic()
        else:
            request["expires"] = int(self._expires * 1e9)
        await self._nc.publish(self._subject, json.dumps(request).encode(), reply=self._inbox)
        self._asked += count
        self._expire_at = time.monotonic() + self._expires + GRACE_SECONDS
        self.requests += 1

    def _swept_all(self, found: int, full: bool) -> None:
        """A paced lane's sweep (or its standing request for one) ended having brought
        ``found`` messages; ``full``: as many as it asked for, so more may be stored."""
        self._swept = None
        if found == 0:
            self._sweep_at = None  # quiet again: the next message is waited for
        elif full:
            self._sweep_at = time.monotonic()  # more is stored: sweep again at once
        else:
            self._sweep_at = self._last_sweep + self._pace

    async def _run(self) -> None:
        pause_until = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= pause_until and (room := self._room()) > 0:
                try:
                    await self._ask(room)
                except Exception as error:
                    # Not connected: the reconnect wakes the lane.
                    log.debug("pull request not sent", extra={"error": repr(error)})
                    pause_until = now + REFUSED_PAUSE_SECONDS
            if self._asked > 0:
                until = self._expire_at
            elif now < pause_until:
                until = pause_until
            elif self._pace > 0 and self._sweep_at is not None:
                until = self._sweep_at
            else:
                until = now + self._expires
            if self._queue.empty():
                self._alarm.at(until)
                item = await self._queue.get()
            else:
                item = self._queue.get_nowait()
            if item is _TICK:
                if self._asked > 0 and time.monotonic() >= self._expire_at:
                    self._asked = 0  # every request expired without a word: lost
                continue
            if item is _STOP:
                return
            if item is _LOST:
                self._asked = 0
                if self._pace > 0:
                    # What was stored meanwhile is swept at once, as after a quiet spell.
                    self._swept = None
                    self._sweep_at = time.monotonic()
                continue
            if item is _HURRY:
                if self._sweep_at is not None and self._swept is None:
                    self._sweep_at = time.monotonic()
                continue
            if item is _FREED:
                continue
            assert isinstance(item, Msg)
            status = request_status(item)
            if status is not None:
                if self._swept is not None:
                    # The sweep ended short (nothing more stored, or the consumer's
                    # limit of messages in flight reached).
                    self._asked = 0
                    self._swept_all(self._swept, full=False)
                    if status != _NO_MESSAGES:
                        pause_until = max(pause_until, self._ended(item, status))
                    continue
                pause_until = max(pause_until, self._ended(item, status))
                continue
            self._asked = max(self._asked - 1, 0)
            if self._pace > 0:
                if self._swept is not None:
                    self._swept += 1
                    if self._asked == 0:
                        self._swept_all(self._swept, full=True)
                elif self._sweep_at is None:
                    # The first after a quiet spell: what follows it is swept, a turn on.
                    self._sweep_at = time.monotonic() + self._pace
                    self._last_sweep = time.monotonic()
            if self._standing and (room := self._room()) > 0:
                # The next request waits at the server while this message is handled.
                with contextlib.suppress(Exception):
                    await self._ask(room)
            if self._workers == 1:
                await self._handled(item)
            else:
                task = asyncio.create_task(self._handled(item))
                self._running.add(task)
                task.add_done_callback(self._finished)

    async def _handled(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception:
            # The handler settles its message itself; one that could not is delivered
            # again after its ack wait. The lane goes on.
            log.exception("delivery not handled", extra={"subject": self._subject})

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._stopping:
            self._queue.put_nowait(_FREED)

    def _ended(self, msg: Msg, status: str) -> float:
        """Account for a request the server ended; returns until when not to ask."""
        if status == "100":
            return 0.0  # a heartbeat
        headers = msg.headers or {}
        self._asked = still_asked(self._asked, msg) if status in ("408", "409") else 0
        if status == "408":
            return 0.0  # expired: ask again at once
        log.debug(
            "pull request refused",
            extra={"status": status, "description": headers.get(Header.DESCRIPTION)},
        )
        return time.monotonic() + REFUSED_PAUSE_SECONDS


def still_asked(asked: int, ended: Msg) -> int:
    """How many messages live requests still ask for once the server ended one with
    ``ended`` (408, 409): it says how many that one still asked for, else none is left."""
    left = (ended.headers or {}).get(_PENDING)
    if left is not None and left.isdigit():
        return max(asked - int(left), 0)
    return 0


def request_status(msg: Msg) -> str | None:
    """The status of a message the server sent about a request (None: a delivery)."""
    if msg.headers and not msg.data and not msg.reply:
        return msg.headers.get(Header.STATUS)
    return None
