"""Fetch and push: a runner that does not see the git broker's worktrees directory.

A real git broker serves its smart HTTP on real NATS (as in the broker's own tests); the
runner is handed its WorkspaceReady with a worktree path that does not exist here, clones
the task branch over HTTP, works with the scripted model, pushes its commit, and the
broker merges that commit.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.registry import runtimes
from aether_events import (
    AgentCompleted,
    AgentFailed,
    BranchMerged,
    EventPublisher,
    MissionCompleted,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    ensure_streams,
    new_event_id,
    new_mission_id,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.app import GitBroker
from aether_llm import make_client
from aether_runtime import RuntimeSettings

TOKEN = "remote-s3cret"

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


def meta(mission_id: str) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": f"corr-{mission_id}",
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# demo\n")
    (path / "app").mkdir()
    (path / "app" / "main.py").write_text("print('hello')\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial commit")
    return path


@pytest.fixture
async def broker(nc: NatsClient, nats_url: str, tmp_path: Path) -> AsyncIterator[GitBroker]:
    """The git broker with its smart HTTP server on a free port."""
    await ensure_streams(nc.jetstream())
    worktrees = tmp_path / "broker-worktrees"
    worktrees.mkdir()
    served = bootstrap(
        GitBrokerSettings(
            runtime=RuntimeSettings(nats_url=nats_url, port=0),
            worktrees_dir=worktrees.resolve(),
            data_dir=tmp_path / "broker-data",
            ack_wait_seconds=2.0,
            git_http_port=0,
            git_token=TOKEN,
        )
    )
    await served.service.start()
    try:
        yield served
    finally:
        await served.service.stop()


def git_url(broker: GitBroker) -> str:
    assert broker.http is not None
    return f"http://127.0.0.1:{broker.http.port}"


async def remote_workspace(
    nc: NatsClient, events: Any, mission_id: str, repo: Path, tmp_path: Path
) -> WorkspaceReady:
    """The broker's WorkspaceReady for task t1, as a runner elsewhere receives it: its
    worktree path does not exist on this machine."""
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish(
        MissionRequested(**meta(mission_id), repository=str(repo), requirement="x")
    )
    await events.first(RepositoryPrepared)
    await publisher.publish(
        TaskReady(
            **meta(mission_id),
            task=PlannedTask(id="t1", title="Add a feature", files=["feature.py"]),
            attempt=1,
            model="claude-sonnet-5-5",
            requirement="add a feature",
        )
    )
    ready = await events.first(WorkspaceReady)
    assert Path(ready.worktree_path).is_dir()  # on the broker's machine
    elsewhere = tmp_path / "not-on-this-machine" / "t1-a1"
    return msgspec.structs.replace(ready, worktree_path=str(elsewhere))


def emit(nc: NatsClient) -> Any:
    """Where the attempt's own events go: straight to the stream."""
    return EventPublisher(nc.jetstream()).publish


def attempts(nc: NatsClient, model: Any, settings: AgentSettings) -> Attempts:
    return Attempts(
        runtimes=runtimes(make_client(model.llm())),
        settings=settings,
        runner_id="runner-elsewhere",
        clock=lambda: datetime.now(UTC),
    )


