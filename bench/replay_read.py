"""How long reading a stream back costs: batched pull requests against nats-py's ``fetch``.

Starts nats-server, stores ``--missions`` missions of ``--events`` events each (33,000 by
default, what 1,000 completed missions leave), then reads the whole stream and one event
type's subject back twice in the same run: through nats-py's pull subscription ``fetch``
(what ``stored_messages`` did before: a task and a timer for every message) and through
``aether_events.stored_messages`` (one pull request and one wait per batch). Both reads
must return the same sequences. Prints the times and their ratio.

    uv run python bench/replay_read.py --missions 1000 --events 33
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aether.infra import EmbeddedNats
from aether_events import MISSIONS_STREAM, MissionMessagePosted, ensure_streams, stored_messages
from aether_events.codec import encode
from aether_events.subjects import ALL_MISSION_EVENTS, subject_for, type_subject


async def fetched_messages(
    js: JetStreamContext, stream: str, subject: str, *, batch: int = 256
) -> AsyncGenerator[Msg, None]:
    """The read as it was: ``pull_subscribe`` and ``fetch`` of ``batch`` at a time."""
    config = ConsumerConfig(
        filter_subject=subject,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=60.0,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=5.0)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                yield msg
                remaining = msg.metadata.num_pending or 0
    finally:
        await sub.unsubscribe()


Reader = Callable[[JetStreamContext, str, str], AsyncGenerator[Msg, None]]


async def timed(read: Reader, js: JetStreamContext, subject: str) -> tuple[float, list[int]]:
    started = time.perf_counter()
    seqs = [msg.metadata.sequence.stream async for msg in read(js, MISSIONS_STREAM, subject)]
    return time.perf_counter() - started, seqs


async def store(js: JetStreamContext, missions: int, events: int) -> None:
    now = datetime.now(UTC)
    pending: list[Awaitable[object]] = []
    for m in range(missions):
        for e in range(events):
            event = MissionMessagePosted(
                event_id=f"m{m}-e{e}",
                mission_id=f"m{m}",
                occurred_at=now,
                correlation_id=f"m{m}",
                text="a person's answer to the planner, of a typical length " * 3,
            )
            pending.append(js.publish(subject_for(event), encode(event)))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
    await asyncio.gather(*pending)


async def main(missions: int, events: int, rounds: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats").start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            await store(js, missions, events)
            total = missions * events
            print(f"stored {total} events")
            subjects = {
                "whole stream": ALL_MISSION_EVENTS,
                "one type": type_subject(MissionMessagePosted),
            }
            worst = float("inf")
            for name, subject in subjects.items():
                before = after = float("inf")
                for _ in range(rounds):
                    t_before, seq_before = await timed(fetched_messages, js, subject)
                    t_after, seq_after = await timed(stored_messages, js, subject)
                    if seq_before != seq_after or len(seq_after) != total:
                        print(f"{name}: the reads differ", file=sys.stderr)
                        return 1
                    before, after = min(before, t_before), min(after, t_after)
                ratio = before / after
                worst = min(worst, ratio)
                print(
                    f"{name}: fetch {before:.2f} s ({total / before:,.0f}/s), "
                    f"batched {after:.2f} s ({total / after:,.0f}/s), {ratio:.1f}x"
                )
            print(f"ratio (fetch / batched, the lower of the two reads): {worst:.1f}x")
            await nc.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--missions", type=int, default=1000)
    parser.add_argument("--events", type=int, default=33)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.missions, args.events, args.rounds)))
