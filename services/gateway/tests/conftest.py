"""Fixtures for the gateway's tests.

``script`` builds one mission's events from the catalogue; ``gateway_db`` is a fresh
database on the session's PostgreSQL; ``gateway`` runs the whole app under uvicorn on a
free port against the session's NATS (its streams emptied by ``nc``) and that database,
asking the git broker's read API (its real code, served by ``broker_read_api``) for
diffs and default branches.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
import psycopg
import pytest
import uvicorn
from nats.aio.client import Client as NatsClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aether.infra import free_port
from aether_events import (
    AgentCompleted,
    BranchMerged,
    Event,
    MissionCompleted,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    Usage,
    UsageRecorded,
    derived_id,
    mission_history,
    new_mission_id,
)
from aether_gateway.adapters.db import Database
from aether_gateway.app import Gateway
from aether_gateway.bootstrap import bootstrap_app
from aether_gateway.config import GatewaySettings
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.testing import read_api_served
from aether_runtime import RuntimeSettings, tls

T = TypeVar("T")

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ADMIN_TOKEN = "test-bootstrap-admin-token"
BROKER_READ_TOKEN = "test-broker-read-token-0123456789"


class Script:
    """Builds one mission's events with consistent ids and advancing times."""

    def __init__(self, mission_id: str, *, start: datetime = T0) -> None:
        self.mission_id = mission_id
        self.correlation_id = derived_id("request", mission_id)
        self._now = start
        self._n = 0

    def meta(self) -> dict[str, object]:
        self._n += 1
        self._now += timedelta(seconds=1)
        return {
            "event_id": derived_id(self.mission_id, "test-event", self._n),
            "mission_id": self.mission_id,
            "occurred_at": self._now,
            "correlation_id": self.correlation_id,
        }

    def requested(self, **fields: object) -> MissionRequested:
        data: dict[str, object] = {
            "repository": "/repos/demo",
            "requirement": "Add a greeting module",
            **fields,
        }
        return MissionRequested(**self.meta(), **data)  # type: ignore[arg-type]

    def prepared(self, delivery_remote: str = "") -> RepositoryPrepared:
        return RepositoryPrepared(
            **self.meta(),  # type: ignore[arg-type]
            repository_path="/repos/demo",
            base_branch="main",
            base_sha="a" * 40,
            integration_branch=f"aether/{self.mission_id}",
            delivery_remote=delivery_remote,
        )

    def plan(self, version: int = 1, task_ids: tuple[str, ...] = ("t1", "t2")) -> PlanProduced:
        tasks = [
            PlannedTask(
                id=task_id,
                title=f"Task {task_id}",
                files=[f"src/{task_id}.py"],
                depends_on=[task_ids[0]] if i else [],
            )
            for i, task_id in enumerate(task_ids)
        ]
        return PlanProduced(
            **self.meta(),  # type: ignore[arg-type]
            version=version,
            tasks=tasks,
            rationale="two steps",
            model="offline-planner",
            offline=True,
        )

    def approved(self, version: int = 1) -> PlanApproved:
        return PlanApproved(**self.meta(), version=version)  # type: ignore[arg-type]

    def task_ready(self, task_id: str, attempt: int = 1, wave: int = 0) -> TaskReady:
        return TaskReady(
            **self.meta(),  # type: ignore[arg-type]
            task=PlannedTask(id=task_id, title=f"Task {task_id}", files=[f"src/{task_id}.py"]),
            attempt=attempt,
            model="claude-test",
            wave=wave,
        )

    def agent_completed(self, task_id: str, attempt: int = 1) -> AgentCompleted:
        return AgentCompleted(
            **self.meta(),  # type: ignore[arg-type]
            task_id=task_id,
            attempt=attempt,
            commit_sha="c" * 40,
            branch=f"aether/{self.mission_id}/{task_id}",
        )

    def merged(self, task_id: str, attempt: int = 1) -> BranchMerged:
        return BranchMerged(
            **self.meta(),  # type: ignore[arg-type]
            task_id=task_id,
            attempt=attempt,
            merge_sha="d" * 40,
            integration_branch=f"aether/{self.mission_id}",
        )

    def usage(self, cost_usd: float | None, tokens: int = 100) -> UsageRecorded:
        return UsageRecorded(
            **self.meta(),  # type: ignore[arg-type]
            service="agent-runner",
            model="claude-test",
            usage=Usage(input_tokens=tokens, output_tokens=tokens // 2, cost_usd=cost_usd),
            step="agent",
        )

    def completed(self) -> MissionCompleted:
        return MissionCompleted(
            **self.meta(),  # type: ignore[arg-type]
            final_sha="e" * 40,
            integration_branch=f"aether/{self.mission_id}",
            tasks_merged=1,
        )

    def happy_path(self) -> list[Event]:
        """Request to completion with a one-task plan."""
        return [
            self.requested(),
            self.prepared(),
            self.plan(task_ids=("t1",)),
            self.approved(),
            self.task_ready("t1"),
            self.agent_completed("t1"),
            self.merged("t1"),
            self.completed(),
        ]


@pytest.fixture
def script() -> Script:
    return Script(new_mission_id())


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 60.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def stored_events(nc: NatsClient, mission_id: str) -> list[Event]:
    """Every event the stream holds for the mission, in order."""
    return await mission_history(nc.jetstream(), mission_id)


def _database(database_url: str, name: str) -> str:
    params = conninfo_to_dict(database_url)
    params["dbname"] = name
    return make_conninfo(**params)


@pytest.fixture(scope="session")
async def migrated_template(database_url: str) -> AsyncIterator[str]:
    """A database with every migration applied, made once per session from an empty one
    (so the migrations themselves still run from nothing): each test's database is a
    copy of it, which is much quicker than migrating each afresh."""
    name = f"gateway_template_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    db = Database(_database(database_url, name), max_size=1)
    await db.open()
    try:
        await db.migrate()
    finally:
        await db.close()  # a template cannot be copied while anyone is connected to it
    try:
        yield name
    finally:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def gateway_db(database_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A database of its own for one test (a copy of the migrated template: the gateway
    finds every migration applied), dropped afterwards."""
    name = f"gateway_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    try:
        yield _database(database_url, name)
    finally:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Uvicorn(uvicorn.Server):
    """uvicorn's server told to stop by an event: its own loop looks for ``should_exit``
    every 0.1 s, which every gateway test waited out at its end."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop = asyncio.Event()

    async def main_loop(self) -> None:
        # A tick sets the default headers (Date, Server) and says whether to exit.
        while not await self.on_tick(0):
            await self.stop.wait()


class GatewayServer:
    """The gateway app under uvicorn, on a free port, startable and stoppable again."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.base_url = f"http://127.0.0.1:{settings.runtime.port}"
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self.gateway: Gateway | None = None

    async def start(self) -> None:
        app = bootstrap_app(self.settings)
        self.gateway = app.gateway
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.settings.runtime.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _Uvicorn(config)
        # Not serve(): that takes over the process's signal handlers.
        self._task = asyncio.create_task(self._server._serve())
        deadline = time.monotonic() + 30
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the gateway stopped while starting")
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        if self.gateway is not None:
            self.gateway.context.closing.set()
        self._server.should_exit = True
        self._server.stop.set()
        await asyncio.wait_for(self._task, 30)
        self._server = None
        self._task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def client(
        self,
        token: str | None = ADMIN_TOKEN,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        **kwargs: object,
    ) -> httpx.AsyncClient:
        """A client sending ``token`` (the bootstrap admin token unless told otherwise)."""
        sent = {"authorization": f"Bearer {token}"} if token else {}
        # The process's one TLS context: each test's client loaded the trust store afresh.
        kwargs.setdefault("verify", tls.shared())
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            headers={**sent, **(headers or {})},
            **kwargs,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class BrokerReadApi:
    """Where the broker's read API answers, and where it keeps remote clones."""

    url: str
    token: str
    remotes: Remotes


@pytest.fixture(scope="session")
def broker_read_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerReadApi]:
    """The git broker's read API on its own port, in a thread (the broker's code, not a
    stand-in: the gateway's diffs and default branches are answered by it)."""
    remotes = Remotes(str(tmp_path_factory.mktemp("broker-data")), timeout=10.0)
    with read_api_served(BROKER_READ_TOKEN, remotes, free_port()) as url:
        yield BrokerReadApi(url, BROKER_READ_TOKEN, remotes)


def gateway_settings(nats_url: str, database_url: str, **overrides: object) -> GatewaySettings:
    """Test settings: a free port, quick keep-alives, the bootstrap admin token."""
    port = free_port()
    fields: dict[str, object] = {
        "runtime": RuntimeSettings(nats_url=nats_url, host="127.0.0.1", port=port),
        "database_url": database_url,
        "public_url": f"http://gateway.test:{port}/",
        "sse_keepalive_seconds": 0.5,
        "db_pool_max_size": 4,
        "admin_token": ADMIN_TOKEN,
        **overrides,
    }
    return GatewaySettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def make_gateway(
    nc: NatsClient, nats_url: str, gateway_db: str, broker_read_api: BrokerReadApi
) -> AsyncIterator[Callable[..., Awaitable[GatewayServer]]]:
    """Start a gateway with some settings changed (all share the test's database)."""
    servers: list[GatewayServer] = []
    broker = {"broker_url": broker_read_api.url, "broker_token": broker_read_api.token}

    async def make(**overrides: object) -> GatewayServer:
        server = GatewayServer(gateway_settings(nats_url, gateway_db, **{**broker, **overrides}))
        servers.append(server)  # before starting: one slow to start is still stopped
        await server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
async def gateway_server(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
) -> GatewayServer:
    return await make_gateway()


@pytest.fixture
async def http(gateway_server: GatewayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_server.client() as client:
        yield client
