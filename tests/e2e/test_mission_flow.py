"""One mission through all five services, each its own process, on real NATS and PostgreSQL.

The model is a scripted server speaking the Messages API over HTTP: the services use the
real anthropic SDK against it.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from dulwich.objects import Commit, Tree
from dulwich.repo import Repo

from aether import prestart
from aether.gitview import create_sample_repository
from aether.stack import SERVICES, Stack
from aether_events import (
    AgentStarted,
    BranchMerged,
    Event,
    MissionCompleted,
    MissionRequested,
    PlanProduced,
    TaskReady,
    WorkspaceReady,
)
from aether_llm import MessagesServer
from aether_runtime import tls
from tests.support import MissionLog, ScriptedModel, finish, tool_results, write

pytestmark = pytest.mark.e2e

PLAN = {
    "rationale": "two independent files, then one that combines them",
    "tasks": [
        {
            "id": "a",
            "title": "Write alpha",
            "description": "alpha",
            "files": ["a.txt"],
            "depends_on": [],
            "tier": "small",
        },
        {
            "id": "b",
            "title": "Write beta",
            "description": "beta",
            "files": ["b.txt"],
            "depends_on": [],
            "tier": "standard",
        },
        {
            "id": "c",
            "title": "Combine",
            "description": "combine a and b",
            "files": ["c.txt"],
            "depends_on": ["a", "b"],
            "tier": "standard",
        },
    ],
}


def read_both(request: dict[str, Any]) -> Any:
    from aether_llm import Reply, tool_use_block

    return Reply(
        [
            tool_use_block("read_file", {"path": "a.txt"}),
            tool_use_block("read_file", {"path": "b.txt"}),
        ],
        "tool_use",
        100,
        20,
    )


def write_combined(request: dict[str, Any]) -> Any:
    # Whatever the worktree held when the agent read it goes into c.txt.
    return write("c.txt", "".join(tool_results(request)))(request)


def check_a(request: dict[str, Any]) -> Any:
    """Task a runs a.txt through Python with run_command (in the runner's sandbox) first."""
    from aether_llm import Reply, tool_use_block

    command = "python -c \"print('read', open('a.txt').read().strip())\""
    return Reply([tool_use_block("run_command", {"command": command})], "tool_use", 100, 20)


def finish_a(request: dict[str, Any]) -> Any:
    # A command that did not run (no sandbox, a refusal) fails the model call, and the task.
    (result,) = tool_results(request)
    assert "[exit code 0" in result and "read alpha" in result, result
    return finish("wrote a")(request)


def scripted_model(delays: dict[str, float] | None = None) -> ScriptedModel:
    return ScriptedModel(
        plan=PLAN,
        scripts={
            "a": [write("a.txt", "alpha\n"), check_a, finish_a],
            "b": [write("b.txt", "beta\n"), finish("wrote b")],
            "c": [read_both, write_combined, finish("combined")],
        },
        delays=delays or {},
    )


_databases = itertools.count()


def create_database(database_url: str) -> str:
    """A new, empty database on the PostgreSQL server of ``database_url``."""
    name = f"e2e_{next(_databases)}_{id(object())}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = database_url.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def fresh_database(database_url: str) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    return create_database(database_url)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    create_sample_repository(path)
    return path


def stack_for(tmp_path: Path, model: MessagesServer, database: str) -> Stack:
    return Stack(
        home=tmp_path / "stack",
        random_ports=True,
        prestart=prestart.shared(),
        env={
            "ANTHROPIC_API_KEY": "test-key",
            "ANTHROPIC_BASE_URL": model.url,
            "DATABASE_URL": database,
            "AETHER_MODEL_MAX_RETRIES": "0",
        },
    )


@pytest.fixture
def model_server(
    shared_model: tuple[MessagesServer, ScriptedModel],
) -> tuple[MessagesServer, ScriptedModel]:
    """The package's scripted model, its record of calls emptied for this test."""
    shared_model[1].calls.clear()
    return shared_model


@pytest.fixture
async def running(shared_stack: Stack, model_server: object) -> Stack:
    """The package's stack with every service up: a service an earlier test killed and
    did not start again (it failed half-way) is started before this test."""
    stack = shared_stack
    for name in SERVICES:
        service = stack.processes.get(name)
        if service is None or service.process.poll() is not None:
            stack.processes.pop(name, None)
            stack.start_service(name)
    await asyncio.to_thread(stack.wait_ready)
    return stack


async def submit_and_approve(stack: Stack, repo: Path) -> tuple[str, MissionLog, Any]:
    async with httpx.AsyncClient(
        verify=tls.shared(), base_url=stack.gateway_url, timeout=10, headers=stack.auth_headers
    ) as http:
        created = await http.post(
            "/missions",
            json={"repository": str(repo), "requirement": "alpha, beta, then both"},
        )
        assert created.status_code == 202, created.text
        mission_id = created.json()["mission_id"]
        nc = await nats.connect(stack.nats_url)
        log = await MissionLog(nc, mission_id).start()
        await log.wait_for(lambda log: bool(log.of_type(PlanProduced)), timeout=60)
        # The read model may trail the stream by a moment: approval answers 409 until the
        # gateway has folded the plan, so retry that answer only.
        for _ in range(100):
            approved = await http.post(f"/missions/{mission_id}/plan/approve", json={"version": 1})
            if approved.status_code != 409:
                break
            await asyncio.sleep(0.1)
        assert approved.status_code == 202, approved.text
    return mission_id, log, nc


def tree_files(repo: Path, sha: str) -> dict[str, bytes]:
    with Repo(str(repo)) as r:
        commit = r[sha.encode()]
        assert isinstance(commit, Commit)
        out: dict[str, bytes] = {}

        def walk(tree_sha: bytes, prefix: str) -> None:
            tree = r[tree_sha]
            assert isinstance(tree, Tree)
            for entry in tree.items():
                name = prefix + entry.path.decode()
                if entry.mode & 0o040000:
                    walk(entry.sha, name + "/")
                else:
                    out[name] = r[entry.sha].data  # type: ignore[attr-defined]

        walk(commit.tree, "")
        return out


def branch_head(repo: Path, branch: str) -> str:
    with Repo(str(repo)) as r:
        return r.refs[f"refs/heads/{branch}".encode()].decode()


def assert_causal_order(events: list[tuple[int, Event]]) -> None:
    position = {event.event_id: index for index, (_, event) in enumerate(events)}
    for index, (_, event) in enumerate(events):
        if event.causation_id is not None:
            assert event.causation_id in position, f"{type(event).__name__} cause not in stream"
            assert position[event.causation_id] < index, f"{type(event).__name__} before its cause"
        assert event.correlation_id == events[0][1].event_id


async def test_mission_with_a_dependent_task_merges_every_change(
    running: Stack, repo: Path
) -> None:
    mission_id, log, nc = await submit_and_approve(running, repo)
    try:
        await log.completion(timeout=120)
    finally:
        await log.stop()
        await nc.close()
    completed = log.of_type(MissionCompleted)[0]
    branch = f"aether/{mission_id}"
    assert completed.integration_branch == branch
    assert branch_head(repo, branch) == completed.final_sha
    files = tree_files(repo, completed.final_sha)
    assert files["a.txt"] == b"alpha\n" and files["b.txt"] == b"beta\n"
    # The dependent task read both dependencies' files from its own worktree.
    assert files["c.txt"] == b"alpha\nbeta\n"
    c_workspace = next(e for e in log.of_type(WorkspaceReady) if e.task.id == "c")
    base = tree_files(repo, c_workspace.base_sha)
    assert "a.txt" in base and "b.txt" in base
    # Causal order: every event after its cause, and the dependent task after both merges.
    events = log.entries
    assert isinstance(events[0][1], MissionRequested)
    assert_causal_order(events)
    index = {
        (
            type(e).__name__,
            getattr(e, "task_id", None) or getattr(getattr(e, "task", None), "id", None),
        ): i
        for i, (_, e) in enumerate(events)
    }
    assert index[("BranchMerged", "a")] < index[("TaskReady", "c")]
    assert index[("BranchMerged", "b")] < index[("TaskReady", "c")]
    assert sorted(e.task_id for e in log.of_type(BranchMerged)) == ["a", "b", "c"]
    # The agents' commands ran in the sandbox, and the events say so.
    assert {e.sandbox for e in log.of_type(AgentStarted)} == {"bubblewrap"}
    async with httpx.AsyncClient(
        verify=tls.shared(), base_url=running.gateway_url, headers=running.auth_headers
    ) as http:
        for _ in range(100):
            shown = (await http.get(f"/missions/{mission_id}")).json()
            if shown.get("status") == "completed":
                break
            await asyncio.sleep(0.1)
    assert shown["status"] == "completed"


async def test_scheduler_killed_mid_mission_completes_with_each_task_merged_once(
    running: Stack, repo: Path, model_server: tuple[MessagesServer, ScriptedModel]
) -> None:
    _, log, nc = await submit_and_approve(running, repo)
    try:
        # Task a merges while b's agent is still waiting on its (slow) model reply. b's
        # AgentStarted shows its attempt holds its bus credential, which the scheduler
        # grants (an attempt starting while no scheduler answers waits for one).
        await log.wait_for(
            lambda log: (
                any(e.task_id == "a" for e in log.of_type(BranchMerged))
                and any(e.task_id == "b" for e in log.of_type(AgentStarted))
            ),
            timeout=60,
        )
        await asyncio.to_thread(running.kill, "scheduler")
        await log.wait_for(
            lambda log: any(e.task_id == "b" for e in log.of_type(BranchMerged)), timeout=60
        )
        restarted = running.start_service("scheduler")
        await asyncio.to_thread(running.wait_ready, [restarted.name])
        await log.completion(timeout=120)
    finally:
        await log.stop()
        await nc.close()
    merged = [e.task_id for e in log.of_type(BranchMerged)]
    assert sorted(merged) == ["a", "b", "c"]
    ready = [(e.task.id, e.attempt) for e in log.of_type(TaskReady)]
    assert sorted(ready) == [("a", 1), ("b", 1), ("c", 1)]
    assert len(log.of_type(MissionCompleted)) == 1
    completed = log.of_type(MissionCompleted)[0]
    assert set(tree_files(repo, completed.final_sha)) >= {"a.txt", "b.txt", "c.txt"}
    with Repo(str(repo)) as r:
        merges = [
            entry.commit
            for entry in r.get_walker([completed.final_sha.encode()])
            if b"Aether-Task:" in entry.commit.message and len(entry.commit.parents) > 1
        ]
    tasks_in_merges = [m.message.decode().split("Aether-Task: ")[1].split()[0] for m in merges]
    assert len(tasks_in_merges) == len(set(tasks_in_merges))
    assert model_server[1].calls.count("plan") == 1
