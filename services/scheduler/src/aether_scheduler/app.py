"""Wiring the scheduler: every mission event in order, telemetry for liveness, a timer loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    ALL_TYPES,
    TELEMETRY_STREAM,
    TELEMETRY_TYPES,
    AgentHeartbeat,
    Event,
    WorkspaceReady,
    replay,
    type_subjects,
)
from aether_events.replay import START_PATIENCE_SECONDS
from aether_runtime import ConsumerSpec, Projection, Service
from aether_runtime.attempt_auth import AttemptAuthorizer, AttemptKey, Grants
from aether_runtime.attempt_connections import (
    AttemptConnections,
    ConnectionCutter,
    HeldConnection,
)
from aether_runtime.bus_auth import system_user_name
from aether_runtime.metrics import service_at_zero
from aether_runtime.roles import ROLES, only_published_by
from aether_scheduler import metrics
from aether_scheduler.config import SERVICE_NAME, SchedulerSettings
from aether_scheduler.domain import Config, State, evolve
from aether_scheduler.domain.model import IN_FLIGHT
from aether_scheduler.handlers import Handlers
from aether_scheduler.history import replay_history
from aether_scheduler.standby import Standby


@dataclass
class Scheduler:
    """The service and the parts tests look at."""

    service: Service
    handlers: Handlers


log = logging.getLogger("aether.scheduler")

# What only the scheduler publishes: applied as each is stored (``Handlers._publish``),
# not delivered back (``aether_runtime.roles.only_published_by``).
OWN_TYPES: frozenset[type[Event]] = only_published_by("scheduler")
# What the scheduler has no use for: a WorkspaceReady says only that the broker made the
# attempt's workspace, and the attempt's liveness clock waits for a runner to take it
# (``domain.evolve``). One delivery less a task.
UNUSED: frozenset[type[Event]] = frozenset({WorkspaceReady})
# The mission events the consumer delivers: every mission type but the scheduler's own
# and the unused.
FOLDED: tuple[type[Event], ...] = tuple(
    cls
    for cls in ALL_TYPES
    if cls not in TELEMETRY_TYPES and cls not in OWN_TYPES and cls not in UNUSED
)
# The telemetry that moves a task's liveness clock (``evolve``). The runner beats every
# few seconds for as long as an attempt runs, whatever its agent does, so progress (and
# a transcript entry) would say nothing more: each was a delivery, a decode and a
# confirmed acknowledgement per task for a clock the beats already move.
TELEMETRY_FOLDED: tuple[type[Event], ...] = (AgentHeartbeat,)
# Their subjects: what a restart replays from the telemetry stream.
TELEMETRY_FOLDED_SUBJECTS = [s for cls in TELEMETRY_FOLDED for s in type_subjects(cls)]


def attempt_open(state: State, key: AttemptKey) -> bool:
    """Whether ``key`` is an attempt the scheduler handed out and that has not ended,
    in a mission that has not ended either: a cancelled (or failed) mission's attempts
    are told to stop, so none of them is granted a credential from then on unless it
    held one already and is still stopping (``attempt_stopping``)."""
    mission = state.missions.get(key.mission_id)
    if mission is None or mission.terminal:
        return False
    task = mission.tasks.get(key.task_id)
    return task is not None and task.status in IN_FLIGHT and task.attempt == key.attempt


def stop_grace_ends(state: State, mission_id: str, grace_seconds: float) -> datetime | None:
    """When the attempts of ``mission_id``, which has ended, stop being open though
    they have not reported: ``grace_seconds`` after the time its end event says (so a
    scheduler rebuilt later decides the same). None for a mission that has not ended."""
    mission = state.missions.get(mission_id)
    if mission is None or not mission.terminal:
        return None
    if mission.ended_at is None:  # a state not folded from events: long ended
        return datetime.min.replace(tzinfo=UTC)
    return mission.ended_at + timedelta(seconds=grace_seconds)


def attempt_stopping(state: State, key: AttemptKey, now: datetime, grace_seconds: float) -> bool:
    """Whether ``key`` was in flight when its mission ended and may still report (its
    runner, told to stop, publishes its last usage and its stop report), ``now``: until
    it does (its end is folded and it is no longer in flight), for ``grace_seconds``
    after its mission's end at most. Its connection is kept and its holder's credential
    renewed meanwhile; no new one is granted (``Grants``)."""
    mission = state.missions.get(key.mission_id)
    if mission is None or not mission.terminal:
        return False
    task = mission.tasks.get(key.task_id)
    if task is None or task.status not in IN_FLIGHT or task.attempt != key.attempt:
        return False
    ends = stop_grace_ends(state, key.mission_id, grace_seconds)
    return ends is not None and now < ends


def attempt_credentials(
    projection: Projection[State],
    settings: SchedulerSettings,
    handlers: Handlers,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    acting: Callable[[], bool] | None = None,
) -> tuple[AttemptAuthorizer, ConnectionCutter | None] | None:
    """The authorizer of the agent runners' attempt credentials (``attempt_auth``), which
    grants them only for attempts open in this state (and renews them for the attempts
    of a mission that just ended, while they stop), and, given the password of the
    scheduler's user of the system account, the cutter that closes an attempt's
    connections as soon as an event folded by ``handlers`` ends it, or its mission's
    grace is over. None without the issuer's seed or the runners' master secret: no
    credential is granted. ``clock`` is the wall clock the grace is read on. With
    ``acting``, both do nothing while it is false (a standby, or a process that lost the
    lease)."""
    if not settings.attempt_issuer_seed or not settings.runner_master_secret:
        return None
    grace = settings.attempt_stop_grace_seconds

    def is_open(key: AttemptKey) -> bool:
        return attempt_open(projection.state, key)

    def stopping(key: AttemptKey) -> bool:
        return attempt_stopping(projection.state, key, clock(), grace)

    def live(key: AttemptKey) -> bool:
        return is_open(key) or stopping(key)

    def closes_at(mission_id: str) -> float | None:
        ends = stop_grace_ends(projection.state, mission_id, grace)
        return ends.timestamp() if ends is not None else None

    grants = Grants(is_open, stopping)

    def found(held: HeldConnection) -> None:
        grants.held(held.key, held.runner_id, clock().timestamp())

    cutter: ConnectionCutter | None = None
    if settings.system_nats_password:
        cutter = ConnectionCutter(
            AttemptConnections(live),
            settings.runtime.nats_url,
            system_user_name(ROLES[SERVICE_NAME]),
            settings.system_nats_password,
            tls=settings.runtime.nats_tls(),
            closes_at=closes_at,
            found=found,
            clock=lambda: clock().timestamp(),
            may_act=acting,
        )
        handlers.on_applied = cutter.attempt_ended
    authorizer = AttemptAuthorizer(
        issuer_seed=settings.attempt_issuer_seed,
        master=settings.runner_master_secret,
        grants=grants,
        types=ROLES["agent-runner"].attempt_publishes,
        ttl_seconds=settings.attempt_credential_seconds,
        connections=cutter.connections if cutter is not None else None,
        may_answer=acting,
    )
    return authorizer, cutter


def serve_attempt_credentials(
    service: Service, projection: Projection[State], settings: SchedulerSettings, handlers: Handlers
) -> None:
    """Grant attempt credentials when the NATS server calls out for them, and cut ended
    attempts' connections (``attempt_credentials``), while this process is the active
    one: a standby does not even subscribe to the server's requests (each goes to every
    subscriber, and the first answer wins; a queue group would hand some to a process
    that may not answer them)."""
    made = attempt_credentials(projection, settings, handlers, acting=lambda: service.acting)
    if made is None:
        return
    authorizer, cutter = made
    if cutter is None:
        log.warning(
            "ended attempts' connections are not cut: no AETHER_SYSTEM_NATS_PASSWORD "
            "(each lives until its credential expires)"
        )

    async def serve() -> None:
        assert service.nc is not None
        if cutter is not None:
            await cutter.start()
        await authorizer.serve(service.nc)
        log.info("granting attempt credentials", extra={"issuer": authorizer.issuer})
        if cutter is not None:
            # The state is rebuilt: the connections a predecessor granted are cut if their
            # attempt has ended (or its mission, beyond its grace), remembered if not
            # (decision 0025).
            cutter.sweep_soon()

    async def stop() -> None:
        await authorizer.stop()
        if cutter is not None:
            await cutter.stop()

    service.on_lead.append(serve)
    service.on_follow.append(stop)
    service.on_stopping.append(stop)


def wire(settings: SchedulerSettings, config: Config) -> Scheduler:
    """The scheduler's consumers and timers around ``config`` (``bootstrap`` builds it)."""
    service = Service(name=SERVICE_NAME, settings=settings.runtime)
    # One active process at a time, by a lease; any number stand by (decision 0027).
    # What the durables held for a process that is gone is handed back at the takeover.
    service.single_writer = True
    service.lead_by_lease(
        SERVICE_NAME, settings.lease_seconds, force_first=settings.runtime.one_process
    )
    projection: Projection[State] = Projection(State(), evolve)
    handlers = Handlers(projection, lambda: service.publisher, config)
    handlers.may_act = lambda: service.acting
    standby = Standby(lambda: service.js, handlers, TELEMETRY_FOLDED_SUBJECTS, service.reconnects)
    metrics.register(lambda: projection.state)

    async def rebuild(js: JetStreamContext) -> int:
        # A mission that ended within the grace is read in full: its attempts that were
        # running may still report their stop (``attempt_stopping``).
        grace = timedelta(seconds=settings.attempt_stop_grace_seconds)
        last = await replay_history(
            projection, js, "scheduler", full_since=datetime.now(UTC) - grace
        )

        def fold(state: State, event: Event, seq: int) -> State:
            return evolve(state, event)

        projection.state, telemetry = await replay(
            js,
            TELEMETRY_STREAM,
            TELEMETRY_FOLDED_SUBJECTS,
            projection.state,
            fold,
            patience=START_PATIENCE_SECONDS,
        )
        standby.telemetry_after = telemetry.last_sequence
        return last

    timers: list[asyncio.Task[None]] = []

    async def start_timers() -> None:
        handlers.stopped.clear()
        await handlers.catch_up()
        timers.append(asyncio.create_task(handlers.run_timers(), name="scheduler-timers"))

    async def stop_timers() -> None:
        handlers.stopped.set()
        handlers.wake()
        while timers:
            task = timers.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def take_over() -> None:
        # Everything the stopped one decided is folded before anything is decided here.
        await standby.catch_up_and_stop()

    async def stand_by() -> None:
        await stop_timers()
        # From the projection's position: every event at or below it was folded, those
        # above it that were are known by id.
        await standby.start(projection.position)

    service.on_lead.append(take_over)
    serve_attempt_credentials(service, projection, settings, handlers)
    service.rebuild_with(rebuild)
    service.bound(projection, standby.floor)
    service.on_lead.append(start_timers)
    service.on_follow.append(stand_by)
    service.on_stopping.append(stop_timers)
    service.on_stopping.append(standby.stop)
    service.consume(
        ConsumerSpec(
            durable="scheduler",
            subject=ALL_MISSION_EVENTS,
            types=FOLDED,
            handler=handlers.handle,
            # A message delivered again changes nothing here: the projection folds each
            # event once (by stream position, else by id) and every decision carries an
            # id derived from its step, which the stream stores once. So settlements are
            # sent without waiting for the server's answer, a message and a wake-up less
            # a delivery on every hop of every task; one lost with the server is sent
            # again at the reconnect, or its message handed back at once then, or
            # settled again with no work when it comes back (``aether_runtime.service``).
            confirm_settlements=False,
        )
    )
    service.consume(
        ConsumerSpec(
            durable="scheduler-telemetry",
            subject=ALL_TELEMETRY,
            stream=TELEMETRY_STREAM,
            types=TELEMETRY_FOLDED,
            handler=handlers.handle_telemetry,
            start_at_new=True,
        )
    )
    service_at_zero(service.name, [ALL_MISSION_EVENTS, ALL_TELEMETRY])
    return Scheduler(service=service, handlers=handlers)
