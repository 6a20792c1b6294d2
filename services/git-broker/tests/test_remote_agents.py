"""Remote repositories and remote agents, on a running broker with real NATS.

An agent runner on another machine fetches its task branch over smart HTTP and pushes its
commit back; the git CLI plays that runner here. A mission can also name a repository by
URL, which the broker clones (from a plain dulwich server in these tests).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain
from nats.aio.client import Client as NatsClient

from aether_events import (
    AgentCompleted,
    BranchMerged,
    BranchPushed,
    EventPublisher,
    MissionCompleted,
    MissionRequested,
    RepositoryPrepared,
    WorkspaceReady,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.app import GitBroker
from aether_runtime import RuntimeSettings, tls

from .test_service import meta, start_service, stop_service, task_ready, watch

TOKEN = "s3cret-token"
Git = Callable[..., str]


def git_cli(cwd: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """The git CLI as a remote agent runner would run it; never prompts for a password."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Remote Agent",
        "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "Remote Agent",
        "GIT_COMMITTER_EMAIL": "agent@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
async def served(
    nc: NatsClient, nats_url: str, worktrees_dir: Path, tmp_path: Path
) -> AsyncIterator[GitBroker]:
    settings = GitBrokerSettings(
        runtime=RuntimeSettings(nats_url=nats_url, port=0),
        worktrees_dir=worktrees_dir,
        data_dir=tmp_path / "data",
        ack_wait_seconds=2.0,
        git_http_port=0,
        git_token=TOKEN,
    )
    broker = bootstrap(settings)
    await start_service(broker.service)
    try:
        yield broker
    finally:
        await stop_service(broker.service)


def url(broker: GitBroker, mission: str, credentials: str | None) -> str:
    assert broker.http is not None
    auth = f"{credentials}@" if credentials else ""
    return f"http://{auth}127.0.0.1:{broker.http.port}/{mission}"


async def test_a_remote_agent_fetches_its_branch_and_pushes_its_commit_with_the_token(
    served: GitBroker,
    nc: NatsClient,
    repo: Path,
    tmp_path: Path,
    git: Git,
) -> None:
    publisher = EventPublisher(nc.jetstream())
    mission = "m-remote"
    events = await watch(nc, mission)
    await publisher.publish(
        MissionRequested(**meta(mission), repository=str(repo), requirement="x")
    )
    prepared = await events.next(RepositoryPrepared)
    await publisher.publish(task_ready(mission, "t1"))
    workspace = await events.next(WorkspaceReady)
    assert workspace.push_token and TOKEN not in workspace.push_token
    remote = url(served, mission, f"agent:{workspace.push_token}")

    # Elsewhere: a clone of the task branch only, a commit, a push back.
    elsewhere = tmp_path / "elsewhere"
    cloned = git_cli(tmp_path, "clone", "-q", "--branch", workspace.branch, remote, str(elsewhere))
    assert cloned.returncode == 0, cloned.stderr
    assert git(elsewhere, "rev-parse", "HEAD") == workspace.base_sha
    # Only the mission's branches are visible: not main, not the user's others.
    remote_refs = git_cli(elsewhere, "ls-remote", "origin").stdout
    assert f"refs/heads/{workspace.branch}" in remote_refs
    assert f"refs/heads/{prepared.integration_branch}" in remote_refs
    assert "refs/heads/main" not in remote_refs
    (elsewhere / "remote.py").write_text("DONE_ELSEWHERE = True\n")
    git(elsewhere, "add", "remote.py")
    git(elsewhere, "commit", "-q", "-m", "work done on another machine")
    sha = git(elsewhere, "rev-parse", "HEAD")
    pushed = git_cli(elsewhere, "push", "-q", "origin", f"HEAD:refs/heads/{workspace.branch}")
    assert pushed.returncode == 0, pushed.stderr
    assert git(repo, "rev-parse", workspace.branch) == sha

    # What a remote agent may not do: move the integration branch, create or delete
    # branches, rewrite its own.
    for refspec in (
        f"HEAD:refs/heads/{prepared.integration_branch}",
        "HEAD:refs/heads/main",
        f"HEAD:refs/heads/aether-tasks/{mission}/new/a1",
        f":refs/heads/{workspace.branch}",
        f"+{workspace.base_sha}:refs/heads/{workspace.branch}",
    ):
        refused = git_cli(elsewhere, "push", "origin", refspec)
        assert refused.returncode != 0, refspec
    assert git(repo, "rev-parse", workspace.branch) == sha
    assert git(repo, "rev-parse", prepared.integration_branch) == prepared.base_sha

    await publisher.publish(
        AgentCompleted(
            **meta(mission), task_id="t1", attempt=1, commit_sha=sha, branch=workspace.branch
        )
    )
    merged = await events.next(BranchMerged)
    assert merged.merge_sha == sha
    await events.stop()


