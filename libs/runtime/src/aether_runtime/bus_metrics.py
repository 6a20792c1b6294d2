"""Reading the bus's own state into gauges: consumer lag and stream sizes.

Deliveries update the lag gauge as they arrive, but a consumer that receives nothing (a
stuck or idle service) would keep showing its last value; asking JetStream on a timer
keeps the gauges true. Every service does this for its own consumers and for the streams,
so the figures survive any one service being down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from aether_events import MISSIONS_STREAM, TELEMETRY_STREAM
from aether_runtime import metrics

log = logging.getLogger("aether.runtime.bus")

STREAMS: tuple[str, ...] = (MISSIONS_STREAM, TELEMETRY_STREAM)

Readings = dict[tuple[str, str], ConsumerInfo | None]


async def read_bus(
    js: JetStreamContext,
    service: str,
    consumers: Iterable[tuple[str, str]],
    streams: Iterable[str] = STREAMS,
) -> Readings:
    """Set the consumer gauges of ``consumers`` (stream, durable) and the stream gauges;
    returns what was read of each consumer (None: it does not exist)."""
    readings: Readings = {}
    for stream, durable in consumers:
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            readings[(stream, durable)] = None
            continue
        readings[(stream, durable)] = info
        metrics.CONSUMER_PENDING.labels(service, durable).set(info.num_pending or 0)
        metrics.CONSUMER_ACK_PENDING.labels(service, durable).set(info.num_ack_pending or 0)
        metrics.CONSUMER_REDELIVERED.labels(service, durable).set(info.num_redelivered or 0)
    for stream in streams:
        state = (await js.stream_info(stream)).state
        metrics.STREAM_MESSAGES.labels(stream).set(state.messages)
        metrics.STREAM_BYTES.labels(stream).set(state.bytes)
        metrics.STREAM_CONSUMERS.labels(stream).set(state.consumer_count)
    return readings


async def poll_bus(
    js: JetStreamContext,
    service: str,
    consumers: list[tuple[str, str]],
    every: float,
    stop: asyncio.Event | None = None,
    observe: Callable[[Readings], None] | None = None,
) -> None:
    """``read_bus`` every ``every`` seconds until ``stop`` is set (or the task cancelled),
    handing each reading to ``observe``; a failed read is counted and logged once per
    failure streak, and never stops the loop.

    The stop flag is what ends the loop reliably: on Python 3.11 a cancellation that
    arrives as a NATS request completes can be swallowed by ``asyncio.wait_for``, and a
    loop that relied on it alone would go on polling while its service waits for it."""
    stop = stop or asyncio.Event()
    failing = False
    while not stop.is_set():
        try:
            readings = await read_bus(js, service, consumers)
            failing = False
            if observe is not None:
                observe(readings)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            metrics.BUS_POLL_ERRORS.labels(service).inc()
            if not failing:
                log.warning("could not read the bus state", extra={"error": str(error)})
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
