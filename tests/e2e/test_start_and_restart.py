"""Missions survive a service that starts late or dies mid-mission.

Each service rebuilds its projection on start and must then do every piece of work its
whole state says is due, however long ago the event that asked for it was published:
a mission submitted while a service is not running yet completes once it starts, and a
service SIGKILLed mid-mission and restarted finishes what it was doing, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from dulwich.repo import Repo

from aether import prestart
from aether.infra import PRIVATE_PORTS_START, free_port, free_port_run
from aether.stack import SERVICES, Stack
from aether_events import (
    AgentCompleted,
    AgentStarted,
    BranchMerged,
    MissionCompleted,
    MissionRequested,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    TaskTimedOut,
    WorkspaceReady,
)
from aether_llm import MessagesServer
from aether_runtime import tls
from tests.e2e.test_mission_flow import tree_files
from tests.support import MissionLog, ScriptedModel, submit_mission

pytestmark = pytest.mark.e2e


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
            # A killed service's unacknowledged message comes back within seconds.
            "AETHER_ACK_WAIT_SECONDS": "6",
            "AETHER_AGENT_ACK_WAIT_SECONDS": "6",
        },
    )


async def submit(stack: Stack, repo: Path) -> str:
    return await submit_mission(stack, repo, "alpha, beta, then both")


def assert_each_task_merged_once(
    log: MissionLog, repo: Path, script: ScriptedModel, plan_calls: int = 1
) -> None:
    assert sorted(e.task_id for e in log.of_type(BranchMerged)) == ["a", "b", "c"]
    # Done by the service that owed it, not rescued by the scheduler timing tasks out.
    assert sorted((e.task.id, e.attempt) for e in log.of_type(TaskReady)) == [
        ("a", 1),
        ("b", 1),
        ("c", 1),
    ]
    assert log.of_type(TaskTimedOut) == []
    assert len(log.of_type(MissionCompleted)) == 1
    assert len(log.of_type(PlanProduced)) == 1
    assert 1 <= script.calls.count("plan") <= plan_calls
    completed = log.of_type(MissionCompleted)[0]
    files = tree_files(repo, completed.final_sha)
    assert files["a.txt"] == b"alpha\n" and files["b.txt"] == b"beta\n"
    assert files["c.txt"] == b"alpha\nbeta\n"
    with Repo(str(repo)) as r:
        merges = [
            entry.commit
            for entry in r.get_walker([completed.final_sha.encode()])
            if b"Aether-Task:" in entry.commit.message and len(entry.commit.parents) > 1
        ]
    # Fast-forwards make no merge commit; no task has two.
    tasks = [m.message.decode().split("Aether-Task: ")[1].split()[0] for m in merges]
    assert len(tasks) == len(set(tasks))


# The services that start late, in the order their work comes due, each with what shows
# that the mission waits on it.
LATE: list[tuple[str, Any]] = [
    ("git-broker", lambda log: bool(log.of_type(MissionRequested))),
    ("planner", lambda log: bool(log.of_type(RepositoryPrepared))),
    ("agent-runner", lambda log: len(log.of_type(WorkspaceReady)) >= 2),
]


async def test_a_mission_submitted_before_each_service_first_starts_completes(
    tmp_path: Path,
    model_server: tuple[MessagesServer, ScriptedModel],
    fresh_database: str,
    repo: Path,
) -> None:
    """Only the gateway and the scheduler run when the mission is submitted; the broker,
    the planner and the runner each start for the first time once the mission waits on
    it, with the event that asks for its work already stored (one stack for the three,
    where a stack per late service once cost a minute of the suite)."""
    stack = stack_for(tmp_path, model_server[0], fresh_database)
    late = [name for name, _ in LATE]
    nc = None
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        for name in SERVICES:
            if name not in late:
                stack.start_service(name)
        await asyncio.to_thread(stack.wait_ready, None, 90.0)
        mission_id = await submit(stack, repo)
        nc = await nats.connect(stack.nats_url)
        log = await MissionLog(nc, mission_id).start()
        for name, waiting_on_it in LATE:
            await log.wait_for(waiting_on_it, timeout=60)
            stack.start_service(name)
            await asyncio.to_thread(stack.wait_ready, [name], 60.0)
        await log.completion(timeout=120)
        await log.stop()
    finally:
        if nc is not None:
            await nc.close()
        await asyncio.to_thread(stack.stop)
    assert_each_task_merged_once(log, repo, model_server[1])


# Who is killed, and when: while it is at work on the mission.
KILLS: dict[str, tuple[str, Any]] = {
    "planner-planning": ("planner", lambda log: bool(log.of_type(RepositoryPrepared))),
    "broker-preparing": ("git-broker", lambda log: bool(log.of_type(MissionRequested))),
    # Task c's workspace is being prepared, or a's merge is under way.
    "broker-merging": (
        "git-broker",
        lambda log: (
            any(e.task.id == "c" for e in log.of_type(TaskReady))
            or any(e.task_id == "a" for e in log.of_type(AgentCompleted))
        ),
    ),
    # b's agent waits on its (slow) first model reply.
    "runner-working": (
        "agent-runner",
        lambda log: any(e.task_id == "b" for e in log.of_type(AgentStarted)),
    ),
}


@pytest.mark.parametrize("kill", list(KILLS))
async def test_a_service_killed_mid_mission_and_restarted_merges_each_task_once(
    running: Stack,
    model_server: tuple[MessagesServer, ScriptedModel],
    repo: Path,
    kill: str,
) -> None:
    """On the package's stack (each case its own mission on it): a restart is a restart
    whichever missions the service saw before, and a stack of its own for each case was
    most of the case's time. ``running`` starts again a victim a failed case left down."""
    victim, when = KILLS[kill]
    mission_id = await submit(running, repo)
    nc = await nats.connect(running.nats_url)
    try:
        log = await MissionLog(nc, mission_id).start()
        await log.wait_for(when, timeout=60)
        await asyncio.to_thread(running.kill, victim)
        running.start_service(victim)
        await asyncio.to_thread(running.wait_ready, [victim], 60.0)
        await log.completion(timeout=120)
        await log.stop()
    finally:
        await nc.close()
    # A planner killed with its model call in flight asks again once (the journal keeps
    # replies, and this one never came); a reply it had journaled is never asked again.
    assert_each_task_merged_once(
        log, repo, model_server[1], plan_calls=2 if victim == "planner" else 1
    )