@pytest.mark.parametrize(
    "credentials",
    # The broker's secret itself is not a push token.
    [None, "agent:wrong-token", f"{TOKEN[:-1]}:", "agent:", f"agent:{TOKEN}"],
)
async def test_without_the_token_nothing_is_fetched_or_pushed(
    served: GitBroker,
    nc: NatsClient,
    repo: Path,
    tmp_path: Path,
    credentials: str | None,
) -> None:
    publisher = EventPublisher(nc.jetstream())
    mission = "m-locked"
    events = await watch(nc, mission)
    await publisher.publish(
        MissionRequested(**meta(mission), repository=str(repo), requirement="x")
    )
    await events.next(RepositoryPrepared)
    await publisher.publish(task_ready(mission, "t1"))
    await events.next(WorkspaceReady)
    attempt = git_cli(tmp_path, "clone", "-q", url(served, mission, credentials), "nope")
    assert attempt.returncode != 0
    assert (
        "Authentication failed" in attempt.stderr
        or "401" in attempt.stderr
        or ("could not read Username" in attempt.stderr)
    )
    assert not (tmp_path / "nope").exists()
    await events.stop()


async def test_a_finished_or_unknown_mission_is_not_served(
    served: GitBroker, nc: NatsClient, repo: Path, tmp_path: Path
) -> None:
    publisher = EventPublisher(nc.jetstream())
    mission = "m-over"
    events = await watch(nc, mission)
    await publisher.publish(
        MissionRequested(**meta(mission), repository=str(repo), requirement="x")
    )
    prepared = await events.next(RepositoryPrepared)
    await publisher.publish(task_ready(mission, "t1"))
    token = f"agent:{(await events.next(WorkspaceReady)).push_token}"
    assert git_cli(tmp_path, "ls-remote", url(served, mission, token)).returncode == 0
    await publisher.publish(
        MissionCompleted(
            **meta(mission),
            final_sha=prepared.base_sha,
            integration_branch=prepared.integration_branch,
            tasks_merged=0,
        )
    )
    # A later mission's answer shows the completion was handled (one event at a time).
    marker = await watch(nc, "m-marker")
    await publisher.publish(
        MissionRequested(**meta("m-marker"), repository=str(repo), requirement="x")
    )
    await marker.next(RepositoryPrepared)
    await publisher.publish(task_ready("m-marker", "t1"))
    marker_token = f"agent:{(await marker.next(WorkspaceReady)).push_token}"
    for name in (mission, "m-unknown", "..", "m-marker/../m-over"):
        attempt = git_cli(tmp_path, "ls-remote", url(served, name, token))
        assert attempt.returncode != 0, name
    assert git_cli(tmp_path, "ls-remote", url(served, "m-marker", marker_token)).returncode == 0
    await events.stop()
    await marker.stop()


# --- missions on remote repositories ---------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream(repo: Path) -> Iterator[str]:
    """The test repository served read-only over smart HTTP, as a hosting service would."""
    backend = DictBackend({"/upstream.git": Repo(str(repo))})
    server = make_server("127.0.0.1", 0, make_wsgi_chain(backend), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/upstream.git"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_mission_on_a_url_is_cloned_into_the_data_directory_and_fetched_again(
    served: GitBroker,
    nc: NatsClient,
    upstream: str,
    repo: Path,
    tmp_path: Path,
    git: Git,
    commit: Callable[..., str],
) -> None:
    publisher = EventPublisher(nc.jetstream())
    events = await watch(nc, "m-url1")
    await publisher.publish(
        MissionRequested(**meta("m-url1"), repository=upstream, requirement="x")
    )
    first = await events.next(RepositoryPrepared)
    clone = Path(first.repository_path)
    assert clone.parent == tmp_path / "data" / "repositories"
    assert first.base_sha == git(repo, "rev-parse", "main")
    assert git(clone, "rev-parse", first.integration_branch) == first.base_sha
    assert first.file_count == 3
    await events.stop()

    moved = commit(repo, {"later.txt": "later\n"}, "upstream moves on")
    events = await watch(nc, "m-url2")
    await publisher.publish(
        MissionRequested(**meta("m-url2"), repository=upstream, requirement="x")
    )
    second = await events.next(RepositoryPrepared)
    assert second.repository_path == first.repository_path
    assert second.base_sha == moved
    await events.stop()


