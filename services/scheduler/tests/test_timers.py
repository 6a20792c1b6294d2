"""The timer loop looks again when an event brings a timer forward, and only then."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from aether_events import AgentFailed, AgentStarted, MissionCancelled, TaskReady
from aether_events.testing import InMemoryPublisher
from aether_runtime import Delivery, Projection
from aether_scheduler.domain import State, evolve, mission_timer
from aether_scheduler.handlers import Handlers

from .scenario import CONFIG, Scenario, task


def test_a_missions_timer_is_its_earliest_and_none_once_it_ended() -> None:
    s = Scenario()
    s.start(task("a"), task("b"))
    assert mission_timer(s.state, "m-test", s.config) is None  # neither taken by a runner
    s.started("b")
    assert mission_timer(s.state, "m-test", s.config) == s.now + timedelta(seconds=60)
    s.failed("a")
    retry_at = s.state.missions["m-test"].tasks["a"].not_before
    assert retry_at is not None and mission_timer(s.state, "m-test", s.config) == retry_at
    assert mission_timer(s.state, "m-other", s.config) is None
    s.when(MissionCancelled(**s.meta(), reason="enough"))
    assert s.state.missions["m-test"].terminal
    assert mission_timer(s.state, "m-test", s.config) is None


async def test_only_an_event_bringing_a_timer_forward_wakes_the_timer_loop() -> None:
    # Retries a fraction of a second away; the loop otherwise looks every 30 s.
    config = dataclasses.replace(CONFIG, retry_base_seconds=0.2)
    s = Scenario(config=config, now=datetime.now(UTC))
    s.start(task("a"))
    projection: Projection[State] = Projection(State(), evolve)
    projection.state = s.state
    publisher = InMemoryPublisher()
    handlers = Handlers(projection, lambda: publisher, config)
    looks = 0
    look = handlers.on_tick

    async def counted() -> None:
        nonlocal looks
        looks += 1
        await look()

    handlers.on_tick = counted  # type: ignore[method-assign]
    timers = asyncio.create_task(handlers.run_timers(max_sleep=30.0))
    sequence = 100

    def delivery() -> Delivery:
        nonlocal sequence
        sequence += 1
        return Delivery(sequence=sequence, num_delivered=1, pending=0)

    def meta() -> dict[str, object]:
        return {**s.meta(), "occurred_at": datetime.now(UTC)}

    try:
        await asyncio.sleep(0.1)
        assert looks == 1
        # In flight: its heartbeat's deadline is a minute away, past the next look.
        await handlers.handle(
            AgentStarted(**meta(), task_id="a", attempt=1, runner_id="r", model="m"), delivery()
        )
        await asyncio.sleep(0.2)
        assert looks == 1
        # Failed: retried a fraction of a second from now, long before the next look.
        await handlers.handle(
            AgentFailed(**meta(), task_id="a", attempt=1, reason="boom", retryable=True),
            delivery(),
        )
        async with asyncio.timeout(5):
            while not any(e.attempt == 2 for e in publisher.of(TaskReady)):
                await asyncio.sleep(0.02)
        assert looks >= 2
    finally:
        handlers.stopped.set()
        handlers.wake()
        await asyncio.wait_for(timers, 5)
