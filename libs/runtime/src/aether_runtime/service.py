"""The shell every Aether service shares.

A service is a FastStream app with one durable pull consumer on the mission stream. On
start it connects, makes sure the streams exist, rebuilds its projection by replaying the
stream, and only then starts consuming, so every handler sees a complete state.

Start-up is level-triggered: work that was due before the service started is done. The
durable consumer is created (the first time only) at the earliest event that, by the
rebuilt projection, still asks for work (``ConsumerSpec.first_due``), else right after the
replayed position; the handlers' projection checks skip what was already done between
there and the end of the replay. An existing durable resumes at its ack floor, and a
message is acknowledged only after its handler returned, so nothing before it is owed.
This uses the consumer itself to bring the work back rather than running it outside
one: every effect then goes through a delivery (kept alive, redelivered after a crash,
given to one replica of a competing consumer at a time), which a separate start-up
step run by each replica could not promise.

Each delivery is decoded once; a payload that does not decode is terminated and counted
(poison), an event type this build does not know is acknowledged and skipped. A handler
that raises is retried by why it failed (see ``failures``): in place for as long as the
bus or a database is unreachable; a few times within seconds for a failure about the
message, which is then recorded on the mission as ``StepFailed`` and terminated (see
``steps``), so one bad event holds up an ordered consumer for seconds, not for its whole
delivery limit; handed back with a delay when the handler asks (``RetryLater``). A message
is never dropped in silence: at the delivery limit the failure is recorded all the same.

Consumers run with a short ack wait and the runtime keeps each running handler's message
alive, and acknowledgements are confirmed by the server (see ``acks``): a delivery lost
with a restarting NATS server is redelivered within seconds. ``/readyz`` reports a
consumer that has stalled (see ``stall``). After a reconnect, every delivery the server
still holds for no process of the service (lost in flight with the restart) is handed
back at once rather than after the ack wait, and fetches waiting on a pull request lost
with the server ask again at once (see ``reconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from faststream.nats.security import NatsSecurity, NatsUserPassword
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from aether_events import (
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    TERMINAL_TYPES,
    Event,
    EventPublisher,
    StepRetryRequested,
    UnknownEventType,
    decode,
    ensure_streams,
    on_its_subject,
    over_attempt_limit,
    tag_of,
    type_subject,
)
from aether_events.replay import UNANSWERED
from aether_runtime import health, http, listen, metrics
from aether_runtime.acks import ACK, TERM, Keeper, Settled, confirm, send
from aether_runtime.bus_metrics import Readings, poll_bus
from aether_runtime.consumers import ConsumerSpec, ensure_consumer
from aether_runtime.event_ids import check_duplicate, configure
from aether_runtime.failures import RetryLater, transient
from aether_runtime.lease import Leader, Lease, ensure_leases_bucket
from aether_runtime.logs import log_context
from aether_runtime.projection import Projection
from aether_runtime.pull import Puller
from aether_runtime.reconnect import Holders, Lane, Reconnects, hand_back
from aether_runtime.roles import ROLES
from aether_runtime.runners import ensure_bucket
from aether_runtime.settings import RuntimeSettings
from aether_runtime.stall import ConsumerWatch
from aether_runtime.steps import Steps
from aether_runtime.watchdog import LoopWatchdog

log = logging.getLogger("aether.runtime")

# How long a stop waits for what it cancelled (handed-off handlers) and for each stop hook.
STOP_GRACE_SECONDS = 10.0

Rebuild = Callable[[JetStreamContext], Awaitable[int]]

# How long one pull request waits for messages. A request lost with a restarting server
# is not waited out: the lane asks again at the reconnect (``pull.Puller.wake``).
FETCH_SECONDS = 2.0
# The longest pause between runs of a handler failing on the bus or a database: short,
# since the bus comes back within seconds of a restart and every message waits for it.
TRANSIENT_PAUSE_SECONDS = 1.0
# Between reconnection attempts, and never giving up: a service outlives its bus.
RECONNECT_WAIT_SECONDS = 0.5
# A delivery is logged at INFO when its handler published an event or took this long, or
# it ends a mission; the many that only fold an event are logged at DEBUG (a service sees
# most events of every mission, and a line each cost more than folding them).
SLOW_HANDLER_SECONDS = 1.0
# Events published by the handler running in this context (see ``CountingPublisher``).
_published_here: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "published_here", default=None
)
# What the handler running in this context said it did, for its delivery's line (``note``).
_noted_here: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "noted_here", default=None
)


def note(**fields: Any) -> bool:
    """Add ``fields`` (what the handler did: a branch, a merge's result, the events it
    decided) to the one line its delivery gets, ``handled <type>``, rather than a line of
    their own: a log line costs a service about as much CPU as folding an event, and a
    chained task's deliveries wrote two lines each. False outside a delivery (a timer's
    or a start-up's work), where the caller logs on its own."""
    here = _noted_here.get()
    if here is None:
        return False
    here.update(fields)
    return True


