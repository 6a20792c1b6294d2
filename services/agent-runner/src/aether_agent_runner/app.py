"""Wiring the agent runner: competing consumers on WorkspaceReady, a control follower.

Concurrency is a number of *lanes*: single-message pull subscribers bound to the one
durable consumer every runner process shares. A lane fetches a message only when it is
idle, so a process never holds a message it cannot start on (which would sit there,
unacknowledged, while another process has room), and the number of lanes is exactly the
number of agents a process runs at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext

from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.bus import (
    CONTROL_TYPES,
    WORK_ACK_PENDING,
    WORK_MAX_DELIVER,
    follow_control_events,
)
from aether_agent_runner.adapters.runners import LiveRunners
from aether_agent_runner.adapters.steps import Steps
from aether_agent_runner.config import SERVICE_NAME, RunnerSettings
from aether_agent_runner.domain import State, evolve, pending
from aether_agent_runner.handlers import Handlers
from aether_agent_runner.runtimes import Runtime
from aether_events import (
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    WorkspaceReady,
    mission_subject,
    replay,
    type_subject,
)
from aether_runtime import ConsumerSpec, Delivery, Projection, Service
from aether_runtime.attempt_auth import AttemptCredentials, AttemptKey, current_publisher
from aether_runtime.metrics import service_at_zero
from aether_runtime.runner_secrets import step_record_key
from aether_runtime.runners import Announcer, RunnerEntry, own_connection
from aether_sandbox import CommandRunner, Sandbox, SandboxUnavailable

DURABLE = "agent-runner"

log = logging.getLogger("aether.agent-runner")


@dataclass
class Adapters:
    """The runner's real parts, built by ``bootstrap`` from the settings."""

    # The agent runtime of each name (the built-in loop, Claude Code, other CLI agents).
    runtimes: Callable[[str], Runtime]
    # Where the agents' commands run, or why none can (then they are refused).
    sandbox: Sandbox | CommandRunner | SandboxUnavailable
    runner_id: str
    clock: Callable[[], datetime]
    # How an attempt's events go out with the attempt's own bus credential (decision
    # 0014); None: with the service's user (a bus without per-service users).
    credentials: AttemptCredentials | None = None
    # The names of the runtimes this runner has, as it announces them (``runners``).
    runtime_names: tuple[str, ...] = ()
    version: str = ""
    # The runner's name (its registry entry's first key token; the holder its credentials
    # name: decision 0026); empty: the host's name.
    runner_name: str = ""


@dataclass
class AgentRunner:
    """The service and the parts tests look at (the running agents)."""

    service: Service
    handlers: Handlers
    # Keeps the runner's entry in the registry of live runners.
    announcer: Announcer | None = None
    # The attempts' preparations and commits, within their deadline.
    steps: Steps | None = None


