"""Wiring the scheduler: one durable consumer over every mission event, in order."""

from __future__ import annotations

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS
from aether_runtime import ConsumerSpec, Projection, RuntimeSettings, Service
from aether_scheduler.config import config_from_env
from aether_scheduler.domain import State, evolve
from aether_scheduler.handlers import Handlers

DEFAULT_PORT = 8101


def build(settings: RuntimeSettings | None = None) -> Service:
    settings = settings or RuntimeSettings.from_env(DEFAULT_PORT)
    service = Service(name="scheduler", settings=settings)
    projection: Projection[State] = Projection(State(), evolve)
    handlers = Handlers(projection, lambda: service.publisher, config_from_env())

    async def rebuild(js: JetStreamContext) -> int:
        return await projection.rebuild(js, "scheduler")

    service.rebuild_with(rebuild)
    service.consume(
        ConsumerSpec(durable="scheduler", subject=ALL_MISSION_EVENTS, handler=handlers.handle)
    )
    return service
