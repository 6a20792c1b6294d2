"""How long an attempt waits on its own events: awaited publishes against the stream.

Starts nats-server, then sends the events of a busy attempt (AgentStarted, then a usage
record, a progress event and three transcript entries per model turn, with some work
between turns standing for the model call) twice: awaiting each publish as the attempt
did before, and through the handler's ``AttemptStream``, timing only what the attempt
waits for (and the close that publishes the rest before the result). Prints the ratio.

    uv run python bench/attempt_stream.py --turns 200 --work-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats

from aether.infra import EmbeddedNats
from aether_agent_runner.adapters.stream import AttemptStream
from aether_agent_runner.adapters.transcript import Entry, Redactor, Transcript, TranscriptSettings
from aether_agent_runner.domain import decide
from aether_events import (
    Event,
    EventPublisher,
    PlannedTask,
    TranscriptKind,
    Usage,
    WorkspaceReady,
    ensure_streams,
)


def workspace(mission_id: str) -> WorkspaceReady:
    return WorkspaceReady(
        event_id=f"{mission_id}-ready",
        mission_id=mission_id,
        occurred_at=datetime.now(UTC),
        correlation_id="bench",
        task=PlannedTask(id="t1", title="bench"),
        attempt=1,
        model="claude",
        branch=f"aether-tasks/{mission_id}/t1/a1",
        worktree_path="/nowhere",
        base_sha="b" * 40,
    )


PER_TURN = 5


async def unused(event: Event) -> None:
    raise AssertionError("the bench builds transcript events; it does not emit them here")


def attempt_events(ready: WorkspaceReady, turns: int) -> list[Event]:
    now = datetime.now(UTC)
    # Only its events are built here; nothing is sent through it.
    transcript = Transcript(
        ready, unused, lambda: now, "bench", TranscriptSettings(), Redactor([], [])
    )
    events: list[Event] = [decide.started(ready, now, "bench", None)]
    for turn in range(1, turns + 1):
        events.append(decide.usage_recorded(ready, now, turn, Usage(input_tokens=100), False))
        events.append(
            decide.progressed(
                ready,
                now,
                "bench",
                turns=turn,
                tool_calls=turn,
                files_changed=[],
                usage=Usage(),
                last_action="edit a file",
            )
        )
        kinds: tuple[TranscriptKind, ...] = ("turn", "tool_call", "command")
        for kind in kinds:
            entry = Entry(kind=kind, text="x" * 400, tool="edit_file", result="ok")
            events.append(transcript.event(entry, len(events)))
    return events


async def attempt(
    events: list[Event], send: Callable[[Event], Awaitable[object]], work: float
) -> float:
    """Send the attempt's events turn by turn, working ``work`` seconds between turns
    (the model call); the time spent waiting on ``send``."""
    waited = 0.0
    for index, event in enumerate(events):
        began = time.perf_counter()
        await send(event)
        waited += time.perf_counter() - began
        if index % PER_TURN == 0:
            await asyncio.sleep(work)
    return waited


async def run(url: str, turns: int, work: float) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    for event in attempt_events(workspace("m-bench-warm-up"), 20):
        await publisher.publish(event)

    awaited_events = attempt_events(workspace("m-bench-awaited"), turns)
    awaited = await attempt(awaited_events, publisher.publish, work)

    stream = AttemptStream(lambda: publisher)
    waited = await attempt(attempt_events(workspace("m-bench-streamed"), turns), stream.emit, work)
    began = time.perf_counter()
    await stream.close()
    flushed = time.perf_counter() - began
    await nc.close()
    n = len(awaited_events)
    print(f"{n} events of an attempt of {turns} turns, {work * 1000:.0f} ms of work per turn")
    print(f"  awaited publishes: the attempt waits {awaited:.3f} s on its events")
    print(
        f"  stream: the attempt waits {waited:.3f} s; the close before the result {flushed:.3f} s"
    )
    print(f"  the attempt waits {awaited / max(waited + flushed, 1e-9):.0f}x less on its events")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--work-ms", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aether-attempt-stream-"))
    server = EmbeddedNats(work / "nats").start()
    try:
        await run(server.url, args.turns, args.work_ms / 1000)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
