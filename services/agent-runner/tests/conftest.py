"""Fixtures for the agent runner: real repositories with linked worktrees, a scripted model
served over the Messages API, an in-process runner on real NATS, and an event log."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from nats.aio.client import Client as NatsClient

from aether_agent_runner.adapters.git import GitDir
from aether_events import (
    Event,
    EventPublisher,
    PlannedTask,
    WorkspaceReady,
    ensure_streams,
    new_event_id,
)
from aether_llm import ApiError, LLMSettings, MessagesServer, Reply, text_block, tool_use_block
from aether_runtime import RuntimeSettings, Service
from tests.eventlog import EventLog as SharedEventLog

if TYPE_CHECKING:
    from aether_agent_runner.handlers import Handlers

E = TypeVar("E", bound=Event)
TIMEOUT = 30.0

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(cwd), *args], env=GIT_ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, f"git {args} failed: {result.stderr}"
    return result.stdout.strip()


@dataclass
class TaskRepo:
    """A repository and one task's linked worktree on its own branch."""

    root: Path
    repo: Path
    worktree: Path
    branch: str
    base_sha: str

    @property
    def git_dir(self) -> GitDir:
        """The worktree's git directory, as the broker would name it in WorkspaceReady."""
        return GitDir.discover(self.worktree, self.branch)

    def outside_snapshot(self) -> dict[str, bytes]:
        """Every file under ``root`` that is not inside the worktree, with its bytes (the
        repository's .git included)."""
        files: dict[str, bytes] = {}
        for directory, _, names in os.walk(self.root):
            here = Path(directory)
            if here == self.worktree or self.worktree in here.parents:
                continue
            for name in names:
                path = here / name
                if path.is_symlink():
                    files[str(path)] = b"-> " + os.readlink(path).encode()
                elif path.is_file():
                    files[str(path)] = path.read_bytes()
        return files


# The task repositories' tests as an agent runs them, with no plugin autoloaded: a
# pytest start otherwise loads every plugin installed beside it (this environment's:
# about 3 s of CPU for one test), and the repositories' tests need none.
QUICK_PYTEST = "python -m pytest -q --disable-plugin-autoload"


def make_task_repo(root: Path, task_id: str = "t1", attempt: int = 1) -> TaskRepo:
    repo = root / "repo"
    if not repo.exists():
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        (repo / "README.md").write_text("# demo\n\nA small project.\n")
        (repo / "src").mkdir()
        (repo / "src" / "app.py").write_text(
            'def greet(name):\n    return "Hello, " + name\n\n\ndef shout(name):\n'
            "    return greet(name).upper()\n"
        )
        (repo / "tests").mkdir()
        (repo / "tests" / "test_app.py").write_text(
            "from src.app import greet\n\n\ndef test_greet():\n"
            '    assert greet("Ada") == "Hello, Ada"\n'
        )
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "initial commit")
    branch = f"aether-tasks/m/{task_id}/a{attempt}"
    git(repo, "branch", branch, "main")
    worktree = root / "worktrees" / f"{task_id}-a{attempt}"
    worktree.parent.mkdir(parents=True, exist_ok=True)
    git(repo, "worktree", "add", "-q", str(worktree), branch)
    return TaskRepo(root, repo, worktree.resolve(), branch, git(repo, "rev-parse", "main"))


@pytest.fixture
def task_repo(tmp_path: Path) -> TaskRepo:
    return make_task_repo(tmp_path)


@pytest.fixture(scope="session")
def make_repo() -> Callable[..., TaskRepo]:
    """``make_repo(root, task_id, attempt)``: another task worktree (same repository)."""
    return make_task_repo


