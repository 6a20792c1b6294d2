"""Wiring the gateway: the ASGI app around the runtime service and the read model.

The routes are one Litestar app per process (``shared_routes``); each gateway's ASGI app
(``GatewayApp``) hands them its connections with its context on the scope. Its lifespan
opens the database and migrates it, then starts the runtime service,
which catches the read model up from its stored positions and starts the durable
``gateway`` consumers (mission events and telemetry) that fold every later event, and
then the hub that fans the streams out to event-stream clients, and the watch that
checks the read model against the stream and repairs what its consumer missed, and (when
the start found rows folded by an older fold version) the refold of the read model in the
background (``refold``). Stopping
ends the open event streams first, then the service, then the pool.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import traceback
from typing import Any, cast

from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aether_events import ALL_MISSION_EVENTS, ALL_TELEMETRY, TELEMETRY_STREAM
from aether_gateway import api
from aether_gateway.adapters.batches import LIVE_RUN, LIVE_SPACING
from aether_gateway.adapters.bus import Bus
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.diffs import BrokerReader
from aether_gateway.adapters.faults import DATABASE_ERRORS
from aether_gateway.adapters.hub import Hub
from aether_gateway.adapters.limits import (
    BucketLimiter,
    IdempotencyStore,
    RateLimiter,
    StreamSlots,
)
from aether_gateway.adapters.oidc import OidcVerifier
from aether_gateway.adapters.queries import Queries
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.adapters.revocations import RevocationListener
from aether_gateway.adapters.runners import Runners
from aether_gateway.adapters.tokens import TokenStore
from aether_gateway.api.auth import Authenticator, AuthMiddleware
from aether_gateway.api.board import board_router
from aether_gateway.api.idempotency import IdempotencyMiddleware, IdempotentPosts
from aether_gateway.api.limits import READ_RATE
from aether_gateway.api.schema import StrictStructSchema, document_refusals
from aether_gateway.api.served import SCOPE_KEY
from aether_gateway.config import SERVICE_NAME, GatewaySettings
from aether_gateway.handlers import Projector
from aether_gateway.metrics import HttpMetrics, routes_at_zero
from aether_gateway.recovery import ReadModelWatch
from aether_gateway.refold import Refold
from aether_gateway.web import WEB_ROUTES
from aether_runtime import ConsumerSpec, Service
from aether_runtime.metrics import service_at_zero

log = logging.getLogger("aether.gateway")

CONSUMER = "gateway"
# Where ``GatewayApp`` puts its gateway on a connection's scope, for ``/readyz`` (the
# routes of the API find its context under ``api.served.SCOPE_KEY``).
_GATEWAY_KEY = "aether.gateway"
VERSION = "0.2.0"
# What a 503 of ``/readyz`` says to wait (starting, NATS or the database away): the
# parts it checks come back on their own within a second or two.
READY_RETRY_SECONDS = 2


class Gateway:
    """The wired parts of one gateway process."""

    def __init__(self, settings: GatewaySettings, db: Database, oidc: OidcVerifier | None) -> None:
        self.settings = settings
        self.service = Service(SERVICE_NAME, settings.runtime, transient_errors=DATABASE_ERRORS)
        self.db = db
        # Whether the database answered the latest readiness check (``readiness``, run
        # by /readyz and before each /metrics): what ``aether_service_ready`` adds to the
        # runtime's own checks, which it reads at each scrape.
        self._database_answered = True
        self.service.extra_ready_check = self._checked_parts
        self.read_model = ReadModel(
            self.db,
            consumer=CONSUMER,
            transcript_max_entries=settings.transcript_max_entries,
        )
        self.projector = Projector(self.read_model, stopping=lambda: self.service.stopping)
        # Both consumers deliver in order, and let a run's worth of messages be in
        # flight while the projector folds them (``adapters.batches``).
        telemetry = ConsumerSpec(
            durable=self.read_model.telemetry_consumer,
            subject=ALL_TELEMETRY,
            stream=TELEMETRY_STREAM,
            handler=self.projector.on_telemetry,
            max_workers=1,
            hand_offs=LIVE_RUN - 1,
            # A second delivery of a folded event changes nothing (the read model skips
            # what is at or below its position): no acknowledgement waits for an answer.
            confirm_settlements=False,
            # Folded in runs no closer than this: fetched so too (``aether_runtime.pull``).
            pace=LIVE_SPACING,
        )
        self.projector.telemetry = telemetry
        self.service.rebuild_with(self.projector.rebuild)
        self.service.consume(
            ConsumerSpec(
                durable=CONSUMER,
                subject=ALL_MISSION_EVENTS,
                handler=self.projector.on_event,
                max_workers=1,
                hand_offs=LIVE_RUN - 1,
                confirm_settlements=False,
                pace=LIVE_SPACING,
            )
        )
        self.service.consume(telemetry)
        service_at_zero(self.service.name, [ALL_MISSION_EVENTS, ALL_TELEMETRY])
        self.hub = Hub(ring_size=settings.sse_ring_size, max_queue=settings.sse_queue_size)
        self.tokens = TokenStore(self.db)
        self.oidc = oidc
        self.authenticator = Authenticator(
            self.tokens, admin_token=settings.admin_token, oidc=self.oidc
        )
        self.context = api.GatewayContext(
            settings=settings,
            db=self.db,
            read_model=self.read_model,
            queries=Queries(self.db),
            bus=Bus(self.service),
            hub=self.hub,
            tokens=self.tokens,
            authenticator=self.authenticator,
            idempotent=IdempotentPosts(IdempotencyStore(self.db)),
            broker=BrokerReader(settings.broker_url, settings.broker_token),
            runners=Runners(lambda: self.service.js),
            mission_rate=RateLimiter(
                self.db,
                name="missions",
                limit=settings.mission_rate_limit,
                window_seconds=settings.mission_rate_window_seconds,
            ),
            command_rate=RateLimiter(
                self.db,
                name="commands",
                limit=settings.command_rate_limit,
                window_seconds=settings.command_rate_window_seconds,
            ),
            read_rate=BucketLimiter(
                limit=settings.read_rate_limit,
                window_seconds=settings.read_rate_window_seconds,
            ),
            streams=StreamSlots(settings.stream_limit),
            sign_in_rate=BucketLimiter(
                limit=settings.sign_in_rate_limit,
                window_seconds=settings.sign_in_rate_window_seconds,
            ),
            rebuild=self._rebuild,
            oidc=self.oidc,
            next_fold=self.projector.next_fold,
            hurry=self._hurry,
        )
        self.revocations = RevocationListener(self.db, self.tokens, self.context.open_streams)
        self.service.on_started.append(self._start_hub)
        self.watch = ReadModelWatch(
            self.projector, self.service, CONSUMER, every=settings.read_model_check_seconds
        )
        self.service.on_started.append(self.watch.start)
        self.service.on_stopping.append(self.watch.stop)
        # Rows folded by an older fold version are folded again, once the gateway serves.
        self.refold = Refold(self.projector, self.service)
        self.service.on_started.append(self.refold.start)
        self.service.on_stopping.append(self.refold.stop)
        self.service.on_stopping.append(self.projector.close)

    def _hurry(self) -> None:
        """Someone waits for the read model: what the stream holds is fetched and folded
        now, not at the consumers' and the runs' next turns."""
        self.service.hurry()
        self.projector.hurry()

    async def _start_hub(self) -> None:
        await self.hub.start(self.service.js, self.context.closing, self.service.reconnects)

    async def _rebuild(self) -> tuple[int, int, int]:
        return await self.projector.rebuild_all(self.service.js)

    async def start(self) -> None:
        await self.db.open()
        await self.db.migrate()
        self.revocations.start()
        if not self.settings.admin_token:
            log.warning("AETHER_ADMIN_TOKEN is not set: only API tokens and OIDC can get in")
        await self.service.start()

    async def stop(self) -> None:
        self.context.closing.set()
        try:
            await self.revocations.stop()
            await self.hub.stop()
            await self.service.stop()
        finally:
            await self.db.close()

    async def readiness(self) -> tuple[bool, str]:
        """Ready when the projection is running, NATS is connected and the database answers:
        the database asked now, the rest as the runtime checks it (``_checked_parts``)."""
        self._database_answered = await self.db.ping()
        return self.service.ready_check()

    def _checked_parts(self) -> tuple[bool, str]:
        """What ``readiness`` checks beyond the runtime's own (NATS, stalled consumers),
        as last found."""
        if not self.hub.started:
            return False, "starting"
        if not self._database_answered:
            return False, "database unreachable"
        return True, "ok"

    async def read_model_status(self) -> dict[str, Any]:
        """How far the read model has folded (as the watch last found it) and how many
        events it could not store: shown in ``/readyz``, never a reason to be unready
        (the queries still answer, and the failures are recorded)."""
        status: dict[str, Any] = {"projection_failures": await self.read_model.failure_count()}
        refold = self.refold.status()
        if refold is not None:
            status["refold"] = refold
            refolding = self.refold.detail()
            if refolding is not None:
                status["refold_detail"] = refolding
        state = self.watch.state
        if state is not None:
            status.update(
                position=state.position,
                stream_last_seq=state.stream_last_seq,
                lag_events=state.lag,
                caught_up=state.caught_up,
                # The watch looks every few seconds: right after a burst, "caught up" is
                # as of this many seconds ago.
                checked_seconds_ago=round(max(time.monotonic() - state.checked_at, 0.0), 3),
            )
        return status


def _read_model_detail(detail: str, status: dict[str, Any]) -> str:
    failures = status["projection_failures"]
    parts = [detail]
    if "caught_up" in status:
        lag = status["lag_events"]
        as_of = f" as of {status['checked_seconds_ago']:.1f}s ago"
        parts.append(
            ("read model caught up" if lag == 0 else f"read model {lag} events behind") + as_of
        )
    if "refold_detail" in status:
        parts.append(status.pop("refold_detail"))
    parts.append(f"{failures} projection failure{'' if failures == 1 else 's'}")
    return "; ".join(parts)


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Aether gateway",
        version=VERSION,
        description=(
            "Submit missions, answer and approve plans, steer running missions, and follow "
            "their events. Every route needs `Authorization: Bearer <token>`: an API token "
            "(`aet_…`), the bootstrap admin token, or an OIDC access token. A query "
            "parameter or path holding a control character or a lone surrogate, and a "
            "body string holding NUL or an unpaired surrogate, are refused with 400 on "
            "every route. Every 503 and 429 carries `Retry-After`."
        ),
        path="/schema",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description=(
                        "An API token (aet_…), AETHER_ADMIN_TOKEN, or an OIDC JWT"
                        " (or an opaque OIDC access token, with introspection on)"
                    ),
                )
            }
        ),
        security=[{"bearer": []}],
    )


class GatewayApp:
    """The ASGI app of one gateway: the routes (``shared_routes``) with this gateway's
    context on every connection's scope, and its start and stop as the lifespan.

    The routes hold no gateway of their own, so a process builds them once however many
    gateways it serves (Litestar parses every handler's signature for each app it
    builds: about 0.16 s of CPU, which the tests paid for each gateway they started)."""

    def __init__(self, gateway: Gateway, routes: Litestar) -> None:
        self.gateway = gateway
        self.routes = routes

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(cast("LifeSpanReceive", receive), cast("LifeSpanSend", send))
            return
        scope[SCOPE_KEY] = self.gateway.context  # type: ignore[literal-required]
        scope[_GATEWAY_KEY] = self.gateway  # type: ignore[literal-required]
        await self.routes(scope, cast("Receive", receive), cast("Send", send))

    async def _lifespan(self, receive: LifeSpanReceive, send: LifeSpanSend) -> None:
        """The ASGI lifespan protocol around ``Gateway.start`` and ``Gateway.stop``: a
        failure is sent to the server with its traceback (which uvicorn logs) and
        raised, as Litestar's own lifespan does."""
        await receive()  # lifespan.startup
        try:
            await self.gateway.start()
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self.gateway.stop()
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def create_app(gateway: Gateway) -> GatewayApp:
    """The ASGI app serving ``gateway`` (``bootstrap`` builds it)."""
    return GatewayApp(gateway, shared_routes())


