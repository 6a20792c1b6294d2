"""Wiring the scheduler: every mission event in order, telemetry for liveness, a timer loop."""

from __future__ import annotations

import asyncio
import contextlib

from nats.js import JetStreamContext

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    TELEMETRY_STREAM,
    Event,
    replay,
)
from aether_runtime import ConsumerSpec, Projection, RuntimeSettings, Service
from aether_runtime.metrics import service_at_zero
from aether_scheduler import metrics
from aether_scheduler.config import config_from_env
from aether_scheduler.domain import Config, State, evolve
from aether_scheduler.handlers import Handlers
from aether_scheduler.history import replay_history

DEFAULT_PORT = 8101


def build(settings: RuntimeSettings | None = None, config: Config | None = None) -> Service:
    settings = settings or RuntimeSettings.from_env(DEFAULT_PORT)
    service = Service(name="scheduler", settings=settings)
    projection: Projection[State] = Projection(State(), evolve)
    handlers = Handlers(projection, lambda: service.publisher, config or config_from_env())
    metrics.register(lambda: projection.state)

    async def rebuild(js: JetStreamContext) -> int:
        last = await replay_history(projection, js, "scheduler")

        def fold(state: State, event: Event, seq: int) -> State:
            return evolve(state, event)

        projection.state, _ = await replay(
            js, TELEMETRY_STREAM, ALL_TELEMETRY, projection.state, fold
        )
        return last

    timers: list[asyncio.Task[None]] = []

    async def start_timers() -> None:
        await handlers.catch_up()
        timers.append(asyncio.create_task(handlers.run_timers(), name="scheduler-timers"))

    async def stop_timers() -> None:
        handlers.stopped.set()
        handlers.wake()
        for task in timers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    service.rebuild_with(rebuild)
    service.bound(projection)
    service.on_started.append(start_timers)
    service.on_stopping.append(stop_timers)
    service.consume(
        ConsumerSpec(durable="scheduler", subject=ALL_MISSION_EVENTS, handler=handlers.handle)
    )
    service.consume(
        ConsumerSpec(
            durable="scheduler-telemetry",
            subject=ALL_TELEMETRY,
            stream=TELEMETRY_STREAM,
            handler=handlers.handle_telemetry,
            start_at_new=True,
        )
    )
    service_at_zero(service.name, [ALL_MISSION_EVENTS, ALL_TELEMETRY])
    return service
