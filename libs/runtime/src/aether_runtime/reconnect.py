"""After a reconnect to a restarted NATS server: give back at once what was lost with it.

Two things are lost with a server that goes down, and each would otherwise hold a
consumer up until a timer runs out:

* **Deliveries nobody holds.** A message sent as the server went down (or recorded as
  sent on its disk and never sent) stays owed to the consumer until its ack wait runs
  out; a one-at-a-time consumer delivers nothing else meanwhile, and a shared one leaves
  the work undone for that long. ``hand_back`` finds them: every message the server
  still counts as unacknowledged (between the consumer's ack floor and its last delivery)
  that no process of the service is handling is negatively acknowledged, so the server
  delivers it again now. A consumer that one process runs (a single durable with one
  lane) knows what it holds; a durable shared by several lanes or processes asks the
  service's processes first (``Holders``: a request on the service's own inbox prefix,
  each process answering with the deliveries it is handling), and one of them hands
  back for all (a message handed back twice would be delivered twice). A negative
  acknowledgement of a message that is not pending is ignored by the server, so asking
  about a sequence that another consumer's filter left out, or that was acknowledged
  meanwhile, costs nothing.
* **Requests in flight.** A publish whose request went down with the server is never
  answered, and its caller (a handler, an agent reporting progress) waited out the
  publish timeout, ten seconds. ``Reconnects`` tells the service's publisher that the
  connection came back, and it sends the event again at once (see
  ``service.CountingPublisher``): the event's ``Nats-Msg-Id`` makes the stream store it
  once however often it is sent.
* **Pull requests.** The request a consumer's lane is waiting on is gone with the server;
  the lane (``pull.Puller``) is told of the reconnect and asks the restarted server for
  its next messages straight away instead of waiting out the request's expiry; so does a
  follower given the service's ``Reconnects`` (``follow.Follower``: the SSE hub's, the
  agent runner's control events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from aether_runtime.acks import NAK

log = logging.getLogger("aether.runtime.reconnect")

# After a reconnect, how often and how long to ask for a consumer's state while JetStream
# is not answering yet.
INFO_TRIES = 40
INFO_PAUSE_SECONDS = 0.25
# How long the processes of a service have to say what they hold (they reconnect within
# the client's reconnect wait of each other, half a second, when nothing holds them up)...
HOLDERS_WINDOW_SECONDS = 0.5
# ...and how long a process of the service known to be running is waited for past that
# (one that is slower to come back; a killed one is waited for this long once).
HOLDERS_PATIENCE_SECONDS = 5.0
# At most this many sequences are handed back per consumer (the latest: the ones lost are
# those delivered as the server went down).
MOST_HANDED_BACK = 2000

Held = set[tuple[str, int]]  # (durable, stream sequence)


class Reconnects:
    """The connection's reconnects, for whoever waits on a request sent before one."""

    def __init__(self) -> None:
        self._next = asyncio.Event()
        self._calls: set[Callable[[], None]] = set()

    def upcoming(self) -> asyncio.Event:
        """Set at the next reconnect (take it before sending the request)."""
        return self._next

    def at_next(self, call: Callable[[], None]) -> Callable[[], None]:
        """Call ``call`` at the next reconnect (register it before sending the request);
        returns what forgets it. Cheaper than a task waiting on ``upcoming``, for a wait
        made at every publish."""
        self._calls.add(call)
        return lambda: self._calls.discard(call)

    def happened(self) -> None:
        self._next.set()
        self._next = asyncio.Event()
        calls, self._calls = self._calls, set()
        for call in calls:
            call()


@dataclass(frozen=True)
class Lane:
    """One durable consumer of the service, as the hand-back sees it."""

    stream: str
    durable: str
    # Run by this process alone (one lane on the durable): what it holds is all that is
    # held; otherwise the service's processes are asked (``Holders``).
    sole: bool


