"""The runner's control follower against a real NATS: every control event once, in order,
also across the loss of its consumer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient

from aether_agent_runner.adapters.bus import follow_control_events
from aether_events import (
    MISSIONS_STREAM,
    AgentStarted,
    Event,
    EventPublisher,
    MissionCancelled,
    StreamSettings,
    TaskSkipped,
    ensure_streams,
)


def cancelled(mission: str) -> MissionCancelled:
    return MissionCancelled(
        event_id=f"cancel-{mission}",
        mission_id=mission,
        occurred_at=datetime.now(UTC),
        correlation_id=mission,
    )


async def wait_for(events: list[Event], count: int, within: float = 20.0) -> None:
    async def enough() -> None:
        while len(events) < count:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(enough(), within)


async def test_follower_delivers_control_events_once_in_order_across_a_lost_consumer(
    nc: NatsClient,
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    publisher = EventPublisher(js)
    before = await publisher.publish(cancelled("m-before"))
    seen: list[Event] = []

    async def on_event(event: Event, sequence: int) -> None:
        assert sequence > before.seq
        seen.append(event)

    follower = await follow_control_events(js, before.seq, on_event)
    follower._fetch_seconds, follower._check_every = 0.2, 1  # notice the loss quickly
    try:
        await publisher.publish(cancelled("m-1"))
        # Not a control event: the follower never sees it.
        await publisher.publish(
            AgentStarted(
                event_id="started",
                mission_id="m-1",
                occurred_at=datetime.now(UTC),
                correlation_id="m-1",
                task_id="t1",
                attempt=1,
                runner_id="r",
                model="m",
            )
        )
        await wait_for(seen, 1)
        lost = follower.consumer
        assert lost is not None
        await js.delete_consumer(MISSIONS_STREAM, lost)
        await publisher.publish(cancelled("m-2"))
        await publisher.publish(
            TaskSkipped(
                event_id="skipped",
                mission_id="m-2",
                occurred_at=datetime.now(UTC),
                correlation_id="m-2",
                task_id="t1",
            )
        )
        await wait_for(seen, 3)
        await asyncio.sleep(0.5)  # room for a duplicate to show up
        assert [(type(e).__name__, e.mission_id) for e in seen] == [
            ("MissionCancelled", "m-1"),
            ("MissionCancelled", "m-2"),
            ("TaskSkipped", "m-2"),
        ]
        assert follower.consumer not in (None, lost)
    finally:
        await follower.stop()
