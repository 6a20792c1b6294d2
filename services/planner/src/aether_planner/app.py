"""Wiring the planner."""

from __future__ import annotations

import os

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS
from aether_llm import LLMSettings, make_client
from aether_planner.adapters.model import PlannerModel
from aether_planner.domain import State, evolve
from aether_planner.handlers import Handlers
from aether_runtime import ConsumerSpec, Projection, RuntimeSettings, Service

DEFAULT_PORT = 8102


def build(settings: RuntimeSettings | None = None, llm: LLMSettings | None = None) -> Service:
    settings = settings or RuntimeSettings.from_env(DEFAULT_PORT)
    llm = llm or LLMSettings.from_env()
    service = Service(name="planner", settings=settings)
    projection: Projection[State] = Projection(State(), evolve)
    handlers = Handlers(
        projection,
        lambda: service.publisher,
        PlannerModel(make_client(llm)),
        llm,
        tier=os.environ.get("AETHER_PLANNER_TIER", "complex"),
    )

    async def rebuild(js: JetStreamContext) -> int:
        return await projection.rebuild(js, "planner")

    service.rebuild_with(rebuild)
    service.consume(
        ConsumerSpec(
            durable="planner",
            subject=ALL_MISSION_EVENTS,
            handler=handlers.handle,
            ack_wait_seconds=60.0,
        )
    )
    return service