@dataclass
class Delivery:
    """What a handler may know and do about the message that carried its event."""

    sequence: int
    # How many times a handler has been given the message: the server's deliveries, and
    # the runtime's retries in place (see ``failures``).
    num_delivered: int
    pending: int
    _message: Msg | None = None
    _release: Callable[[], None] | None = None

    @property
    def redelivered(self) -> bool:
        return self.num_delivered > 1

    def release(self) -> None:
        """Let the consumer deliver the next message while this handler goes on (a
        consumer with ``ConsumerSpec.hand_offs``; elsewhere nothing happens). The message
        is still kept alive, and settled when the handler ends, as any other; the handler
        keeps whatever order it needs among the ones it released (see the planner)."""
        if self._release is not None:
            self._release()

    async def in_progress(self) -> None:
        """Tell JetStream the handler is still at work, so it does not redeliver."""
        if self._message is not None:
            await self._message.in_progress()

    @contextlib.asynccontextmanager
    async def keep_alive(self, every: float = 15.0) -> AsyncIterator[None]:
        """Send in-progress acknowledgements every ``every`` seconds while the body runs
        (a model call, an agent at work), so a slow handler is not taken for a dead one."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(every)
                await self.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class CountingPublisher(EventPublisher):
    """An EventPublisher that counts what it publishes and logs with the event's ids, and
    sends an event again at once when the connection comes back while it waits for the
    stream's answer (see ``reconnect``), rather than waiting out the publish timeout for
    an answer the restarted server will never send."""

    def __init__(
        self,
        js: JetStreamContext,
        service: str,
        reconnects: Reconnects | None = None,
        *,
        check_duplicates: bool = True,
    ) -> None:
        super().__init__(js)
        self._service = service
        self._reconnects = reconnects
        # Whether a duplicate's first copy is read back (``event_ids.check_duplicate``):
        # not on an attempt's connection, which may not read the stream, and whose ids
        # are keyed with its attempt's own key (decision 0030).
        self._check_duplicates = check_duplicates
        # The counter's child per event type and duplicate flag, looked up once.
        self._published: dict[tuple[type[Event], bool], Counter] = {}

    async def publish(
        self,
        event: Event,
        *,
        expected_last_subject_sequence: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        while True:
            # Not with an expected sequence: a copy the first send stored would fail its
            # check (the server tests it before the duplicate window).
            if self._reconnects is None or expected_last_subject_sequence is not None:
                ack = await super().publish(
                    event,
                    expected_last_subject_sequence=expected_last_subject_sequence,
                    headers=headers,
                )
                break
            # The wait for the stream's answer is cut short at the next reconnect (an
            # expiry moved to now), in this task: one made per publish to wait beside it
            # cost more than the publish's own work.
            cut = asyncio.timeout(None)
            forget = self._reconnects.at_next(functools.partial(_expire_now, cut))
            try:
                async with cut:
                    ack = await super().publish(event, headers=headers)
                break
            except TimeoutError:
                if not cut.expired():
                    raise  # the publish's own timeout
            finally:
                forget()
            log.info(
                "publish sent again after a reconnect",
                extra={"published_event_id": event.event_id},
            )
        duplicate = bool(ack.duplicate)
        if duplicate and self._check_duplicates:
            # Whose message the stream holds under the id: ours (a repeated step), or
            # another one stored first, and then this event is not stored (``event_ids``).
            await check_duplicate(self._js, self._service, event, ack)
        published = self._published.get((type(event), duplicate))
        if published is None:
            published = self._published[(type(event), duplicate)] = metrics.EVENTS_PUBLISHED.labels(
                self._service, tag_of(type(event)), str(duplicate).lower()
            )
        published.inc()
        counter = _published_here.get()
        if counter is not None:
            counter[0] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "published %s",
                tag_of(type(event)),
                extra={"published_event_id": event.event_id, "seq": ack.seq, "dup": duplicate},
            )
        return ack


@dataclass
class Service:
    """Wires one service: NATS connection, streams, projection rebuild, consumer, HTTP."""

    name: str
    settings: RuntimeSettings
    on_started: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stopping: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run once the broker stopped, its running handlers ended with it: the last use of
    # what they used (the model client's connections).
    on_stopped: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    extra_ready_check: Callable[[], tuple[bool, str]] | None = None
    # Whether the process is still of use, for /healthz (None: it is while it answers).
    extra_live_check: Callable[[], tuple[bool, str]] | None = None
    # How often consumer lag and stream sizes are read into gauges (0: never); the same
    # readings find stalled consumers.
    bus_poll_seconds: float = 10.0
    # One process of the service runs at a time (the git broker, the scheduler: deployed
    # with Recreate; ``aether up`` starts one again only once it exited). What its
    # durables owe a process that is gone is then no live process's: a start hands it
    # back at once instead of leaving it to the ack wait (see ``_after_start``). Any
    # service is so where its settings say it is the only process (``one_process``).
    single_writer: bool = False
    # How long a stop waits for its cancelled handed-off handlers, and for each stop hook.
    stop_grace_seconds: float = STOP_GRACE_SECONDS
    # A consumer with messages waiting that delivers nothing for this long is stalled.
    stall_after_seconds: float = 60.0
    # Errors that, besides the bus's and the network's, mean the world is failing rather
    # than the message (a database driver's connection errors; see ``failures``).
    transient_errors: tuple[type[BaseException], ...] = ()
    # More HTTP routes on the service's port, by exact path (a service's own small API).
    routes: dict[str, health.ASGIApp] = field(default_factory=dict)
    # With a lease (``lead_by_lease``), any number of processes of the service may run:
    # only the one holding it pulls from the consumers and runs ``on_lead``; the others
    # stand by, having run ``on_follow`` (see ``lease``).
    on_lead: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_follow: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The key of the ids of this process's own step records (``steps``), where they are
    # not the services' keyed ids: an agent runner's, from its own secret (decision
    # 0032). ``None``: ``step_event_id``'s (the services' key, or the public ids).
    step_record_key: bytes | None = None

    def __post_init__(self) -> None:
        # Before anything derives an id: every id this process publishes, and every one it
        # derives again to look something up, is keyed alike (decision 0031).
        configure(self.name, self.settings)
        credentials = self.settings.nats_credentials
        tls = self.settings.nats_tls()
        security: NatsSecurity | None = None
        if credentials:
            security = NatsUserPassword(
                credentials["user"], credentials["password"], ssl_context=tls
            )
        elif tls is not None:
            security = NatsSecurity(ssl_context=tls)
        self.broker = NatsBroker(
            self.settings.nats_url,
            security=security,
            # The service's one connection: the broker opens it (``_start``) and the
            # service publishes, acknowledges, replays and asks on it too.
            name=f"aether-{self.name}",
            inbox_prefix=self._inbox_prefix,
            logger=None,
            graceful_timeout=30.0,
            # (Typed as int, but handed to nats-py, which sleeps for it: a float works.)
            reconnect_time_wait=RECONNECT_WAIT_SECONDS,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            reconnected_cb=self._reconnected,
            # No dependency injection (the consumers' lanes are the runtime's own, see
            # ``pull``; the broker subscribes to nothing).
            apply_types=False,
        )
        self.nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._publisher: CountingPublisher | None = None
        self._rebuild: Rebuild | None = None
        self._consumers: list[ConsumerSpec] = []
        self._bounded: list[tuple[Projection[Any], tuple[Callable[[], int], ...]]] = []
        self.ready = False
        self.stopping = False
        self.started_at = time.monotonic()
        self._poller: asyncio.Task[None] | None = None
        self._poller_stop = asyncio.Event()
        self._watchdog: LoopWatchdog | None = None
        self.steps = Steps(self)
        self._retry_spec: ConsumerSpec | None = None
        self._busy: dict[str, int] = {}
        # The deliveries being handled or settled here, kept alive meanwhile.
        self._keeper = Keeper(lambda: self._nats)
        self._backoff_until: dict[str, float] = {}
        self._watches: dict[tuple[str, str], ConsumerWatch] = {}
        self._stalled: dict[tuple[str, str], str] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._handed_off: set[asyncio.Task[None]] = set()
        self._settled = Settled()
        self._reconnected_at = datetime.now(UTC)
        self._consumers_started_at = datetime.now(UTC)
        self._hand_back: asyncio.Task[None] | None = None
        self._holders: Holders | None = None
        self._reconnects = Reconnects()
        self.leader: Leader | None = None
        # The consumers' lanes (one per ``consume``), started with the consumers and
        # woken after a reconnect.
        self._pullers: list[Puller] = []
        # Per consumer and per event type, the metric children a delivery updates
        # (looked up once rather than at every delivery).
        self._meter_sets: dict[tuple[str, str], _Meters] = {}
        # Per consumer spec, the stream sequence its lane settled last and how, as the
        # server confirmed it (see ``_deliver``).
        self._last_settled: dict[int, tuple[int, bytes]] = {}
        # Consumers with no delivery since the latest reconnect, and when it was
        # (monotonic): the first one is logged with how long it took.
        self._awaiting_first: set[str] = set()
        self._reconnected_mono = 0.0
        for counter in (
            metrics.REDELIVERIES,
            metrics.POISON,
            metrics.BUS_POLL_ERRORS,
            metrics.REPLAYED,
        ):
            counter.labels(self.name)
        # Read at each scrape from what /readyz answers, so the gauge (and the alert on
        # it) sees a lost bus or a stalled consumer, not only the start and the stop.
        metrics.READY.labels(self.name).set_function(self._ready_value)

    # --- wiring -------------------------------------------------------------------

    @property
    def reconnects(self) -> Reconnects:
        """The connection's reconnects (a follower asks the restarted server again at once)."""
        return self._reconnects

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("service not connected yet")
        return self._js

    @property
    def publisher(self) -> CountingPublisher:
        if self._publisher is None:
            raise RuntimeError("service not connected yet")
        return self._publisher

    def bound(self, projection: Projection[Any], *floors: Callable[[], int]) -> None:
        """Keep the event ids ``projection`` remembers bounded: at each bus reading its
        position moves to the lowest point every lane feeding it has settled, which is
        the ack floor JetStream stores for each of this service's mission stream
        consumers (every message at or below it was handled, so folded, and is never
        delivered to that consumer again) and each of ``floors`` (the last sequence a
        follower of the service's own has handed over)."""
        self._bounded.append((projection, floors))

    def _advance_projections(self, readings: Readings) -> None:
        settled: list[int] = []
        retries = self._retry_spec.durable if self._retry_spec is not None else None
        for (stream, durable), info in readings.items():
            if stream != MISSIONS_STREAM or durable == retries:
                continue  # another stream's sequences; the retry requests fold nothing
            if info is None or info.ack_floor is None:
                return  # a consumer not there (yet): nothing is known of its lane
            settled.append(info.ack_floor.stream_seq or 0)
        for projection, floors in self._bounded:
            lanes = settled + [floor() for floor in floors]
            if lanes:
                projection.advance(min(lanes))

    def rebuild_with(self, rebuild: Rebuild) -> None:
        """Set the coroutine that replays the stream into the projection; returns the last
        stream sequence it folded."""
        self._rebuild = rebuild

    def consume(self, spec: ConsumerSpec) -> None:
        """Register a durable consumer whose deliveries go to ``spec.handler``."""
        if self._retry_spec is None:
            # Every service with consumers takes requests to retry its failed steps.
            self._retry_spec = ConsumerSpec(
                durable=f"{self.name}-step-retries",
                subject=type_subject(StepRetryRequested),
                handler=self.steps.on_retry_requested,
                start_at_new=True,
            )
            self.consume(self._retry_spec)
        self._consumers.append(spec)
        # Exported from the start, so dashboards show zeros rather than gaps.
        for metric in (
            metrics.CONSUMER_PENDING,
            metrics.CONSUMER_ACK_PENDING,
            metrics.CONSUMER_REDELIVERED,
            metrics.HANDLERS_IN_PROGRESS,
            metrics.HANDED_BACK,
        ):
            metric.labels(self.name, spec.durable)

    def lead_by_lease(self, key: str, ttl: int, *, force_first: bool = False) -> Leader:
        """Run as one active process among any number: the one holding the lease ``key``
        (``ttl`` seconds unrenewed) consumes and runs ``on_lead``; the others stand by
        (``on_follow``), and one of them takes over when the lease is let go or expires.
        ``force_first``: the first take does not wait for a lease a predecessor held (a
        process that knows it is the only one, ``one_process``)."""
        lease = Lease(lambda: self.js, key, ttl)
        self.leader = Leader(lease, self.name, self._lead, self._follow, force_first=force_first)
        return self.leader

    @property
    def acting(self) -> bool:
        """Whether this process may act now: always, unless it runs by a lease and does
        not hold it (a standby, or an active one past its deadline)."""
        return self.leader is None or self.leader.acting()

    async def _lead(self) -> None:
        """The lease was taken: the service's own parts first (``on_lead``: a standby
        catches up and starts what only the active one runs), then the consumers; what
        they held for a process that is gone is handed back at once."""
        for hook in self.on_lead:
            await hook()
        self._consumers_started_at = datetime.now(UTC)
        await self._start_pullers_while_transient()
        if self._hand_back is None or self._hand_back.done():
            self._hand_back = asyncio.create_task(
                self._hand_back_lost(self._consumers_started_at),
                name=f"{self.name}-hand-back-at-lead",
            )
        log.info("active", extra={"port": self.settings.port})

    async def _follow(self) -> None:
        """Not (or no longer) holding the lease: stop pulling (the running handler ends,
        refused any act; what arrived is handed back), then ``on_follow``."""
        await self._stop_pullers()
        for hook in self.on_follow:
            await hook()
        log.info("standing by", extra={"port": self.settings.port})

    # --- lifecycle ----------------------------------------------------------------

    def spec_for(self, durable: str, stream: str) -> ConsumerSpec | None:
        """The first registered consumer of ``durable`` on ``stream`` (retries excluded)."""
        for spec in self._consumers:
            if spec is not self._retry_spec and (spec.durable, spec.stream) == (durable, stream):
                return spec
        return None

    def lock_for(self, spec: ConsumerSpec) -> contextlib.AbstractAsyncContextManager[Any]:
        """What a handler call of ``spec`` holds: for a consumer that handles one event at
        a time, a lock a retried step shares, so a retry never runs beside it."""
        if spec.max_workers > 1 or spec.hand_offs > 0:
            return contextlib.nullcontext()
        lock = self._locks.get(id(spec))
        if lock is None:
            lock = self._locks[id(spec)] = asyncio.Lock()
        return lock

    async def _start(self) -> None:
        # One connection per process: FastStream's broker opens it, with the service's
        # name, credentials, inbox prefix and reconnection settings, and its subscribers
        # pull on it; the service uses the same client for everything else (see
        # docs/decisions/0013-one-connection-per-service.md).
        self.nc = await self.broker.connect()
        self._js = self.nc.jetstream()
        log.info("connected to the bus", extra={"event_loop": event_loop_name()})
        self._holders = Holders(self.nc, self._inbox_prefix, self.held)
        await self._holders.serve()
        role = ROLES.get(self.name)
        if not self.settings.nats_user or (role is not None and role.declares_streams):
            await ensure_streams(self._js, self.settings.stream_settings())
            if role is not None and role.declares_streams:
                await ensure_bucket(
                    self._js, self.settings.runner_entry_seconds, self.settings.stream_replicas
                )
                await ensure_leases_bucket(self._js, self.settings.stream_replicas)
        else:
            # Under per-service permissions only the role that declares the streams may
            # create or change them (see ``roles``); the others wait for them.
            await wait_for_streams(self._js)
        self._publisher = CountingPublisher(self._js, self.name, self._reconnects)
        last_seq = 0
        if self._rebuild is not None:
            began = time.monotonic()
            last_seq = await self._rebuild(self._js)
            log.info(
                "projection rebuilt",
                extra={"last_sequence": last_seq, "seconds": round(time.monotonic() - began, 3)},
            )
        for spec in self._consumers:
            await ensure_consumer(self.js, spec, last_seq)
        await self.steps.watch_delivery_limits(self._consumers)

    def hurry(self) -> None:
        """The paced consumers (``ConsumerSpec.pace``) fetch what the stream holds for
        them now rather than at their next turn: someone waits for it to be handled."""
        for puller in self._pullers:
            puller.hurry()

    @property
    def _inbox_prefix(self) -> str:
        """Where the service's replies arrive: its permissions let it read them only there
        (see ``bus_auth``)."""
        return f"_INBOX.{self.name}"

    async def _reconnected(self) -> None:
        # Fetches waiting on a pull request the restarted server never got ask again now.
        for puller in self._pullers:
            puller.wake()
        woken = len(self._pullers)
        self._reconnects.happened()
        self._reconnected_at = datetime.now(UTC)
        self._reconnected_mono = time.monotonic()
        self._awaiting_first = {spec.durable for spec in self._consumers}
        try:
            sent = await self._settled.resend(self._nats)
        except Exception as error:
            log.warning("could not repeat acknowledgements", extra={"error": repr(error)})
            return
        log.info("reconnected to nats", extra={"acks_repeated": sent, "fetches_woken": woken})
        if self._hand_back is None or self._hand_back.done():
            self._hand_back = asyncio.create_task(
                self._hand_back_lost(self._reconnected_at), name=f"{self.name}-hand-back"
            )

    async def _hand_back_lost(self, reconnected_at: datetime) -> None:
        """Have the server deliver again, at once, what it delivered to no process of this
        service (see ``reconnect``). A durable with one lane here is taken to be this
        process's alone (the one-at-a-time consumers, the planner's with hand-offs); one
        with several lanes, or several workers, may be shared with other processes, unless
        this is the service's only process (``alone``; with a lease, the one active)."""
        if self.stopping or not self.acting:
            return
        lanes: dict[tuple[str, str], int] = {}
        workers: dict[tuple[str, str], int] = {}
        for spec in self._consumers:
            key = (spec.stream, spec.durable)
            lanes[key] = lanes.get(key, 0) + 1
            workers[key] = max(workers.get(key, 0), spec.max_workers)
        handed = await hand_back(
            self.js,
            self._nats,
            [
                Lane(
                    stream,
                    durable,
                    sole=self.alone or (count == 1 and workers[(stream, durable)] <= 1),
                )
                for (stream, durable), count in lanes.items()
            ],
            self.held,
            reconnected_at,
            self._holders,
        )
        for durable, sequences in handed.items():
            metrics.HANDED_BACK.labels(self.name, durable).inc(len(sequences))

    @property
    def alone(self) -> bool:
        """Whether this is the only process of the service (see ``single_writer``)."""
        return self.single_writer or self.settings.one_process

    def held(self) -> set[tuple[str, int]]:
        """The deliveries this process is handling or settling: (durable, stream seq)."""
        return self._keeper.keys()

    async def _after_start(self) -> None:
        for hook in self.on_started:
            await hook()
        if self.leader is not None:
            # A standby until it takes the lease (``_lead``).
            self.leader.start()
        elif self.alone and (self._hand_back is None or self._hand_back.done()):
            # The process this one replaces may have died holding a delivery: with one
            # process of the service at a time, nobody holds it now. Handed back, it comes
            # here at once rather than after its ack wait (the last delivery made since
            # the consumers started is on its way to a lane, and kept).
            self._hand_back = asyncio.create_task(
                self._hand_back_lost(self._consumers_started_at),
                name=f"{self.name}-hand-back-at-start",
            )
        if self.bus_poll_seconds > 0:
            # One entry per durable: a service may run several lanes on the same one.
            consumers = list(dict.fromkeys((spec.stream, spec.durable) for spec in self._consumers))
            self._poller_stop = asyncio.Event()
            self._poller = asyncio.create_task(
                poll_bus(
                    self.js,
                    self.name,
                    consumers,
                    self.bus_poll_seconds,
                    self._poller_stop,
                    observe=self._observe,
                ),
                name=f"{self.name}-bus-metrics",
            )
        if self._watchdog is None:
            # Started once the service is up: a start-up's replay may hold the loop for
            # seconds on a long history. It reports the loop's lag even when it is told
            # never to end the process.
            self._watchdog = LoopWatchdog(
                max(0.0, self.settings.loop_stall_seconds), service=self.name
            )
            self._watchdog.start()
        self.ready = True
        log.info("ready", extra={"port": self.settings.port})

    async def _stop(self) -> None:
        self.stopping = True
        self.ready = False
        if self.leader is not None:
            # No change of roles from here; the lease is let go once nothing runs.
            await self.leader.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._hand_back is not None and not self._hand_back.done():
            self._hand_back.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._hand_back
        if self._poller is not None:
            self._poller_stop.set()
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        # Handlers still at work after releasing their message: their messages are
        # redelivered (unsettled) once their ack wait runs out, as after a crash.
        for task in list(self._handed_off):
            task.cancel()
        await self._within_grace(
            set[asyncio.Future[None]](self._handed_off), "a handed-off handler"
        )
        for hook in self.on_stopping:
            await self._within_grace({asyncio.ensure_future(hook())}, "a stop hook")
        await self.steps.stop()
        # The consumers' lanes stop asking, their running handlers finish, and what
        # arrived meanwhile is handed back (``pull``).
        await self._stop_pullers()
        self._keeper.close()
        if self._holders is not None:
            await self._holders.stop()
        if self.leader is not None:
            # A standby takes over at its next look rather than once the lease expires.
            await self.leader.release()
        # The connection is the broker's to close: ``broker.stop`` stops its subscribers
        # and drains it, after this (in ``stop`` as in the ASGI app's shutdown).

    async def _within_grace(self, tasks: set[asyncio.Future[None]], what: str) -> None:
        """Wait for ``tasks`` to end, at most ``stop_grace_seconds``: a coroutine that
        swallows its cancellation (as one inside nats-py's fetch once did) would
        otherwise hold the stop for good. One still running is cancelled again and left."""
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.stop_grace_seconds)
        for task in tasks - pending:
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s failed while the service stopped", what, exc_info=task.exception())
        for task in pending:
            task.cancel()
            log.warning(
                "%s did not end within %g s of the stop; left behind",
                what,
                self.stop_grace_seconds,
            )

    def ready_check(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting"
        if self.nc is None or not self.nc.is_connected:
            return False, "nats disconnected"
        if self.leader is not None and not self.leader.active:
            # Ready as a process (it takes over when the active one goes), not acting.
            return True, "standby"
        stalled = self.stalled()
        if stalled is not None:
            return False, stalled
        if self.extra_ready_check is not None:
            return self.extra_ready_check()
        return True, "ok"

    def live_check(self) -> tuple[bool, str]:
        """Whether the process is still of use (``/healthz``): it is while it answers,
        unless ``extra_live_check`` says otherwise."""
        if self.extra_live_check is not None:
            return self.extra_live_check()
        return True, "ok"

    def _ready_value(self) -> float:
        return 1.0 if self.ready_check()[0] else 0.0

    def stalled(self) -> str | None:
        """Why a consumer of this service is stalled, or None when none is (from the
        latest reading of the bus; see ``stall``)."""
        return "; ".join(self._stalled.values()) or None

    def _observe(self, readings: Readings) -> None:
        self._advance_projections(readings)
        now = time.monotonic()
        for (stream, durable), info in readings.items():
            watch = self._watches.setdefault(
                (stream, durable), ConsumerWatch(durable, self.stall_after_seconds)
            )
            reason = watch.observe(
                info,
                busy=self._busy.get(durable, 0) > 0,
                backing_off=now < self._backoff_until.get(durable, 0.0),
                now=now,
            )
            if reason is None:
                self._stalled.pop((stream, durable), None)
            else:
                if (stream, durable) not in self._stalled:
                    log.warning("consumer stalled", extra={"consumer": durable, "why": reason})
                self._stalled[(stream, durable)] = reason

    async def start(self) -> None:
        """Start everything without the FastStream ASGI wrapper (for apps like Litestar
        that own the HTTP side and call this from their lifespan)."""
        await self._start()
        await self.start_consumers()
        await self._after_start()

    async def stop(self) -> None:
        """Stop in the order the ASGI app's shutdown does: the service's own parts
        first, on the live connection (deliveries arriving meanwhile are handed back),
        then the broker, which waits for running handlers and closes the connection."""
        self.stopping = True
        await self._stop()
        await self.broker.stop()
        await self._stopped()

    async def _stopped(self) -> None:
        for hook in self.on_stopped:
            await self._within_grace({asyncio.ensure_future(hook())}, "a hook after the stop")

    def asgi(self) -> AsgiFastStream:
        """The ASGI app: FastStream broker plus /healthz, /readyz and /metrics, each
        counted and timed in the HTTP request metrics."""
        routes = {
            "/healthz": health.healthz(self.live_check),
            "/readyz": health.readyz(self.ready_check),
            "/metrics": health.metrics(),
            **self.routes,
        }
        service = self

        class App(AsgiFastStream):
            async def _start_broker(self) -> None:
                await service.start_consumers()

        return App(
            self.broker,
            asgi_routes=[(path, http.instrument(app, path)) for path, app in routes.items()],
            logger=None,
            on_startup=[self._start],
            after_startup=[self._after_start],
            on_shutdown=[self._stop],
            after_shutdown=[self._stopped],
        )

    async def start_consumers(self) -> None:
        """Start the broker's subscriptions, and again while the bus fails them.

        A request lost with a server restarted during start-up times out; FastStream,
        which starts the broker after telling the ASGI server the app is up, then left
        the process running with no consumer, never ready, never restarted. A
        subscription made stays made (FastStream skips it the next time)."""
        self._consumers_started_at = datetime.now(UTC)

        async def start() -> None:
            await self.broker.start()
            if self.leader is None:  # else once it holds the lease (``_lead``)
                await self._start_pullers()

        await self._while_transient(start)

    async def _start_pullers_while_transient(self) -> None:
        await self._while_transient(self._start_pullers)

    async def _while_transient(self, start: Callable[[], Awaitable[None]]) -> None:
        """``start()``, and again (0.25 s doubling) while the bus fails it transiently."""
        pause = 0.25
        while True:
            try:
                await start()
                return
            except Exception as error:
                if self.stopping or not transient(error):
                    raise
                log.warning(
                    "consumers not started on the bus; retrying",
                    extra={"error": repr(error), "retry_in": pause},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, TRANSIENT_PAUSE_SECONDS)

    async def _start_pullers(self) -> None:
        """One lane per registered consumer, pulling on the service's connection (see
        ``pull``); a lane started stays started."""
        for spec in self._consumers[len(self._pullers) :]:
            puller = Puller(
                self._nats,
                spec.stream,
                spec.durable,
                self._nats.new_inbox(),
                self._on_message(spec),
                # One lane, which the server holds to the consumer's limit of messages
                # in flight: a standing request (see ``pull``).
                standing=spec.max_workers <= 1 and spec.ack_pending is None,
                workers=spec.max_workers,
                expires=FETCH_SECONDS,
                pace=spec.pace,
            )
            await puller.start()
            self._pullers.append(puller)

    def _on_message(self, spec: ConsumerSpec) -> Callable[[Msg], Awaitable[None]]:
        if spec.hand_offs <= 0:
            return lambda msg: self._deliver(spec, msg)

        async def hand_off(msg: Msg) -> None:
            # A future rather than an ``asyncio.Event``, and one callback: this runs for
            # every event the gateway and the planner fold.
            released = asyncio.get_running_loop().create_future()

            def release() -> None:
                if not released.done():
                    released.set_result(None)

            def ended(task: asyncio.Task[None]) -> None:
                self._handed_off.discard(task)
                release()

            task = asyncio.create_task(self._deliver(spec, msg, release))
            self._handed_off.add(task)
            task.add_done_callback(ended)
            await released

        return hand_off

    async def _stop_pullers(self) -> None:
        pullers, self._pullers = self._pullers, []
        await asyncio.gather(*(puller.stop() for puller in pullers))

    # --- deliveries ---------------------------------------------------------------

    def _meters(self, spec: ConsumerSpec) -> _Meters:
        meters = self._meter_sets.get((spec.stream, spec.durable))
        if meters is None:
            meters = self._meter_sets[(spec.stream, spec.durable)] = _Meters(
                self.name, spec.durable
            )
        return meters

    async def _deliver(
        self, spec: ConsumerSpec, raw: Msg, release: Callable[[], None] | None = None
    ) -> None:
        if self.stopping or not self.acting:
            # Hand it straight back: left unacknowledged, it would hold up the consumer
            # (one message in flight) until its ack wait ran out after our restart (or
            # until the process that holds the lease now had it handed back).
            await _nak(raw)
            return
        sequence, num_delivered, pending, stored_ns = delivered_as(raw)
        delivery = Delivery(
            sequence=sequence,
            num_delivered=num_delivered,
            pending=pending,
            _message=raw,
            _release=release,
        )
        meters = self._meters(spec)
        meters.pending.set(pending)
        meters.stored.observe(max(0.0, time.time() - stored_ns / 1e9))
        settled = self._last_settled.get(id(spec))
        if settled is not None and settled[0] == delivery.sequence:
            # Delivered again after this lane settled it: its ack wait ran out before the
            # settlement reached the server (which restarted meanwhile; the delivery was
            # waiting on the lane's standing request, ``pull``), or the server, killed
            # before it wrote the delivery down, ignored the settlement and delivered the
            # message again as new. The work is done: settle it again, not do it twice.
            log.info(
                "a settled message delivered again is settled again",
                extra={"consumer": spec.durable, "seq": delivery.sequence},
            )
            await self._settle(raw, settled[1], spec, delivery.sequence)
            return
        if self._awaiting_first and spec.durable in self._awaiting_first:
            self._awaiting_first.discard(spec.durable)
            log.info(
                "first delivery since the reconnect",
                extra={
                    "consumer": spec.durable,
                    "seconds": round(time.monotonic() - self._reconnected_mono, 3),
                    "seq": delivery.sequence,
                    "deliveries": delivery.num_delivered,
                },
            )
        if delivery.num_delivered > 1:
            metrics.REDELIVERIES.labels(self.name).inc()
        meters.in_progress.inc()
        self._busy[spec.durable] = self._busy.get(spec.durable, 0) + 1
        held = (spec.durable, delivery.sequence)
        self._keeper.hold(held, raw, max(spec.ack_wait_seconds / 4, 0.2))
        try:
            await self._handle(spec, raw, delivery, meters)
        finally:
            self._keeper.drop(held)
            self._busy[spec.durable] -= 1
            meters.in_progress.dec()

    def handling(self, durable: str, sequence: int) -> bool:
        """Whether this process is handling (or settling) that message of ``durable``."""
        return (durable, sequence) in self._keeper

    async def _settle(self, raw: Msg, payload: bytes, spec: ConsumerSpec, sequence: int) -> None:
        # Noted whether or not the server answers: the work is done either way. A server
        # killed before it wrote down the delivery ignores the ack and delivers the
        # message again as new, and one that never answered redelivers it after the ack
        # wait; that copy is then settled the same way, not handled a second time.
        self._last_settled[id(spec)] = (sequence, payload)
        if spec.confirm_settlements:
            await confirm(self._nats, raw, payload, spec.ack_wait_seconds, self._settled)
        else:
            await send(self._nats, raw, payload, self._settled)

    @property
    def _nats(self) -> NatsClient:
        if self.nc is None:
            raise RuntimeError("service not connected yet")
        return self.nc

    async def _handle(
        self, spec: ConsumerSpec, raw: Msg, delivery: Delivery, meters: _Meters
    ) -> None:
        if over_attempt_limit(raw.subject, len(raw.data)):
            # Larger than an attempt's credential says it may publish (the server applies
            # only its own largest message to a callout's user): what the runner sends is
            # well under it, so this is an attempt's flood. Not decoded, not folded.
            metrics.POISON.labels(self.name).inc()
            log.error(
                "event larger than an attempt may publish terminated",
                extra={"subject": raw.subject, "seq": delivery.sequence, "bytes": len(raw.data)},
            )
            await self._settle(raw, TERM, spec, delivery.sequence)
            return
        try:
            event = decode(raw.data)
        except UnknownEventType as unknown:
            metrics.EVENTS_CONSUMED.labels(self.name, unknown.tag, "unknown").inc()
            log.warning("skipping unknown event type", extra={"tag": unknown.tag})
            await self._settle(raw, ACK, spec, delivery.sequence)
            return
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            metrics.POISON.labels(self.name).inc()
            log.error(
                "poison message terminated",
                extra={"subject": raw.subject, "seq": delivery.sequence, "error": str(error)},
            )
            await self._settle(raw, TERM, spec, delivery.sequence)
            return
        if not on_its_subject(event, raw.subject, len(raw.data)):
            # Published with one attempt's credential about another task or attempt: the
            # server allowed the subject, the payload names other work. Not folded.
            metrics.POISON.labels(self.name).inc()
            log.error(
                "event not on its own subject terminated",
                extra={
                    "subject": raw.subject,
                    "seq": delivery.sequence,
                    "event_type": type(event).__name__,
                },
            )
            await self._settle(raw, TERM, spec, delivery.sequence)
            return
        tag = tag_of(type(event))
        task_id = _task_id(event)
        meters.delay.observe(_age(event))
        published = [0]
        _published_here.set(published)
        done: dict[str, Any] = {}
        noting = _noted_here.set(done)
        # The server's count: ``delivery.num_delivered`` also counts retries in place.
        deliveries = delivery.num_delivered
        try:
            with log_context(mission_id=event.mission_id, task_id=task_id, event_id=event.event_id):
                began = time.perf_counter()
                gave_up = await self._attempts(spec, event, delivery, tag)
                elapsed = time.perf_counter() - began
                if gave_up is not None:
                    await self._failed(spec, raw, event, delivery, deliveries, gave_up)
                    return
                meters.of(tag).ok.inc()
                await self._settle(raw, ACK, spec, delivery.sequence)
                # A line per handled event that did something, with the ids above and what
                # the handler noted it did: grep a mission's steps across services (DEBUG
                # shows every delivery).
                noted = (
                    published[0]
                    or done
                    or elapsed >= SLOW_HANDLER_SECONDS
                    or type(event) in TERMINAL_TYPES
                )
                level = logging.INFO if noted else logging.DEBUG
                if not log.isEnabledFor(level):
                    return
                log.log(
                    level,
                    "handled %s",
                    tag,
                    extra={
                        **done,
                        "type": tag,
                        "seq": delivery.sequence,
                        "ms": round(elapsed * 1000, 1),
                        "published": published[0],
                    },
                )
        finally:
            _noted_here.reset(noting)

    def _about_the_world(self, error: BaseException) -> bool:
        """Whether ``error`` came from the bus, the network or a database rather than from
        the message (see ``failures``); any failure while the bus is down counts."""
        return transient(error, self.transient_errors) or not self._nats.is_connected

    async def _attempts(
        self, spec: ConsumerSpec, event: Event, delivery: Delivery, tag: str
    ) -> Exception | None:
        """Run the handler, and again in place while it fails for a reason worth retrying
        here (see ``failures``); returns the error it gave up on, None once it succeeded.
        The message is kept alive meanwhile, and ``delivery.num_delivered`` counts each
        run, as a redelivery would."""
        delays = iter(spec.retry_delays)
        give_up_at = time.monotonic() + spec.transient_patience_seconds
        pause = 0.25
        while True:
            began = time.perf_counter()
            failure: Exception
            try:
                async with self.lock_for(spec):
                    await spec.handler(event, delivery)
                return None
            except Exception as error:
                metrics.EVENTS_CONSUMED.labels(self.name, tag, "error").inc()
                failure = error
            finally:
                self._meters(spec).of(tag).seconds.observe(time.perf_counter() - began)
            if self.stopping or not self.acting or isinstance(failure, RetryLater):
                return failure
            if self._about_the_world(failure):
                if time.monotonic() + pause > give_up_at:
                    return failure
                delay, pause = pause, min(pause * 2, TRANSIENT_PAUSE_SECONDS)
                log.warning(
                    "handler failed on the bus or a database; retrying in place",
                    extra={"type": tag, "retry_in": delay, "error": repr(failure)},
                )
            else:
                next_delay = next(delays, None)
                if next_delay is None:
                    return failure
                delay = next_delay
                log.warning(
                    "handler failed; retrying in place",
                    extra={"type": tag, "retry_in": delay, "attempt": delivery.num_delivered},
                    exc_info=failure,
                )
            await asyncio.sleep(delay)
            delivery.num_delivered += 1

    async def _failed(
        self,
        spec: ConsumerSpec,
        raw: Msg,
        event: Event,
        delivery: Delivery,
        deliveries: int,
        error: Exception,
    ) -> None:
        """Settle a message whose handler gave up (``_attempts``): hand it back with a
        delay when the failure is not about it and the server will deliver it again,
        else record the failed step on the mission and terminate it."""
        tag = tag_of(type(event))
        if self.stopping or not self.acting:
            # Not about the message: the process stops, or lost its lease (the handler's
            # acts were refused). Whoever acts next handles it.
            await _nak(raw)
            return
        if deliveries < spec.max_deliver and (
            isinstance(error, RetryLater) or self._about_the_world(error)
        ):
            chosen = error.delay if isinstance(error, RetryLater) else None
            delay = min(30.0, 0.5 * 2 ** min(deliveries, 6)) if chosen is None else chosen
            # A delay the handler chose is its routine (an attempt handed on to another
            # runner), not a trouble worth a warning at every delivery.
            log.log(
                logging.WARNING if chosen is None else logging.INFO,
                "handler cannot go on now; message handed back",
                extra={"retry_in": delay, "type": tag, "error": repr(error)},
            )
            self._backoff_until[spec.durable] = time.monotonic() + delay + spec.ack_wait_seconds
            await _nak(raw, delay)
            return
        log.error(
            "handler failed; recording the failed step",
            extra={"type": tag, "attempts": delivery.num_delivered},
            exc_info=error,
        )
        try:
            await self.steps.record_failure(spec, event, delivery, error)
        except Exception:
            # Unsettled, the message is delivered again after its ack wait; at its limit
            # on the server, the advisory records the failure instead (see ``steps``).
            log.exception("could not record the failed step")
            return
        await self._settle(raw, TERM, spec, delivery.sequence)


async def wait_for_streams(js: JetStreamContext, every: float = 0.5) -> None:
    """Return once both Aether streams exist (declared by another service)."""
    for stream in (MISSIONS_STREAM, TELEMETRY_STREAM):
        waited = 0.0
        while True:
            try:
                await js.stream_info(stream)
                break
            except (NotFoundError, *UNANSWERED):  # not declared yet, or a cluster electing
                if waited == 0.0:
                    log.info("waiting for the stream to be declared", extra={"stream": stream})
                await asyncio.sleep(every)
                waited += every


class _Meters:
    """The metric children one consumer's deliveries update."""

    def __init__(self, service: str, durable: str) -> None:
        self._service = service
        self.pending = metrics.CONSUMER_PENDING.labels(service, durable)
        self.in_progress = metrics.HANDLERS_IN_PROGRESS.labels(service, durable)
        self.delay = metrics.DELIVERY_DELAY_SECONDS.labels(service, durable)
        self.stored = metrics.CONSUMER_WAIT_SECONDS.labels(service, durable)
        self._types: dict[str, _TypeMeters] = {}

    def of(self, tag: str) -> _TypeMeters:
        meters = self._types.get(tag)
        if meters is None:
            meters = self._types[tag] = _TypeMeters(self._service, tag)
        return meters


class _TypeMeters:
    def __init__(self, service: str, tag: str) -> None:
        self.ok = metrics.EVENTS_CONSUMED.labels(service, tag, "ok")
        self.seconds = metrics.HANDLER_SECONDS.labels(service, tag)


async def _nak(raw: Msg, delay: float | None = None) -> None:
    """Hand ``raw`` back to the server (after ``delay`` seconds), unless settled."""
    if not raw.is_acked:
        await raw.nak(delay=delay)


def delivered_as(raw: Msg) -> tuple[int, int, int, int]:
    """A JetStream delivery's stream sequence, deliveries so far, messages pending after
    it and when the stream stored it (ns since the epoch), read off its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``,
    or with a domain and an account hash before the stream). nats-py's ``Msg.metadata``
    says the same with a datetime and two dataclasses made for every message, which cost
    a service more than the rest of a delivery's bookkeeping."""
    tokens = raw.reply.split(".") if raw.reply else []
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        first = 4
    elif len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        first = 6
    else:
        meta = raw.metadata  # raises what nats-py raises for a message that is not one
        return (
            meta.sequence.stream,
            meta.num_delivered,
            meta.num_pending,
            int(meta.timestamp.timestamp() * 1e9),
        )
    return (
        int(tokens[first + 1]),
        int(tokens[first]),
        int(tokens[first + 4]),
        int(tokens[first + 3]),
    )


def _expire_now(timeout: asyncio.Timeout) -> None:
    timeout.reschedule(asyncio.get_running_loop().time())


def _age(event: Event) -> float:
    """Seconds since the event occurred (never negative: clocks of two hosts differ)."""
    occurred = event.occurred_at
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    return max((datetime.now(UTC) - occurred).total_seconds(), 0.0)


def _task_id(event: Event) -> str | None:
    value: Any = getattr(event, "task_id", None)
    if value is None:
        task = getattr(event, "task", None)
        value = getattr(task, "id", None)
    return value if isinstance(value, str) else None


def event_loop_name() -> str:
    """Which event loop runs this process: ``uvloop`` (what uvicorn takes when it is
    installed, as it is with the runtime) or ``asyncio``."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def serve(service: Service) -> None:
    """Run the service's ASGI app with uvicorn until interrupted, on a port bound before
    the app starts (see ``listen``)."""
    import uvicorn

    from aether_runtime.server import Server

    sock = listen.bind_or_exit(service.settings.host, service.settings.port)
    config = uvicorn.Config(
        service.asgi(),
        host=service.settings.host,
        port=service.settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    Server(config).run(sockets=[sock])