class Holders:
    """The deliveries the processes of one service are handling, asked for over NATS.

    Every process answers requests on ``<inbox prefix>.held`` with what it holds; a
    process that wants to know what its service holds sends one and gathers the answers.
    The subject is under the service's own inbox prefix, which only its processes may
    read (see ``bus_auth``).

    A process that comes back later than the asker (each reconnects on a timer of its
    own) must not be taken for one holding nothing: what it holds would be handed back
    and delivered twice. So each process keeps a roster of the others: it introduces
    itself when it starts (the others answer, and note it), every request names its
    sender, and a process that stops says so. An ask waits for ``window`` seconds, and
    then, up to ``patience``, for every process of the roster that has not answered yet,
    asking again every ``window`` (one away when a request went out never gets it); one
    that never answers (killed) is taken off the roster."""

    def __init__(
        self,
        nc: NatsClient,
        inbox_prefix: str,
        held: Callable[[], Held],
        window: float = HOLDERS_WINDOW_SECONDS,
        patience: float = HOLDERS_PATIENCE_SECONDS,
    ) -> None:
        self._nc = nc
        self._subject = f"{inbox_prefix}.held"
        self._held = held
        self._window = window
        self._patience = patience
        self._sub: Subscription | None = None
        self._introducing: asyncio.Task[None] | None = None
        # Names this process among the service's: of those that answer, the least
        # hands back (each handing back the same lost message would have it delivered
        # twice: the second one finds it pending again, with a new holder).
        self.ident = uuid.uuid4().hex
        # The other processes of the service this one knows of, and those that said they
        # stopped (an answer of theirs still in flight must not bring them back).
        self.peers: set[str] = set()
        self._gone: set[str] = set()

    async def serve(self) -> None:
        async def answer(msg: Msg) -> None:
            sender = _sender(msg.data)
            if sender is not None and sender[0] != self.ident:
                if sender[1]:  # it stopped
                    self.peers.discard(sender[0])
                    self._gone.add(sender[0])
                elif sender[0] not in self._gone:
                    self.peers.add(sender[0])
            if msg.reply:
                body = json.dumps({"id": self.ident, "held": sorted(self._held())}).encode()
                with contextlib.suppress(Exception):
                    await self._nc.publish(msg.reply, body)

        self._sub = await self._nc.subscribe(self._subject, cb=answer)
        # The others running now answer, and note this one; nothing waits for it.
        self._introducing = asyncio.create_task(self._introduce())

    async def _introduce(self) -> None:
        with contextlib.suppress(Exception):
            await self._gather(self._window, patience=0.0)

    async def stop(self) -> None:
        if self._introducing is not None:
            self._introducing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._introducing
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
                # The others need not wait for this one at their next ask.
                await self._nc.publish(self._subject, self._request(stopping=True))
            self._sub = None

    async def ask(self) -> tuple[Held, set[str]]:
        """What every process that answers holds (this one's own holdings always
        included), and which processes answered (this one too); see the class."""
        held, answered = await self._gather(self._window, self._patience)
        # Those of the roster that said nothing for so long are gone.
        self.peers &= answered
        return held, answered

    async def _gather(self, window: float, patience: float) -> tuple[Held, set[str]]:
        held: Held = set(self._held())
        answered = {self.ident}
        inbox = self._nc.new_inbox()
        answers = await self._nc.subscribe(inbox)
        try:
            request = self._request()
            await self._nc.publish(self._subject, request, reply=inbox)
            began = time.monotonic()
            asked_at = began
            while True:
                now = time.monotonic()
                # Past the window, only for a process of the roster yet to answer.
                missing = self.peers - answered
                left = (window if not missing else max(window, patience)) - (now - began)
                if left <= 0:
                    break
                if missing and now - asked_at >= window:
                    # A process away when the request went out never got it: ask again
                    # (the ones that answered answer again, counted once).
                    await self._nc.publish(self._subject, request, reply=inbox)
                    asked_at = now
                try:
                    msg = await answers.next_msg(timeout=min(left, window))
                except TimeoutError:
                    continue
                except Exception:
                    break
                with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                    body = json.loads(msg.data)
                    held |= {(str(d), int(seq)) for d, seq in body["held"]}
                    answered.add(str(body["id"]))
        finally:
            with contextlib.suppress(Exception):
                await answers.unsubscribe()
        self.peers |= answered - {self.ident} - self._gone
        return held, answered

    def _request(self, *, stopping: bool = False) -> bytes:
        return json.dumps({"id": self.ident, "stopping": stopping}).encode()


