"""What the runtime's own bookkeeping costs a delivery and a publish, in CPU.

Two parts, each in rounds alternating its ways, medians printed:

1. **A delivery without the bus**: ``Service``'s handling of a delivery (the ack fields
   read, the in-progress acks held, the metrics, the log context, the handler's lock and
   retries, the settlement) on messages made in this process, with a client that sends
   nothing, so only the runtime's Python is timed. Two shapes: a one-at-a-time consumer
   whose settlements wait for the server's answer (the scheduler's, the broker's), and
   the gateway's (its handler releases the message, 63 hand-offs, settlements sent
   without waiting). The floor beside them is the decoding alone.
2. **A publish through an embedded NATS server**, each waited for as a handler waits:
   nats-py's ``js.publish`` with the event's id header, ``EventPublisher``, and the
   services' ``CountingPublisher`` (counted, logged, cut short and sent again at a
   reconnect).

    uv run python bench/bookkeeping.py [--deliveries 20000] [--publishes 2000] [--rounds 5]

A figure, not a test: it prints numbers and never fails on them. The receiving side's
wake-ups are ``bench/wakeups.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.msg import Msg
from wakeups import paused  # the same events: bench/ is this script's import path

from aether.infra import EmbeddedNats
from aether_events import (
    ALL_MISSION_EVENTS,
    Event,
    EventPublisher,
    MissionPaused,
    decode,
    encode,
    ensure_streams,
)
from aether_events.subjects import subject_for
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service
from aether_runtime.reconnect import Reconnects
from aether_runtime.service import CountingPublisher

HAND_OFFS = 63  # the gateway's


class Quiet:
    """A connected client that sends nothing: every publish and request returns at once."""

    is_connected = True

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def request(self, *args: Any, **kwargs: Any) -> None:
        return None


def delivered(first: int, count: int) -> list[Msg]:
    """Messages as a durable consumer delivers them (their reply subjects carry the
    stream sequence, the delivery count, the stored time and what is pending)."""
    out = []
    for i in range(first, first + count):
        event = paused(i)
        out.append(
            Msg(
                _client=None,  # type: ignore[arg-type]
                subject=subject_for(event),
                reply=f"$JS.ACK.AETHER_MISSIONS.bench.1.{i + 1}.{i + 1}.{time.time_ns()}.0",
                data=encode(event),
            )
        )
    return out


def cpu() -> float:
    return time.process_time()


async def delivery_shape(gateway: bool) -> Callable[[list[Msg]], Awaitable[None]]:
    """A service consuming as one of the two shapes; returns what delivers a batch."""
    handled = 0
    target = 0
    done = asyncio.Event()

    async def handler(event: Event, delivery: Delivery) -> None:
        nonlocal handled
        handled += 1
        if handled >= target:
            done.set()
        delivery.release()

    svc = Service(name="bench", settings=RuntimeSettings(nats_url="nats://unused", port=0))
    svc.nc = Quiet()  # type: ignore[assignment]
    spec = ConsumerSpec(
        durable="bench",
        subject=ALL_MISSION_EVENTS,
        handler=handler,
        types=(MissionPaused,),
        **({"hand_offs": HAND_OFFS, "confirm_settlements": False} if gateway else {}),
    )
    svc.consume(spec)
    deliver = svc._on_message(spec)

    async def batch(msgs: list[Msg]) -> None:
        nonlocal handled, target
        handled, target = 0, len(msgs)
        done.clear()
        for msg in msgs:
            await deliver(msg)
        await done.wait()

    return batch


async def decoding(msgs: list[Msg]) -> None:
    for msg in msgs:
        decode(msg.data)


async def deliveries(args: argparse.Namespace) -> dict[str, list[float]]:
    ways: dict[str, Callable[[list[Msg]], Awaitable[None]]] = {
        "decoding alone": decoding,
        "one at a time, settlements confirmed": await delivery_shape(gateway=False),
        "the gateway's shape": await delivery_shape(gateway=True),
    }
    results: dict[str, list[float]] = {name: [] for name in ways}
    first = 0
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, way in ways.items():
            msgs = delivered(first, args.deliveries)
            first += args.deliveries
            began = cpu()
            await way(msgs)
            results[name].append((cpu() - began) / len(msgs))
    return {name: values[1:] for name, values in results.items()}


async def publishes(args: argparse.Namespace) -> dict[str, list[float]]:
    data = Path(tempfile.mkdtemp(prefix="aether-bookkeeping-"))
    server = EmbeddedNats(data).start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        plain = EventPublisher(js)
        counting = CountingPublisher(js, "bench", Reconnects())

        async def bare(event: Event) -> object:
            return await js.publish(
                subject_for(event), encode(event), headers={"Nats-Msg-Id": event.event_id}
            )

        ways: dict[str, Callable[[Event], Awaitable[object]]] = {
            "nats-py js.publish": bare,
            "EventPublisher": plain.publish,
            "CountingPublisher (the services')": counting.publish,
        }
        results: dict[str, list[float]] = {name: [] for name in ways}
        first = 0
        for _ in range(args.rounds + 1):
            for name, way in ways.items():
                events = [paused(i) for i in range(first, first + args.publishes)]
                first += args.publishes
                began = cpu()
                for event in events:
                    await way(event)
                results[name].append((cpu() - began) / len(events))
        await nc.close()
        return {name: values[1:] for name, values in results.items()}
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def report(title: str, results: dict[str, list[float]]) -> None:
    print(f"  {title}")
    floor = statistics.median(next(iter(results.values())))
    for name, values in results.items():
        value = statistics.median(values)
        spread = ", ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"    {name:38s} {value * 1e6:7.1f} µs   +{(value - floor) * 1e6:6.1f}   ({spread})")


async def run(args: argparse.Namespace) -> None:
    print(
        f"bench/bookkeeping: CPU of this process, median of {args.rounds} rounds"
        " (after one to warm up), and above the first line of each part"
    )
    report(f"a delivery, no bus ({args.deliveries} a round)", await deliveries(args))
    report(f"a publish, waited for ({args.publishes} a round)", await publishes(args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"  peak RSS {usage.ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--publishes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
