"""A planner service in-process against real NATS, and either a scripted Messages API
server (``planner``: the real model adapter) or the scripted model fake (``fake_planner``);
either reads repositories through the git broker's own read API (``broker_read``)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether.infra import free_port
from aether_events import (
    Event,
    EventPublisher,
    MissionRequested,
    RepoFile,
    RepositoryPrepared,
    derived_id,
    mission_history,
)
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.testing import read_api_served
from aether_llm import ApiError, LLMSettings, MessagesServer, Reply, tool_use_block
from aether_planner.app import wire
from aether_planner.bootstrap import bootstrap
from aether_planner.config import PlannerSettings
from aether_planner.ports import PlanningModel
from aether_planner.testing import ScriptedPlannerModel
from aether_runtime import RuntimeSettings, Service
from tests.eventlog import EventLog

Responder = Callable[[dict[str, Any]], Reply | ApiError]
BROKER_TOKEN = "planner-tests-read-token-0123456789"


@dataclass
class Script:
    """Replies in order; every request is kept for assertions."""

    replies: list[Reply | ApiError | Responder] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: dict[str, Any]) -> Reply | ApiError:
        self.requests.append(request)
        if not self.replies:
            return ApiError(500, "api_error", "the script has no more replies")
        reply = self.replies.pop(0)
        return reply(request) if callable(reply) else reply


def plan_reply(tasks: list[dict[str, Any]], rationale: str = "because", **usage: int) -> Reply:
    tokens = {"input_tokens": 1000, "output_tokens": 200, **usage}
    return Reply(
        [tool_use_block("submit_plan", {"tasks": tasks, "rationale": rationale})],
        "tool_use",
        **tokens,
    )


def good_tasks() -> list[dict[str, Any]]:
    return [
        {
            "id": "t1",
            "title": "Parser",
            "description": "parse",
            "files": ["src/parse.py"],
            "depends_on": [],
            "tier": "standard",
        },
        {
            "id": "t2",
            "title": "CLI",
            "description": "wire",
            "files": ["src/cli.py"],
            "depends_on": ["t1"],
            "tier": "small",
        },
    ]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "README.md").write_text("# Tool\n\nConverts CSV to JSON.\n")
    (path / "pyproject.toml").write_text('[project]\nname = "tool"\n')
    (path / "src").mkdir()
    (path / "src" / "export.py").write_text("def export():\n    return 1\n")
    run = lambda *a: subprocess.run(["git", *a], cwd=path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return path


@pytest.fixture
def script() -> Iterator[tuple[Script, MessagesServer]]:
    s = Script()
    server = MessagesServer(s).start()
    yield s, server
    server.stop()


@dataclass
class Planner:
    service: Service
    nc: NatsClient
    mission_id: str
    repo: Path

    @property
    def publisher(self) -> EventPublisher:
        return EventPublisher(self.nc.jetstream())

    def meta(self, step: str) -> dict[str, Any]:
        return {
            "event_id": derived_id(self.mission_id, "test", step),
            "mission_id": self.mission_id,
            "occurred_at": datetime.now(UTC),
            "correlation_id": derived_id(self.mission_id, "test", "requested"),
        }

    async def request(
        self,
        requirement: str = "Add a --json flag to export",
        *,
        extra_files: tuple[str, ...] = (),
        **kw: Any,
    ) -> None:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=self.repo, check=True, capture_output=True, text=True
        ).stdout.strip()
        await self.publisher.publish_all(
            [
                MissionRequested(
                    **self.meta("requested"),
                    repository=str(self.repo),
                    requirement=requirement,
                    **kw,
                ),
                RepositoryPrepared(
                    **self.meta("prepared"),
                    repository_path=str(self.repo),
                    base_branch="main",
                    base_sha=sha,
                    integration_branch=f"aether/{self.mission_id}",
                    files=[
                        RepoFile(path=p, size=10)
                        for p in ("README.md", "pyproject.toml", "src/export.py", *extra_files)
                    ],
                    file_count=3 + len(extra_files),
                ),
            ]
        )

    async def events(self) -> list[Event]:
        return await mission_history(self.nc.jetstream(), self.mission_id)

    async def wait_for(
        self, cls: type[Event], count: int = 1, timeout: float = 20.0
    ) -> list[Event]:
        """The mission's events once ``count`` of type ``cls`` are stored."""
        async with EventLog(self.nc, self.mission_id) as log:
            return await log.wait_for(lambda log: len(log.of(cls)) >= count, timeout)


@pytest.fixture(scope="session")
def broker_read(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the git broker's own read API (no consumer: the broker's reading
    alone), which the session's planners read repositories through."""
    remotes = Remotes(str(tmp_path_factory.mktemp("clones")))
    with read_api_served(BROKER_TOKEN, remotes, free_port()) as url:
        yield url


def planner_settings(nats_url: str, llm: LLMSettings, broker: str, **kw: Any) -> PlannerSettings:
    """A planner's settings on ``nats_url``, reading through the read API at ``broker``
    (``kw``: any other setting, the token included)."""
    runtime = RuntimeSettings(nats_url=nats_url, port=free_port())
    given: dict[str, Any] = {"broker_token": BROKER_TOKEN, **kw}
    return PlannerSettings(runtime=runtime, llm=llm, broker_url=broker, **given)


def start_planner(nats_url: str, base_url: str, broker: str, max_retries: int = 0) -> Service:
    llm = LLMSettings(api_key="test-key", base_url=base_url, max_retries=max_retries)
    return bootstrap(planner_settings(nats_url, llm, broker)).service


@pytest.fixture
async def planner(
    nats_url: str,
    nc: NatsClient,
    script: tuple[Script, MessagesServer],
    repo: Path,
    broker_read: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Planner]:
    retries = getattr(request, "param", 0)
    service = start_planner(nats_url, script[1].url, broker_read, max_retries=retries)
    try:  # started inside: a service that fails half-way through its start is stopped too
        await service.start()
        yield Planner(service, nc, f"m-{abs(hash(request.node.nodeid)) % 10**12:012d}", repo)
    finally:
        await service.stop()


def start_planner_on(nats_url: str, model: PlanningModel, broker: str, **kw: Any) -> Service:
    """A planner whose model calls go to ``model`` (the scripted fake), not over HTTP."""
    settings = planner_settings(nats_url, LLMSettings(api_key="test-key"), broker, **kw)
    return wire(settings, model).service


@pytest.fixture
def fake() -> ScriptedPlannerModel:
    return ScriptedPlannerModel()


@pytest.fixture
async def fake_planner(
    nats_url: str,
    nc: NatsClient,
    fake: ScriptedPlannerModel,
    repo: Path,
    broker_read: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Planner]:
    service = start_planner_on(nats_url, fake, broker_read)
    try:
        await service.start()
        yield Planner(service, nc, f"m-{abs(hash(request.node.nodeid)) % 10**12:012d}", repo)
    finally:
        await service.stop()