async def test_a_runner_elsewhere_clones_works_pushes_and_the_broker_merges_it(
    broker: GitBroker,
    nc: NatsClient,
    repo: Path,
    tmp_path: Path,
    model: Callable[..., Any],
    events: Any,
    mission_id: str,
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    ready = await remote_workspace(nc, events, mission_id, repo, tmp_path)
    scripted = model(
        {
            "t1": [
                reply(tool("read_file", path="app/main.py")),
                reply(tool("write_file", path="feature.py", content="FEATURE = True\n")),
                finish("added the feature"),
            ]
        }
    )
    clones = tmp_path / "runner-clones"
    settings = AgentSettings(progress_seconds=0.0, git_url=git_url(broker), work_dir=str(clones))
    assert ready.push_token  # the attempt's own token; the runner holds none

    result = await attempts(nc, scripted, settings).work(ready, emit(nc))

    assert isinstance(result, AgentCompleted), result
    sha = result.commit_sha
    assert result.branch == ready.branch and result.files_changed == ["feature.py"]
    # The push landed in the broker's repository: the task branch is at the commit, a
    # fast-forward of the base, and holds the agent's file.
    assert git(repo, "rev-parse", ready.branch) == sha
    assert git(repo, "rev-parse", f"{sha}^") == ready.base_sha
    assert git(repo, "show", f"{sha}:feature.py") == "FEATURE = True"
    assert "Aether-Task: t1" in git(repo, "log", "-1", "--format=%B", sha)
    # The model saw the broker's files, read from the clone.
    assert "print('hello')" in str(scripted.script.requests[1]["messages"][-1]["content"])
    assert not (clones / mission_id / "t1-a1").exists()  # pushed: the clone is not needed
    assert not Path(ready.worktree_path).exists()

    await EventPublisher(nc.jetstream()).publish(result)
    merged = await events.first(BranchMerged)
    assert merged.merge_sha == sha  # a fast-forward of the integration branch
    assert git(repo, "rev-parse", f"aether/{mission_id}") == sha


async def test_a_restarted_runner_reports_the_commit_it_already_pushed(
    broker: GitBroker,
    nc: NatsClient,
    repo: Path,
    tmp_path: Path,
    model: Callable[..., Any],
    events: Any,
    mission_id: str,
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    ready = await remote_workspace(nc, events, mission_id, repo, tmp_path)
    scripted = model(
        {
            "t1": [
                reply(tool("write_file", path="feature.py", content="FEATURE = 1\n")),
                finish("added"),
            ]
        }
    )
    settings = AgentSettings(
        progress_seconds=0.0,
        git_url=git_url(broker),
        work_dir=str(tmp_path / "clones"),
    )
    first = await attempts(nc, scripted, settings).work(ready, emit(nc))
    assert isinstance(first, AgentCompleted)
    calls = len(scripted.script.calls)

    # The report was lost with the runner; the redelivery finds the pushed commit.
    again = await attempts(nc, scripted, settings).work(ready, emit(nc))

    assert isinstance(again, AgentCompleted)
    assert again.commit_sha == first.commit_sha and again.files_changed == ["feature.py"]
    assert len(scripted.script.calls) == calls  # no model call


@pytest.mark.parametrize("token", ["wrong-token", ""])
async def test_a_wrong_token_fails_the_attempt_with_the_reason(
    broker: GitBroker,
    nc: NatsClient,
    repo: Path,
    tmp_path: Path,
    model: Callable[..., Any],
    events: Any,
    mission_id: str,
    finish: Any,
    token: str,
) -> None:
    ready = await remote_workspace(nc, events, mission_id, repo, tmp_path)
    ready = msgspec.structs.replace(ready, push_token=token)
    scripted = model({"t1": [finish("nothing")]})
    settings = AgentSettings(git_url=git_url(broker), work_dir=str(tmp_path / "clones"))

    result = await attempts(nc, scripted, settings).work(ready, emit(nc))

    assert isinstance(result, AgentFailed), result
    assert result.retryable is False
    assert "the git broker refused the token" in result.reason
    assert f"{git_url(broker)}/{mission_id}" in result.reason
    assert TOKEN not in result.reason and (not token or token not in result.reason)
    assert scripted.script.calls == []  # no model call without the branch
    assert git(repo, "rev-parse", ready.branch) == ready.base_sha


def test_fetch_and_push_settings_from_the_environment() -> None:
    settings = AgentSettings.from_env(
        {"AETHER_AGENT_GIT_URL": "http://broker:8200", "AETHER_AGENT_GIT_TOKEN": "t"}
    )
    assert settings.git_url == "http://broker:8200" and settings.git_token == "t"
    assert settings.fetches(worktree_exists=False)
    assert not settings.fetches(worktree_exists=True)
    always = AgentSettings.from_env(
        {
            "AETHER_AGENT_GIT_URL": "http://broker:8200",
            "AETHER_AGENT_GIT_TOKEN": "t",
            "AETHER_AGENT_GIT_FETCH": "always",
        }
    )
    assert always.fetches(worktree_exists=True)
    assert not AgentSettings.from_env({}).fetches(worktree_exists=False)
    # No token of its own: each attempt brings one in its WorkspaceReady.
    assert AgentSettings.from_env({"AETHER_AGENT_GIT_URL": "http://broker:8200"}).git_token == ""
    with pytest.raises(ValueError, match="auto or always"):
        AgentSettings.from_env({"AETHER_AGENT_GIT_FETCH": "sometimes"})


async def test_an_ended_missions_clones_go_once_its_agents_here_have_stopped(
    tmp_path: Path,
) -> None:
    """A runner that fetches and pushes keeps a failed attempt's clone for its
    redelivery; once the mission ended, the clones of its attempts go: after the agents
    of the mission working here stopped, and never one another runner holds the lock of.
    A runner starting up removes the clones of missions that ended while it was down."""
    from aether_agent_runner.adapters.journal import AttemptLock
    from aether_agent_runner.domain import State, evolve
    from aether_agent_runner.handlers import Handlers
    from aether_runtime import Projection

    clones = tmp_path / "clones"
    ended, other = new_mission_id(), new_mission_id()
    for mission, name in [(ended, "t1-a1"), (ended, "t2-a1"), (ended, "t3-a2"), (other, "t1-a1")]:
        (clones / mission / name / ".git").mkdir(parents=True)
    held = AttemptLock(clones / ended, "t3-a2.lock")  # another runner works in it
    assert held.acquire()
    settings = AgentSettings(git_url="http://broker.invalid:1", work_dir=str(clones))
    work = Attempts(
        runtimes=lambda name: None,  # type: ignore[arg-type,return-value]
        settings=settings,
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )
    handlers = Handlers(Projection(State(), evolve), lambda: None, work)  # type: ignore[arg-type,return-value]
    handlers.running.register((ended, "t1", 1))
    completed = MissionCompleted(
        event_id=new_event_id(),
        mission_id=ended,
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        final_sha="f" * 40,
        integration_branch=f"aether/{ended}",
        tasks_merged=3,
    )
    await handlers.on_control(completed)
    await asyncio.sleep(0)
    assert (clones / ended / "t1-a1").exists()  # its agent is still stopping
    handlers.running.unregister((ended, "t1", 1))
    await handlers.forgotten()
    assert sorted(p.name for p in (clones / ended).iterdir()) == ["t3-a2", "t3-a2.lock"]
    assert (clones / other / "t1-a1").exists()
    held.release()

    assert work.sweep(lambda mission: mission == ended) == [f"{ended}/t3-a2"]
    assert not (clones / ended).exists() and (clones / other / "t1-a1").exists()