def wire(settings: RunnerSettings, adapters: Adapters) -> AgentRunner:
    """The runner's lanes and control follower around ``adapters``."""
    agent, llm = settings.agent, settings.llm
    service = Service(
        name=SERVICE_NAME,
        settings=settings.runtime,
        # Its own step records keyed with its own secret, out of any attempt's reach
        # (decision 0032); without a secret (a bus without users), their public ids.
        step_record_key=step_record_key(settings.runner_secret) if settings.runner_secret else None,
    )
    projection: Projection[State] = Projection(State(), evolve)

    def publisher() -> EventPublisher:
        # An attempt's events go out with its own credential where the bus grants them
        # (``handle`` below); everything else with the service's.
        return current_publisher() or service.publisher

    attempts = Attempts(
        runtimes=adapters.runtimes,
        settings=agent,
        runner_id=adapters.runner_id,
        clock=adapters.clock,
        tiers=dict(llm.tiers),
        sandbox=adapters.sandbox,
    )

    # A preparation or commit given up whose worker thread never returned: the runner is
    # not ready while it is stuck, and not live once it has stayed so for another step
    # timeout (``adapters.steps``), so its supervisor replaces it.
    service.extra_ready_check = attempts.steps.ready
    service.extra_live_check = attempts.steps.live

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

    # Which runtimes the other live runners have: an attempt on a runtime this runner
    # lacks goes on to one of them (``domain.routing``).
    live_runners = LiveRunners(
        lambda: service.js, adapters.runner_id, settings.runtime.runner_entry_seconds
    )
    handlers = Handlers(
        projection,
        publisher,
        attempts,
        history=history,
        router=live_runners.route,
        ack_wait_seconds=agent.ack_wait_seconds,
        heartbeat_seconds=agent.heartbeat_seconds,
    )
    subject = type_subject(WorkspaceReady)

    async def start(js: JetStreamContext) -> int:
        # Only the types evolve folds: the work consumer's and the control follower's.
        folded: tuple[type[Event], ...] = (WorkspaceReady, *CONTROL_TYPES)
        last = await projection.rebuild(js, "agent-runner", due=pending, types=folded)
        # Clones of fetched attempts whose mission ended while this runner was down.
        swept = await asyncio.to_thread(
            attempts.sweep, lambda mission_id: projection.state.mission(mission_id).ended
        )
        if swept:
            log.info("removed the clones of ended missions", extra={"clones": swept})
        follower = await follow_control_events(js, last, handlers.on_control, service.reconnects)
        service.on_stopping.append(follower.stop)
        service.on_stopping.append(handlers.forgotten)
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

    credentials = adapters.credentials
    if credentials is not None:
        # First of the stop hooks: an attempt still asking for a refused credential gives
        # up then, rather than hold the hooks that wait for the attempts to end.
        service.on_stopping.insert(0, credentials.stop)

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
                max_deliver=WORK_MAX_DELIVER,
                # A WorkspaceReady delivered again runs nothing: the attempt's result is
                # folded as it is published, and a redelivery reads the mission's
                # history before it decides (``Handlers.handle``). So settlements are
                # sent without waiting for the server's answer, a message and a wake-up
                # less a task; one lost with the server is sent again at the reconnect.
                confirm_settlements=False,
                # Shared by every runner process, each bound by its lanes (see ``bus``).
                ack_pending=WORK_ACK_PENDING,
                # Created after the replay, the work consumer starts at the first attempt
                # still owed (a workspace announced before any runner ran), so it is run
                # once, by one runner.
                first_due=lambda: projection.first_due,
            )
        )
    service_at_zero(service.name, [subject])
    announcer = announce(settings, adapters, service)
    return AgentRunner(
        service=service, handlers=handlers, announcer=announcer, steps=attempts.steps
    )


def announce(settings: RunnerSettings, adapters: Adapters, service: Service) -> Announcer:
    """The runner's entry in the registry of live runners (``aether_runtime.runners``):
    written once the service has started, every third of the entry's age, and deleted as
    it stops, before its lanes drain (it takes no new work then). Written with the
    runner's own credential where the bus grants them, else the service's connection."""
    agent = settings.agent
    started_at = adapters.clock()
    refresh = settings.runtime.runner_entry_seconds / 3
    name = adapters.runner_name or socket.gethostname()

    def entry() -> RunnerEntry:
        return RunnerEntry(
            runner_id=adapters.runner_id,
            name=name,
            host=socket.gethostname(),
            runtimes=list(adapters.runtime_names),
            default_runtime=agent.runtime,
            lanes=agent.concurrency,
            version=adapters.version,
            started_at=started_at,
            announced_at=adapters.clock(),
            refresh_seconds=refresh,
        )

    credentials = adapters.credentials
    if credentials is not None:
        connect = own_connection(
            credentials.nats_url, name, adapters.runner_id, credentials.secret, credentials.tls
        )
        announcer = Announcer(entry, refresh, name=name, connect=connect)
    else:
        announcer = Announcer(entry, refresh, name=name, js=lambda: service.js)

    async def begin() -> None:
        announcer.start()

    service.on_started.append(begin)
    service.on_stopping.insert(0, announcer.stop)
    return announcer
