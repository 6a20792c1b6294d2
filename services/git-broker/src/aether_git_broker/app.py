"""Wiring: the runtime ``Service`` with the broker's projection, adapter and consumer."""

from __future__ import annotations

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.config import SERVICE_NAME, GitBrokerSettings
from aether_git_broker.domain import BrokerState, evolve
from aether_git_broker.handlers import Handlers
from aether_runtime import ConsumerSpec, Projection, Service

DURABLE = "git-broker"


def build_service(settings: GitBrokerSettings) -> Service:
    """The git broker: one durable consumer on every mission event, one event at a time.

    A single worker is the point: the broker is the only writer of the repositories, and
    merges into an integration branch must happen one after another.
    """
    service = Service(name=SERVICE_NAME, settings=settings.runtime)
    projection: Projection[BrokerState] = Projection(BrokerState(), evolve)
    handlers = Handlers(
        projection,
        GitRepositories(identity=settings.identity, max_listed_files=settings.max_listed_files),
        settings.naming,
        publisher=lambda: service.publisher,
        keepalive_seconds=settings.ack_wait_seconds / 3,
    )

    async def rebuild(js: JetStreamContext) -> int:
        return await projection.rebuild(js, SERVICE_NAME)

    service.rebuild_with(rebuild)
    service.consume(
        ConsumerSpec(
            durable=DURABLE,
            subject=ALL_MISSION_EVENTS,
            handler=handlers.handle,
            max_workers=1,
            ack_wait_seconds=settings.ack_wait_seconds,
        )
    )
    return service
