"""What a process pays per event: the wake-up, against the event.

Starts an embedded NATS server and, in a child process, publishes ``--events`` events to
the mission stream, one every ``--gap`` seconds (a chained mission's pace), either one at
a time or in bursts of ``--burst`` (the same events a second, sent together). This
process receives them five ways, each in rounds alternating with the others, and prints
its CPU a message for each:

1. **a plain nats-py subscription** on the events' subjects (no JetStream consumer): the
   floor of receiving a message;
2. **the runtime's consumer** shaped as the gateway's (``aether_runtime.Service``, one
   lane whose handler releases its message at once and does nothing else, 63 such
   handlers beside it, settlements sent without waiting for the answer), each event
   delivered as it is stored;
3. **the same consumer paced** (``ConsumerSpec.pace``, the gateway's 50 ms): what is
   stored meanwhile fetched in one sweep;
4. **the runtime's consumer one delivery at a time**, as the scheduler's, the git
   broker's and the agent runner's, each settlement waiting for the server's answer
   (``ConsumerSpec.confirm_settlements``) and then sent without waiting (the answer is
   a message and a wake-up more an event).

With events one at a time, (1), (2) and an unanswered (4) wake the process once an
event; (3) once a sweep; a confirmed (4) twice. The bursts show what the same messages
cost a process woken once for many.

    uv run python bench/wakeups.py [--events 2000] [--gap 0.002] [--burst 20] [--rounds 3]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import shutil
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import uvloop

from aether.infra import EmbeddedNats
from aether_events import (
    ALL_MISSION_EVENTS,
    Event,
    EventPublisher,
    MissionPaused,
    derived_id,
    ensure_streams,
)
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service

# The gateway's read model fetches at most this often while events keep coming, and
# lets this many handlers that released their message run beside the lane.
PACE_SECONDS = 0.05
HAND_OFFS = 63


def paused(i: int) -> MissionPaused:
    mission = f"m-{i % 7}"
    return MissionPaused(
        event_id=derived_id(mission, "paused", str(i)),
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=derived_id(mission, "requested"),
    )


def publish(url: str, first: int, events: int, gap: float, burst: int) -> None:
    """The child process: ``events`` events from number ``first``, ``burst`` at a time
    every ``gap * burst`` seconds."""

    async def run() -> None:
        nc = await nats.connect(url)
        publisher = EventPublisher(nc.jetstream())
        for start in range(first, first + events, burst):
            await asyncio.gather(
                *(publisher.publish(paused(i)) for i in range(start, start + burst))
            )
            await asyncio.sleep(gap * burst)
        await nc.close()

    asyncio.run(run())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Starts receiving (``seen`` called for each event) and returns how to stop.
Receiver = Callable[[str, Callable[[], None]], Awaitable[Callable[[], Awaitable[None]]]]


async def plain(url: str, seen: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    nc = await nats.connect(url)

    async def on_message(msg: object) -> None:
        seen()

    await nc.subscribe(ALL_MISSION_EVENTS, cb=on_message)
    await nc.flush()
    return nc.close


def service(
    pace: float, durable: str, *, hand_offs: int = HAND_OFFS, confirm: bool = False
) -> Receiver:
    """The runtime's consumer: the gateway's shape by default (hand-offs, settlements
    unanswered); with no hand-offs, one delivery at a time as the scheduler's, the git
    broker's and the agent runner's, ``confirm`` waiting for the server's answer to each
    settlement."""

    async def start(url: str, seen: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def handler(event: Event, delivery: Delivery) -> None:
            delivery.release()  # as the gateway's handler hands its event to a run
            seen()

        svc = Service(name="bench", settings=RuntimeSettings(nats_url=url, port=0))
        svc.consume(
            ConsumerSpec(
                durable=durable,
                subject=ALL_MISSION_EVENTS,
                handler=handler,
                types=(MissionPaused,),
                hand_offs=hand_offs,
                confirm_settlements=confirm,
                pace=pace,
                # Made for this round: from what is stored from now on.
                start_at_new=True,
            )
        )
        await svc.start()
        return svc.stop

    return start


async def measure(
    url: str, receiver: Receiver, first: int, events: int, gap: float, burst: int
) -> float:
    """CPU of this process a message while ``receiver`` takes ``events`` events."""
    count = 0
    done = asyncio.Event()

    def seen() -> None:
        nonlocal count
        count += 1
        if count >= events:
            done.set()

    stop = await receiver(url, seen)
    try:
        await asyncio.sleep(0.3)
        began = cpu_seconds()
        child = multiprocessing.get_context("spawn").Process(
            target=publish, args=(url, first, events, gap, burst)
        )
        child.start()
        await asyncio.wait_for(done.wait(), timeout=60 + events * gap * 4)
        spent = cpu_seconds() - began
        await asyncio.to_thread(child.join)
    finally:
        await stop()
    return spent / events


async def run(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="aether-wakeups-"))
    server = EmbeddedNats(data).start()
    try:
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream())
        await nc.close()
        ways: dict[str, Callable[[int], Receiver]] = {
            "nats-py subscription": lambda r: plain,
            "runtime consumer, each as stored": lambda r: service(0.0, f"each-{r}"),
            f"runtime consumer, paced {PACE_SECONDS * 1000:.0f} ms": lambda r: service(
                PACE_SECONDS, f"paced-{r}"
            ),
            "one at a time, settlements confirmed": lambda r: service(
                0.0, f"confirmed-{r}", hand_offs=0, confirm=True
            ),
            "one at a time, settlements unanswered": lambda r: service(
                0.0, f"unanswered-{r}", hand_offs=0
            ),
        }
        first = 0
        results: dict[tuple[str, int], list[float]] = {}
        for burst in (1, args.burst):
            for r in range(args.rounds):
                for name, make in ways.items():
                    spent = await measure(
                        server.url, make(len(results) + r), first, args.events, args.gap, burst
                    )
                    results.setdefault((name, burst), []).append(spent)
                    first += args.events
        print(
            f"bench/wakeups: {args.events} events a round, one every {args.gap * 1000:.1f} ms,"
            f" {args.rounds} rounds; CPU of the receiving process a message (median)"
        )
        floor = {
            b: statistics.median(results[("nats-py subscription", b)]) for b in (1, args.burst)
        }
        for burst in (1, args.burst):
            how = "one at a time" if burst == 1 else f"in bursts of {burst}"
            print(f"  events {how}:")
            for name in ways:
                value = statistics.median(results[(name, burst)])
                print(
                    f"    {name:38s} {value * 1e6:7.1f} µs"
                    f"   {value / floor[burst]:5.2f}x the subscription"
                )
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--gap", type=float, default=0.002)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.install()  # as the services run
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