def _sender(data: bytes) -> tuple[str, bool] | None:
    """Who sent a request to the holders, and whether it is stopping."""
    try:
        body = json.loads(data)
        return str(body["id"]), bool(body.get("stopping"))
    except (ValueError, TypeError, KeyError):
        return None


async def hand_back(
    js: JetStreamContext,
    nc: NatsClient,
    lanes: Iterable[Lane],
    held_here: Callable[[], Held],
    reconnected_at: datetime,
    holders: Holders | None = None,
) -> dict[str, list[int]]:
    """Negatively acknowledge what the server holds for nobody (see the module); returns
    the stream sequences handed back, per durable."""
    handed: dict[str, list[int]] = {}
    asked: tuple[Held, set[str]] | None = None
    for lane in lanes:
        if not lane.sole and holders is not None:
            if asked is None:
                asked = await holders.ask()
            if holders.ident != min(asked[1]):
                continue  # another process of the service hands back
        # Read after the others answered, with what this process took on meanwhile.
        info = await _consumer_info(js, lane)
        if info is None or not info.num_ack_pending or info.delivered is None:
            continue
        held = held_here() | (asked[0] if asked is not None and not lane.sole else set())
        mine = {seq for durable, seq in held if durable == lane.durable}
        if info.num_ack_pending <= len(mine):
            continue  # every unacknowledged delivery is being handled
        last = info.delivered
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        given = last.last_active
        if given is not None and given.tzinfo is None:
            given = given.replace(tzinfo=UTC)
        fresh = given is not None and given >= reconnected_at
        lost = [
            seq
            for seq in range(last.stream_seq, max(floor or 0, 0), -1)[:MOST_HANDED_BACK]
            # The last delivery, if made since the reconnect, is on its way to a handler.
            if seq not in mine and not (fresh and seq == last.stream_seq)
        ]
        if not lost:
            continue
        # Addressed as the server addresses a message's own acknowledgement
        # (``$JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<consumer seq>.<time>.
        # <pending>``); the server reads the two sequences, and takes a negative one only
        # for a message still pending, its consumer sequence within the delivered range.
        try:
            for seq in lost:
                subject = (
                    f"$JS.ACK.{lane.stream}.{lane.durable}.1.{seq}"
                    f".{last.consumer_seq}.{time.time_ns()}.0"
                )
                await nc.publish(subject, NAK)
            await nc.flush(timeout=1)
        except Exception as error:
            log.warning("could not hand back lost deliveries", extra={"error": repr(error)})
            continue
        handed[lane.durable] = lost
        log.info(
            "unheld deliveries handed back",
            extra={
                "consumer": lane.durable,
                "unacknowledged": info.num_ack_pending,
                "held": len(mine),
                "asked": len(lost),
            },
        )
    return handed


async def _consumer_info(js: JetStreamContext, lane: Lane) -> ConsumerInfo | None:
    for _ in range(INFO_TRIES):
        try:
            info: ConsumerInfo = await js.consumer_info(lane.stream, lane.durable, timeout=1.0)
            return info
        except asyncio.CancelledError:
            raise
        except Exception:
            # JetStream answers some moments after the server accepts clients.
            await asyncio.sleep(INFO_PAUSE_SECONDS)
    return None
