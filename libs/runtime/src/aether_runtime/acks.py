"""Settling JetStream deliveries so that a bus restart costs seconds, not an ack wait.

An acknowledgement can be lost with a crashing server: the server then waits the
consumer's whole ack wait before it delivers the message again, and an ordered consumer
(one message in flight) delivers nothing else meanwhile. So an ack or a termination here
is a request the server answers once it has recorded it, retried across a reconnect; the
latest ones are sent again after every reconnect, since a server killed at once may not
have written down what it answered; while a handler runs its message is kept alive with
in-progress acks, which lets every consumer run with a short ack wait (the bound on a
delivery lost in flight).

One answer never comes: a server killed before it wrote down that it had delivered the
message restarts with its consumer's delivered pointer behind it, and ignores, without a
reply, an acknowledgement above that pointer (it will deliver the message again, as new).
Waiting for that answer held the handler, and so an ordered consumer, for its whole ack
wait (4 s) after every such restart. So an acknowledgement that is not
answered is checked against the consumer's state: settled when the ack floor covers it,
given up at once when the server no longer counts it as delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

log = logging.getLogger("aether.runtime.acks")

ACK = b"+ACK"
# JetStream's own spelling ("-TERM" is taken for an unknown ack, and the message is
# delivered again after its ack wait).
TERM = b"+TERM"
NAK = b"-NAK"
PROGRESS = b"+WPI"
# How long one acknowledgement waits for the server's answer before it is checked against
# the consumer's state and sent again (the server answers in milliseconds when it can).
ANSWER_SECONDS = 0.5


class Settled:
    """The latest acknowledgements and terminations sent, to send again after a
    reconnect (the server ignores a repeat of one it kept)."""

    def __init__(self, keep: int = 256, for_seconds: float = 120.0) -> None:
        self._recent: deque[tuple[float, str, bytes]] = deque(maxlen=keep)
        self._for = for_seconds

    def note(self, msg: Msg, payload: bytes) -> None:
        self._recent.append((time.monotonic(), msg.reply, payload))

    async def resend(self, nc: NatsClient) -> int:
        """Send the recent settlements again; returns how many were sent."""
        since = time.monotonic() - self._for
        recent = [(reply, payload) for at, reply, payload in self._recent if at >= since]
        for reply, payload in recent:
            await nc.publish(reply, payload)
        await nc.flush()
        return len(recent)


async def confirm(
    nc: NatsClient, msg: Msg, payload: bytes, within: float, settled: Settled | None = None
) -> bool:
    """Send ``payload`` (``ACK`` or ``TERM``) for ``msg`` and wait for the server to
    answer, retrying through a disconnect for up to ``within`` seconds (after that the
    server redelivers the message anyway). Says whether the server answered."""
    deadline = time.monotonic() + within
    msg._aether_settling = True  # type: ignore[attr-defined]  # see ``settling``
    if settled is not None:
        settled.note(msg, payload)
    attempt = 0
    while True:
        attempt += 1
        try:
            if nc.is_connected:
                await nc.request(msg.reply, payload, timeout=min(ANSWER_SECONDS, max(within, 0.1)))
                msg._ackd = True  # nats-py's own flag: the message is settled
                return True
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if attempt == 1:
                log.warning(
                    "acknowledgement not confirmed; retrying",
                    extra={"error": repr(error), "payload": payload.decode()},
                )
            verdict = await server_view(nc, msg) if nc.is_connected else None
            if verdict is not None:
                log.info(
                    "acknowledgement settled by the consumer's state",
                    extra={"payload": payload.decode(), "verdict": verdict},
                )
                msg._ackd = True
                return verdict == "recorded"
        if time.monotonic() >= deadline:
            log.warning("acknowledgement given up", extra={"payload": payload.decode()})
            return False
        await asyncio.sleep(0.1)


async def send(nc: NatsClient, msg: Msg, payload: bytes, settled: Settled | None = None) -> None:
    """Send ``payload`` (``ACK`` or ``TERM``) for ``msg`` without waiting for an answer,
    for a consumer whose handler may safely see a message again
    (``ConsumerSpec.confirm_settlements``). One lost with the server is sent again
    after the reconnect (``settled``); one lost for good only has the message delivered
    again after its ack wait."""
    msg._aether_settling = True  # type: ignore[attr-defined]  # see ``settling``
    if settled is not None:
        settled.note(msg, payload)
    with contextlib.suppress(Exception):  # not connected: the resend or the redelivery
        await nc.publish(msg.reply, payload)
    msg._ackd = True  # nats-py's own flag: the message is settled


async def server_view(nc: NatsClient, msg: Msg) -> str | None:
    """What the server's consumer state says of ``msg``'s delivery: ``"recorded"`` when
    its ack floor covers it (settled), ``"forgotten"`` when the server no longer counts it
    as delivered (it restarted without having written that down: it ignores the ack and
    will deliver the message again), None while it is pending or unknown (the ack is to
    be sent again)."""
    try:
        meta = msg.metadata
        info = await nc.jetstream().consumer_info(meta.stream, meta.consumer, timeout=1.0)
    except asyncio.CancelledError:
        raise
    except Exception:
        return None
    sequence = meta.sequence.stream
    if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= sequence:
        return "recorded"
    if info.delivered is not None and (info.delivered.stream_seq or 0) < sequence:
        return "forgotten"
    return None


def settling(msg: Msg) -> bool:
    """Whether ``msg`` is being (or was) acknowledged or terminated by ``confirm``."""
    return bool(getattr(msg, "_aether_settling", False))


# What a held message is known by: its consumer's durable and its stream sequence.
Held = tuple[str, int]


class Keeper:
    """Keeps the messages a process is handling alive: an in-progress ack for each, every
    ``every`` seconds while its handler runs, so a consumer's short ack wait bounds how
    long a lost delivery waits, not how long a handler may take. A beat that cannot be
    sent (the bus is down) is skipped.

    One timer for every message held rather than one each: most handlers end long before
    their first beat, and a timer made and cancelled per delivery cost more than the
    handler's own work. While anything is held the timer ticks every half of the shortest
    ``every`` held, and sends a beat for each message held at least its ``every`` since
    its last (so a beat is at most one and a half ``every`` apart); it stops once a tick
    finds nothing held."""

    def __init__(self, client: Callable[[], NatsClient]) -> None:
        self._client = client
        self._held: dict[Held, _Holding] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tick = math.inf
        self._sending: set[asyncio.Task[None]] = set()

    def hold(self, key: Held, msg: Msg, every: float) -> None:
        """Keep ``msg`` alive under ``key`` until ``drop(key)``."""
        now = time.monotonic()
        self._held[key] = _Holding(msg, every, now + every)
        if every / 2 < self._tick:
            self._tick = every / 2
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._beat)

    def drop(self, key: Held) -> None:
        self._held.pop(key, None)

    def __contains__(self, key: Held) -> bool:
        return key in self._held

    def keys(self) -> set[Held]:
        return set(self._held)

    def close(self) -> None:
        """Stop beating (the process stops; what it held is handed back or redelivered)."""
        self._held.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._tick = math.inf
        for task in self._sending:
            task.cancel()

    def _beat(self) -> None:
        self._timer = None
        if not self._held:
            self._tick = math.inf  # nothing held: the next hold starts the timer again
            return
        now = time.monotonic()
        due: list[Msg] = []
        tick = math.inf
        for held in self._held.values():
            tick = min(tick, held.every / 2)
            if held.due <= now:
                held.due = now + held.every
                # Not once it is being settled: the beat would only follow the answer.
                if not settling(held.msg):
                    due.append(held.msg)
        if due:
            task = asyncio.get_running_loop().create_task(self._send(due))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._tick = tick
        self._timer = asyncio.get_running_loop().call_later(tick, self._beat)

    async def _send(self, msgs: list[Msg]) -> None:
        nc = self._client()
        for msg in msgs:
            with contextlib.suppress(Exception):
                if nc.is_connected and not settling(msg):
                    await nc.publish(msg.reply, PROGRESS)


@dataclass(slots=True)
class _Holding:
    msg: Msg
    every: float
    due: float  # monotonic: when its next beat is due
