"""Building the gateway: the Litestar app around the runtime service and the read model.

The app's lifespan opens the database and migrates it, then starts the runtime service,
which catches the read model up from its stored position and starts the durable
``gateway`` consumer that folds every later event. Stopping ends the open event streams
first, then the service, then the pool.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Response, get
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aether_events import ALL_MISSION_EVENTS
from aether_gateway import api
from aether_gateway.adapters.bus import Bus
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.config import GatewaySettings
from aether_gateway.handlers import Projector
from aether_gateway.metrics import HttpMetrics
from aether_runtime import ConsumerSpec, Service

log = logging.getLogger("aether.gateway")

CONSUMER = "gateway"


class Gateway:
    """The wired parts of one gateway process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.service = Service("gateway", settings.runtime)
        self.db = Database(settings.database_url, max_size=settings.db_pool_max_size)
        self.read_model = ReadModel(self.db, consumer=CONSUMER)
        self.projector = Projector(self.read_model)
        self.service.rebuild_with(self.projector.rebuild)
        self.service.consume(
            ConsumerSpec(
                durable=CONSUMER,
                subject=ALL_MISSION_EVENTS,
                handler=self.projector.on_event,
                max_workers=1,
            )
        )
        self.context = api.GatewayContext(
            settings=settings, read_model=self.read_model, bus=Bus(self.service)
        )

    async def start(self) -> None:
        await self.db.open()
        await self.db.migrate()
        await self.service.start()

    async def stop(self) -> None:
        self.context.closing.set()
        try:
            await self.service.stop()
        finally:
            await self.db.close()

    async def readiness(self) -> tuple[bool, str]:
        """Ready when the projection is running, NATS is connected and the database answers."""
        if not self.service.ready:
            return False, "starting"
        nc = self.service.nc
        if nc is None or not nc.is_connected:
            return False, "nats disconnected"
        if not await self.db.ping():
            return False, "database unreachable"
        return True, "ok"

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()


def create_app(settings: GatewaySettings | None = None) -> Litestar:
    """The gateway's ASGI app, configured from ``settings`` (or the environment)."""
    gateway = Gateway(settings or GatewaySettings.from_env())

    @get("/healthz", include_in_schema=False, sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", include_in_schema=False)
    async def readyz() -> Response[dict[str, str]]:
        ok, detail = await gateway.readiness()
        body = {"status": "ready" if ok else "not-ready", "detail": detail}
        return Response(body, status_code=200 if ok else 503)

    @get("/metrics", include_in_schema=False, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Litestar(
        route_handlers=[api.router(gateway.context), healthz, readyz, metrics],
        lifespan=[gateway.lifespan],
        middleware=[HttpMetrics()],
        # Logging is the runtime's (JSON lines); Litestar's own config would replace it.
        logging_config=None,
        exception_handlers={
            ValidationException: api.on_validation_error,
            HTTPException: api.on_http_error,
            Exception: api.on_unexpected_error,
        },
        openapi_config=OpenAPIConfig(
            title="Aether gateway",
            version="0.1.0",
            description="Submit missions, approve plans and follow their events.",
            path="/schema",
        ),
    )
    app.state.gateway = gateway
    return app