async def test_a_service_whose_free_port_is_taken_before_it_binds_moves_to_another(
    tmp_path: Path,
    model_server: tuple[MessagesServer, ScriptedModel],
    fresh_database: str,
) -> None:
    """A port chosen free can be taken before the service binds it (by any process on the
    machine); the stack then starts that service on another port instead of failing. The
    service finds out before it starts anything (it binds first) and exits at once."""
    stack = stack_for(tmp_path, model_server[0], fresh_database)
    taken = {name: stack.ports[name] for name in ("planner", "gateway")}
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        with contextlib.ExitStack() as holders:
            for port in taken.values():
                holder = holders.enter_context(socket.socket())
                holder.bind(("127.0.0.1", port))
                holder.listen()
            await asyncio.to_thread(stack.start, 90.0)
        async with httpx.AsyncClient(verify=tls.shared(), timeout=5) as http:
            for name, port in taken.items():
                assert stack.ports[name] != port
                assert stack.processes[name].port == stack.ports[name]
                ready = await http.get(f"{stack.processes[name].url}/readyz")
                assert ready.status_code == 200
                assert ready.json()["pid"] == stack.processes[name].pid
                log = (stack.home / "logs" / f"{name}.log").read_text()
                assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log
    finally:
        stack.stop()


def test_free_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(PRIVATE_PORTS_START <= port < max(low, PRIVATE_PORTS_START + 1000) for port in ports)
    # A run of ports (a stack's port base): all below the range, none handed out before.
    bases = [free_port_run(5) for _ in range(20)]
    run_ports = [base + n for base in bases for n in range(5)]
    assert len(set(run_ports)) == len(run_ports) and not set(run_ports) & set(ports)
    assert all(
        PRIVATE_PORTS_START <= port < max(low, PRIVATE_PORTS_START + 1000) for port in run_ports
    )