@functools.cache
def shared_routes() -> Litestar:
    """Every route of the gateway, built once per process (see ``GatewayApp``)."""
    return create_routes()


def create_routes() -> Litestar:
    """The gateway's routes, finding the gateway a connection came to on its scope."""
    open_route = {"exclude_from_auth": True}

    @get("/healthz", include_in_schema=False, sync_to_thread=False, opt=open_route)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", include_in_schema=False, opt=open_route)
    async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        gateway = request.scope[_GATEWAY_KEY]  # type: ignore[literal-required]
        ok, detail = await gateway.readiness()
        body: dict[str, Any] = {
            "status": "ready" if ok else "not-ready",
            "detail": detail,
            # Lets a supervisor tell its own gateway from another answering on the port.
            "pid": os.getpid(),
        }
        if ok:
            read_model = await gateway.read_model_status()
            body["detail"] = _read_model_detail(detail, read_model)
            body["read_model"] = read_model
        if ok:
            return Response(body)
        headers = {"Retry-After": str(READY_RETRY_SECONDS)}
        return Response(body, status_code=503, headers=headers)

    @get("/metrics", include_in_schema=False, opt=open_route)
    async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        gateway = request.scope[_GATEWAY_KEY]  # type: ignore[literal-required]
        # Asks the database, so that aether_service_ready reads what /readyz would.
        await gateway.readiness()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Litestar(
        route_handlers=[
            api.router(),
            board_router(),
            *WEB_ROUTES,
            healthz,
            readyz,
            metrics,
        ],
        # Outermost first: metrics see every answer, input no route can take is refused
        # before anything looks at it, auth runs before idempotency (keys are per caller).
        middleware=[
            HttpMetrics(),
            api.InputGuard(),
            AuthMiddleware(),
            IdempotencyMiddleware(),
        ],
        # Every read a caller with a token makes counts against its read limit.
        guards=[READ_RATE],
        # Logging is the runtime's (JSON lines); Litestar's own config would replace it.
        logging_config=None,
        exception_handlers={
            ValidationException: api.on_validation_error,
            HTTPException: api.on_http_error,
            Exception: api.on_unexpected_error,
        },
        openapi_config=openapi_config(),
        plugins=[StrictStructSchema()],
    )
    routes_at_zero(app)
    # Built now, once per process, and completed with what the input guard refuses.
    document_refusals(app.openapi_schema)
    return app
