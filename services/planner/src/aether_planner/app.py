"""Wiring the planner."""

from __future__ import annotations

import os

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS, TIERS, as_tier, type_subject
from aether_llm import LLMSettings, make_client
from aether_planner.adapters.journal import CallJournal
from aether_planner.adapters.model import PlannerModel
from aether_planner.domain import FOLDED, State, evolve, pending
from aether_planner.handlers import Handlers
from aether_runtime import ConsumerSpec, Projection, RuntimeSettings, Service
from aether_runtime.metrics import service_at_zero

DEFAULT_PORT = 8102


def build(settings: RuntimeSettings | None = None, llm: LLMSettings | None = None) -> Service:
    settings = settings or RuntimeSettings.for_service(DEFAULT_PORT)
    llm = llm or LLMSettings.from_env()
    service = Service(name="planner", settings=settings)
    projection: Projection[State] = Projection(State(), evolve)
    model = PlannerModel(make_client(llm))
    named = os.environ.get("AETHER_PLANNER_TIER", "complex")
    tier = as_tier(named)
    if tier is None:
        raise ValueError(f"AETHER_PLANNER_TIER must be one of {', '.join(TIERS)}, not {named!r}")
    handlers = Handlers(
        projection,
        lambda: service.publisher,
        model,
        llm,
        tier=tier,
        context_tokens=int(os.environ.get("AETHER_PLANNER_CONTEXT_TOKENS", "24000")),
    )

    async def rebuild(js: JetStreamContext) -> int:
        model.journal = await CallJournal.open(js, settings.stream_replicas)
        return await projection.rebuild(js, "planner", due=pending, types=FOLDED)

    service.rebuild_with(rebuild)
    service.bound(projection)
    service.consume(
        ConsumerSpec(
            durable="planner",
            subject=ALL_MISSION_EVENTS,
            types=FOLDED,
            handler=handlers.handle,
            hand_offs=int(os.environ.get("AETHER_PLANNER_CONCURRENCY", "32")),
            # One event at a time, in stream order: a trigger must never be looked at
            # before the events it follows (a prepared repository before its request).
            # A trigger's model call is released from the consumer (hand_offs), so
            # several missions are planned at once, each one's triggers in order (see
            # Handlers.handle). The runtime keeps a released message alive while it runs.
            # Created after the replay, the consumer starts at the first trigger still
            # unanswered (a repository prepared before the planner first started).
            first_due=lambda: projection.first_due,
        )
    )
    service_at_zero(service.name, [type_subject(cls) for cls in FOLDED])
    return service