async def test_a_mission_on_a_url_is_worked_merged_and_pushed_back_to_it(
    nc: NatsClient,
    nats_url: str,
    worktrees_dir: Path,
    upstream: str,
    repo: Path,
    tmp_path: Path,
    git: Git,
    commit: Callable[..., str],
) -> None:
    settings = GitBrokerSettings(
        runtime=RuntimeSettings(nats_url=nats_url, port=0),
        worktrees_dir=worktrees_dir,
        data_dir=tmp_path / "data",
        ack_wait_seconds=2.0,
        push_remote="origin",
    )
    broker = bootstrap(settings)
    await start_service(broker.service)
    publisher = EventPublisher(nc.jetstream())
    mission = "m-roundtrip"
    events = await watch(nc, mission)
    try:
        await publisher.publish(
            MissionRequested(**meta(mission), repository=upstream, requirement="x")
        )
        prepared = await events.next(RepositoryPrepared)
        await publisher.publish(task_ready(mission, "t1"))
        workspace = await events.next(WorkspaceReady)
        # The worktree belongs to the bare clone; a commit there lands on the task branch.
        sha = commit(workspace.worktree_path, {"from_clone.py": "X = 1\n"}, "work on a clone")
        assert git(prepared.repository_path, "rev-parse", workspace.branch) == sha
        await publisher.publish(
            AgentCompleted(**meta(mission), task_id="t1", attempt=1, commit_sha=sha, branch="")
        )
        merged = await events.next(BranchMerged)
        await publisher.publish(
            MissionCompleted(
                **meta(mission),
                final_sha=merged.merge_sha,
                integration_branch=prepared.integration_branch,
                tasks_merged=1,
            )
        )
        marker = await watch(nc, "m-after")
        await publisher.publish(
            MissionRequested(**meta("m-after"), repository=str(repo), requirement="x")
        )
        await marker.next(RepositoryPrepared)
        await marker.stop()
    finally:
        await stop_service(broker.service)
    # The result is back where the mission came from.
    assert git(repo, "rev-parse", prepared.integration_branch) == merged.merge_sha
    assert git(repo, "show", f"{prepared.integration_branch}:from_clone.py") == "X = 1"
    (delivered,) = events.of(BranchPushed)  # and the stream says so
    assert (delivered.remote, delivered.sha) == (upstream, merged.merge_sha)
    await events.stop()


def _pkt(line: bytes) -> bytes:
    return f"{len(line) + 4:04x}".encode() + line


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param("hidden", id="an object the mission does not show"),
        pytest.param("unknown", id="an object the repository does not hold"),
        pytest.param(b"0032want " + b"z" * 40 + b"\n00000009done\n", id="not a sha"),
        pytest.param(b"zzzz", id="not a pkt-line"),
        pytest.param(b"0032want ", id="cut short"),
    ],
)
async def test_a_want_that_cannot_be_served_is_a_protocol_error_not_a_server_error(
    served: GitBroker, nc: NatsClient, repo: Path, git: Git, request_body: str | bytes
) -> None:

    publisher = EventPublisher(nc.jetstream())
    mission = "m-wants"
    events = await watch(nc, mission)
    await publisher.publish(
        MissionRequested(**meta(mission), repository=str(repo), requirement="x")
    )
    prepared = await events.next(RepositoryPrepared)
    await publisher.publish(task_ready(mission, "t1"))
    token = (await events.next(WorkspaceReady)).push_token
    await events.stop()
    # main moves on after the mission started: its new head is never advertised.
    (repo / "later.txt").write_text("later\n")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "later")
    wanted = {"hidden": git(repo, "rev-parse", "main"), "unknown": "1" * 40}
    if isinstance(request_body, str):
        sha = wanted[request_body].encode()
        request_body = (
            _pkt(b"want " + sha + b" multi_ack_detailed side-band-64k ofs-delta\n")
            + b"0000"
            + _pkt(b"done\n")
        )
    assert broker_url(served)
    async with httpx.AsyncClient(verify=tls.shared(), auth=("agent", token), timeout=10) as client:
        # The advertised refs still show only the mission's branches.
        refs = await client.get(f"{broker_url(served)}/{mission}/info/refs?service=git-upload-pack")
        assert refs.status_code == 200
        assert prepared.base_sha.encode() in refs.content
        answer = await client.post(
            f"{broker_url(served)}/{mission}/git-upload-pack",
            content=request_body,
            headers={"Content-Type": "application/x-git-upload-pack-request"},
        )
    assert answer.status_code < 500, answer.text
    if answer.status_code == 200:
        assert b"ERR " in answer.content[:200], answer.content[:200]
    assert b"PACK" not in answer.content
    # And the broker goes on serving.
    assert git_cli(repo.parent, "ls-remote", url(served, mission, f"agent:{token}")).returncode == 0


def broker_url(broker: GitBroker) -> str:
    assert broker.http is not None
    return f"http://127.0.0.1:{broker.http.port}"