def workspace_ready(
    repo: TaskRepo,
    mission_id: str,
    task_id: str = "t1",
    attempt: int = 1,
    *,
    model: str = "claude-sonnet-5-5",
    max_cost_usd: float | None = None,
    files: list[str] | None = None,
    title: str = "Make the greeting friendlier",
) -> WorkspaceReady:
    return WorkspaceReady(
        event_id=new_event_id(),
        mission_id=mission_id,
        occurred_at=datetime.now(UTC),
        correlation_id=f"corr-{mission_id}",
        causation_id=None,
        task=PlannedTask(
            id=task_id,
            title=title,
            description="Change greet to say 'Hello there' and keep the tests passing.",
            files=files if files is not None else ["src/app.py"],
            acceptance_criteria=["greet('Ada') returns 'Hello there, Ada'"],
        ),
        attempt=attempt,
        model=model,
        branch=repo.branch,
        worktree_path=str(repo.worktree),
        base_sha=repo.base_sha,
        requirement="Make the app friendlier.",
        max_cost_usd=max_cost_usd,
    )


@pytest.fixture(name="workspace_ready")
def _workspace_ready() -> Callable[..., WorkspaceReady]:
    """``workspace_ready(repo, mission_id, task_id, attempt, **fields)``."""
    return workspace_ready


# --- the scripted model -------------------------------------------------------------

_TASK = re.compile(r"<task>(.*?)</task>", re.DOTALL)
Turn = Callable[[dict[str, Any]], Reply | ApiError]


def tool(name: str, tool_id: str | None = None, **arguments: Any) -> dict[str, Any]:
    return tool_use_block(name, arguments, tool_id)


def reply(*blocks: dict[str, Any], input_tokens: int = 100, output_tokens: int = 20) -> Turn:
    return lambda request: Reply(list(blocks), "tool_use", input_tokens, output_tokens)


def finish(summary: str = "done") -> Turn:
    return reply(tool("finish", summary=summary))


def say(text: str) -> Turn:
    return lambda request: Reply([text_block(text)], "end_turn", 50, 10)


def results_of(request: dict[str, Any]) -> list[str]:
    """The tool results the agent sent back in its latest message."""
    last = request["messages"][-1]
    if last["role"] != "user" or isinstance(last["content"], str):
        return []
    out = []
    for block in last["content"]:
        if block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            out.append(str(content))
    return out


def task_of(request: dict[str, Any]) -> str:
    first = request["messages"][0]["content"]
    text = first if isinstance(first, str) else "".join(b.get("text", "") for b in first)
    found = _TASK.search(text)
    assert found, "agent request without a <task> block"
    return str(json.loads(found.group(1))["id"])


@pytest.fixture(name="tool")
def _tool() -> Callable[..., dict[str, Any]]:
    """``tool(name, **arguments)``: a tool_use block."""
    return tool


@pytest.fixture(name="reply")
def _reply() -> Callable[..., Turn]:
    """``reply(*blocks)``: a turn answering with those blocks."""
    return reply


@pytest.fixture(name="finish")
def _finish() -> Callable[..., Turn]:
    return finish


@pytest.fixture(name="say")
def _say() -> Callable[..., Turn]:
    return say


@pytest.fixture(name="results_of")
def _results_of() -> Callable[[dict[str, Any]], list[str]]:
    return results_of


@dataclass
class Script:
    """A Messages API responder: per task, one function per turn (by the number of
    assistant messages in the request). ``gates[(task, turn)]`` holds that call until the
    test sets it; ``arrived`` fires (in the test's loop) whenever a call comes in."""

    turns: dict[str, list[Turn]]
    calls: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    gates: dict[tuple[str, int], threading.Event] = field(default_factory=dict)
    on_call: Callable[[str, int], None] | None = None

    def __call__(self, request: dict[str, Any]) -> Reply | ApiError:
        task_id = task_of(request)
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        self.calls.append(f"{task_id}:{turn}")
        self.requests.append(request)
        if self.on_call is not None:
            self.on_call(task_id, turn)
        gate = self.gates.get((task_id, turn))
        if gate is not None:
            gate.wait(120)
        script = self.turns[task_id]
        if turn >= len(script):
            return Reply([text_block("I have nothing more to do.")], "end_turn", 10, 5)
        return script[turn](request)


