"""Wiring the planner: one ordered consumer of the events it folds."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS, type_subjects
from aether_planner.adapters.journal import CallJournal
from aether_planner.config import BROKER_SETTINGS, SERVICE_NAME, PlannerSettings
from aether_planner.domain import FOLDED, State, evolve, pending
from aether_planner.handlers import Handlers
from aether_planner.ports import PlanningModel, RepositoryReader
from aether_runtime import ConsumerSpec, Projection, Service
from aether_runtime.broker_read import BrokerRead
from aether_runtime.metrics import service_at_zero


@dataclass
class Planner:
    """The service and the parts tests look at."""

    service: Service
    handlers: Handlers


def wire(
    settings: PlannerSettings, model: PlanningModel, files: RepositoryReader | None = None
) -> Planner:
    """The planner's consumer around ``model`` (``bootstrap`` builds the real one; tests
    may pass ``aether_planner.testing.ScriptedPlannerModel``), reading repositories
    through ``files`` (default: the git broker's read API the settings name)."""
    service = Service(name=SERVICE_NAME, settings=settings.runtime)
    if files is None and not settings.broker_url:
        logging.getLogger("aether.planner").warning(
            "AETHER_PLANNER_BROKER_URL is not set: missions are planned from the file list"
            " alone, without reading any file (each plan says so)"
        )
    projection: Projection[State] = Projection(State(), evolve)
    handlers = Handlers(
        projection,
        lambda: service.publisher,
        model,
        settings.llm,
        files or BrokerRead(settings.broker_url, settings.broker_token, settings=BROKER_SETTINGS),
        tier=settings.tier,
        context_tokens=settings.context_tokens,
        read_wait_seconds=settings.broker_wait_seconds,
    )

    async def rebuild(js: JetStreamContext) -> int:
        model.journal = await CallJournal.open(js, settings.runtime.stream_replicas)
        return await projection.rebuild(js, "planner", due=pending, types=FOLDED)

    service.rebuild_with(rebuild)
    service.bound(projection)
    service.consume(
        ConsumerSpec(
            durable="planner",
            subject=ALL_MISSION_EVENTS,
            types=FOLDED,
            handler=handlers.handle,
            hand_offs=settings.concurrency,
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
    service_at_zero(service.name, [subject for cls in FOLDED for subject in type_subjects(cls)])
    return Planner(service=service, handlers=handlers)
