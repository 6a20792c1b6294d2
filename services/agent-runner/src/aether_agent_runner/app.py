"""Wiring the agent runner: competing consumers on WorkspaceReady, a control follower.

Concurrency is a number of *lanes*: single-message pull subscribers bound to the one
durable consumer every runner process shares. A lane fetches a message only when it is
idle, so a process never holds a message it cannot start on (which would sit there,
unacknowledged, while another process has room), and the number of lanes is exactly the
number of agents a process runs at once.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime

from nats.js import JetStreamContext

from aether_agent_runner.adapters.bus import (
    CONTROL_TYPES,
    ensure_work_consumer,
    follow_control_events,
)
from aether_agent_runner.attempt import Attempts
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.domain import State, evolve, pending
from aether_agent_runner.handlers import Handlers
from aether_agent_runner.runtimes.registry import runtimes
from aether_events import (
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    WorkspaceReady,
    mission_subject,
    new_event_id,
    replay,
    type_subject,
)
from aether_llm import LLMSettings, make_client
from aether_runtime import ConsumerSpec, Delivery, Projection, RuntimeSettings, Service
from aether_runtime.attempt_auth import AttemptCredentials, AttemptKey, current_publisher
from aether_runtime.metrics import service_at_zero
from aether_sandbox import (
    Sandbox,
    SandboxUnavailable,
    enforcement,
    mark_logs_unconfined,
    open_sandbox,
)

DEFAULT_PORT = 8103
DURABLE = "agent-runner"

log = logging.getLogger("aether.agent-runner")


def runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{new_event_id()[:6]}"


def build(
    settings: RuntimeSettings | None = None,
    llm: LLMSettings | None = None,
    agent: AgentSettings | None = None,
) -> Service:
    """The agent runner service, ready to serve."""
    return wire(settings, llm, agent)[0]


def wire(
    settings: RuntimeSettings | None = None,
    llm: LLMSettings | None = None,
    agent: AgentSettings | None = None,
) -> tuple[Service, Handlers]:
    """The service and its handlers (tests look at the running agents)."""
    settings = settings or RuntimeSettings.from_env(DEFAULT_PORT)
    llm = llm or LLMSettings.from_env()
    agent = agent or AgentSettings.from_env()
    service = Service(name="agent-runner", settings=settings)
    projection: Projection[State] = Projection(State(), evolve)
    me = runner_id()

    def publisher() -> EventPublisher:
        # An attempt's events go out with its own credential where the bus grants them
        # (``handle`` below); everything else with the service's.
        return current_publisher() or service.publisher

    attempts = Attempts(
        runtimes=runtimes(
            make_client(llm),
            agent.max_output_tokens,
            agent.claude_code_cli,
            agent.command_runtimes,
        ),
        settings=agent,
        publisher=publisher,
        runner_id=me,
        clock=_now,
        tiers=dict(llm.tiers),
        sandbox=confinement(agent),
    )

    async def history(mission_id: str) -> list[tuple[Event, int]]:
        def collect(
            found: list[tuple[Event, int]], event: Event, seq: int
        ) -> list[tuple[Event, int]]:
            found.append((event, seq))
            return found

        empty: list[tuple[Event, int]] = []
        found, _ = await replay(
            service.js, MISSIONS_STREAM, mission_subject(mission_id), empty, collect
        )
        return found

    handlers = Handlers(
        projection,
        publisher,
        attempts,
        history=history,
        ack_wait_seconds=agent.ack_wait_seconds,
        heartbeat_seconds=agent.heartbeat_seconds,
    )
    subject = type_subject(WorkspaceReady)

    async def start(js: JetStreamContext) -> int:
        # Only the types evolve folds: the work consumer's and the control follower's.
        folded: tuple[type[Event], ...] = (WorkspaceReady, *CONTROL_TYPES)
        last = await projection.rebuild(js, "agent-runner", due=pending, types=folded)
        # Created now, the work consumer starts at the first attempt still owed (a
        # workspace announced before any runner ran), so it is run once, by one runner.
        first = projection.first_due
        after = last if first is None else min(last, first - 1)
        await ensure_work_consumer(js, DURABLE, subject, after, agent.ack_wait_seconds)
        follower = await follow_control_events(js, last, handlers.on_control)
        service.on_stopping.append(follower.stop)
        # The projection is fed by the work consumer and this follower: its remembered
        # ids are bounded by where both have settled.
        service.bound(projection, lambda: follower.last_sequence)
        log.info(
            "agent runner configured",
            extra={
                "runner_id": attempts.runner_id,
                "lanes": agent.concurrency,
                "commands": "any" if agent.commands is None else ",".join(agent.commands),
            },
        )
        return last

    credentials = attempt_credentials(settings)

    async def handle(event: Event, delivery: Delivery) -> None:
        if credentials is None or not isinstance(event, WorkspaceReady):
            return await handlers.handle(event, delivery)
        key = AttemptKey(event.mission_id, event.task.id, event.attempt)
        async with credentials.scope(key):
            return await handlers.handle(event, delivery)

    service.rebuild_with(start)
    for _ in range(agent.concurrency):
        service.consume(
            ConsumerSpec(
                durable=DURABLE,
                subject=subject,
                handler=handle,
                max_workers=1,
                ack_wait_seconds=agent.ack_wait_seconds,
            )
        )
    service_at_zero(service.name, [subject])
    return service, handlers


def attempt_credentials(settings: RuntimeSettings) -> AttemptCredentials | None:
    """How attempts publish their events: with a credential of their own, asked of the
    bus with the runners' secret (``AETHER_ATTEMPT_SECRET``); without the secret, with the
    service's user (a bus without per-service users)."""
    secret = os.environ.get("AETHER_ATTEMPT_SECRET", "").strip()
    if not secret:
        return None
    # The host names the holder: a runner restarted on the same host (a new process id)
    # takes its attempts back at once; another host only once their credential expired.
    return AttemptCredentials(
        nats_url=settings.nats_url, secret=secret, runner_id=socket.gethostname()
    )


def confinement(agent: AgentSettings) -> Sandbox | SandboxUnavailable:
    """The sandbox the agents' commands run in, or why none can (then they are refused)."""
    try:
        sandbox = open_sandbox(agent.sandbox)
    except SandboxUnavailable as error:
        log.error("no sandbox can start: run_command will be refused", extra={"reason": str(error)})
        return error
    if not sandbox.confined:
        mark_logs_unconfined()
        log.warning("agent commands run UNCONFINED, as the runner's own user (AETHER_SANDBOX)")
    else:
        log.info(
            "agent commands run in a sandbox",
            extra={
                "sandbox": sandbox.name,
                "network": agent.sandbox.network,
                "egress": ",".join(agent.sandbox.egress) or None,
                "warm": agent.sandbox.warm,
                **{f"limit_{name}": how for name, how in enforcement(sandbox).items()},
            },
        )
    return sandbox


def _now() -> datetime:
    return datetime.now(UTC)