@dataclass
class Model:
    script: Script
    server: MessagesServer

    @property
    def url(self) -> str:
        return self.server.url

    def llm(self) -> LLMSettings:
        return LLMSettings(api_key="test-key", base_url=self.url, max_retries=0)


@pytest.fixture
def model() -> Iterator[Callable[[dict[str, list[Turn]]], Model]]:
    servers: list[MessagesServer] = []

    def start(turns: dict[str, list[Turn]]) -> Model:
        script = Script(turns)
        server = MessagesServer(script).start()
        servers.append(server)
        return Model(script, server)

    yield start
    for server in servers:
        server.stop()


class Signal:
    """A thread-safe signal a server thread raises and a test awaits."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(self._event.wait(), timeout)


# --- events -------------------------------------------------------------------------


class EventLog(SharedEventLog):
    """One mission's events from both streams (a runner's progress and usage are
    telemetry), as they are stored; the streams are declared first."""

    def __init__(self, nc: NatsClient, mission_id: str) -> None:
        super().__init__(nc, mission_id, telemetry=True, declare=True)

    async def wait_for(
        self, predicate: Callable[[EventLog], bool], timeout: float = TIMEOUT
    ) -> list[Event]:
        return await super().wait_for(predicate, timeout)

    async def first(self, cls: type[E], timeout: float = TIMEOUT) -> E:
        return await super().first(cls, timeout)


@pytest.fixture
async def publish(nc: NatsClient) -> Callable[[Event], Any]:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    return publisher.publish


_missions = iter(range(1, 1_000_000))


@pytest.fixture
def mission_id() -> str:
    return f"m-test{next(_missions):04d}{new_event_id()[:6]}"


@pytest.fixture
async def watch(nc: NatsClient) -> AsyncIterator[Callable[[str], Any]]:
    """``await watch(mission_id)``: an EventLog of another mission."""
    logs: list[EventLog] = []

    async def start(mission: str) -> EventLog:
        log = await EventLog(nc, mission).start()
        logs.append(log)
        return log

    yield start
    for log in logs:
        await log.stop()


@pytest.fixture
async def events(watch: Callable[[str], Any], mission_id: str) -> EventLog:
    log: EventLog = await watch(mission_id)
    return log


# --- an in-process runner -------------------------------------------------------------


@dataclass
class Runner:
    service: Service
    handlers: Handlers


@pytest.fixture
async def start_runner(nats_url: str, nc: NatsClient) -> AsyncIterator[Callable[..., Any]]:
    """``await start_runner(model, **agent_settings)``: a runner service in this process
    (``runner_entry_seconds``: the registry's entry age, how long an attempt on a runtime
    no runner has waits for one)."""
    from aether_agent_runner.bootstrap import bootstrap
    from aether_agent_runner.config import AgentSettings, RunnerSettings

    started: list[Service] = []

    async def start(model: Model, runner_entry_seconds: float = 30.0, **overrides: Any) -> Runner:
        defaults: dict[str, Any] = {
            "heartbeat_seconds": 0.5,
            "progress_seconds": 0.0,
            "ack_wait_seconds": 10.0,
        }
        settings = AgentSettings(**{**defaults, **overrides})
        runtime = RuntimeSettings(
            nats_url=nats_url, port=0, runner_entry_seconds=runner_entry_seconds
        )
        runner = bootstrap(RunnerSettings(runtime=runtime, llm=model.llm(), agent=settings))
        started.append(runner.service)  # before starting: one that fails half-way is stopped too
        await runner.service.start()
        return Runner(runner.service, runner.handlers)

    yield start
    for service in started:
        await service.stop()


def elapsed_since(began: float) -> float:
    return time.monotonic() - began


@pytest.fixture
def python_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the Python running the tests first on PATH, so "python" in a command is it."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
