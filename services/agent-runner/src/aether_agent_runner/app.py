"""Wiring the agent runner: competing consumers on WorkspaceReady."""

from __future__ import annotations

import os

from nats.js import JetStreamContext

from aether_agent_runner.agent import Limits
from aether_agent_runner.domain import State, evolve
from aether_agent_runner.handlers import Handlers
from aether_events import WorkspaceReady, type_subject
from aether_llm import LLMSettings, make_client
from aether_runtime import ConsumerSpec, Projection, RuntimeSettings, Service

DEFAULT_PORT = 8103


def build(settings: RuntimeSettings | None = None, llm: LLMSettings | None = None) -> Service:
    settings = settings or RuntimeSettings.from_env(DEFAULT_PORT)
    llm = llm or LLMSettings.from_env()
    service = Service(name="agent-runner", settings=settings)
    projection: Projection[State] = Projection(State(), evolve)
    handlers = Handlers(
        projection,
        lambda: service.publisher,
        make_client(llm),
        Limits(max_turns=int(os.environ.get("AETHER_AGENT_MAX_TURNS", "40"))),
    )

    async def rebuild(js: JetStreamContext) -> int:
        return await projection.rebuild(js, "agent-runner")

    service.rebuild_with(rebuild)
    # Only WorkspaceReady is work; settled attempts come from the rebuilt projection and
    # from this process's own results.
    service.consume(
        ConsumerSpec(
            durable="agent-runner",
            subject=type_subject(WorkspaceReady),
            handler=handlers.handle,
            max_workers=int(os.environ.get("AETHER_AGENT_CONCURRENCY", "2")),
            ack_wait_seconds=60.0,
        )
    )
    return service
