"""Attempts reach only a runner that has their runtime: two runner processes on real NATS
share the work consumer, and only one of them has the command runtime the tasks name (a
small real program). The other hands the deliveries back rather than failing them; once
the runner with the runtime is stopped, an attempt on it fails with a reason naming the
runtime, after the registry's entry age rather than never."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_events import AgentCompleted, AgentFailed, AgentStarted, new_event_id
from aether_runtime.runners import ensure_bucket, read_runners

from .test_processes import runners  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.timeout(240)

# The registry's entry age here: a runner writes its entry every third of it.
ENTRY_SECONDS = 4.0
TASKS = ("t1", "t2", "t3", "t4")

AGENT = r"""
import json, re, sys
task = json.loads(re.search(r"<task>(.*?)</task>", sys.stdin.read(), re.S).group(1))
with open(task["id"] + ".txt", "w") as out:
    out.write("written by the solo runtime\n")
print(json.dumps({"text": "wrote " + task["id"] + ".txt"}))
"""


def solo_runtime(tmp_path: Path) -> tuple[str, Path]:
    """A command runtime of its own name (no other runner of the session has it) and the
    file of specs that configures it."""
    name = f"solo-{new_event_id()[:8].lower()}"
    tool = tmp_path / "tool"
    tool.mkdir()
    program = tool / "solo_agent.py"
    program.write_text(AGENT)
    spec = CommandSpec(
        name=name,
        command=[sys.executable, str(program)],
        prompt="stdin",
        usage="json",
        read_only=[str(tool)],
    )
    specs = tmp_path / "runtimes.json"
    specs.write_bytes(msgspec.json.encode([spec]))
    return name, specs


async def runner_with(nc: NatsClient, runtime: str, within: float = 60.0) -> str:
    """The id of the live runner whose entry names ``runtime``, once there is one."""
    deadline = time.monotonic() + within
    while True:
        having = [e.runner_id for e in await read_runners(nc.jetstream()) if runtime in e.runtimes]
        if having:
            [runner_id] = having
            return runner_id
        assert time.monotonic() < deadline, "no runner announced the runtime"
        await asyncio.sleep(0.1)


async def test_attempts_go_only_to_the_runner_that_has_their_runtime(
    tmp_path: Path,
    nc: NatsClient,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    runners: Callable[..., Stack],  # noqa: F811
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    name, specs = solo_runtime(tmp_path)
    # The bucket the scheduler creates, with a short entry age.
    await ensure_bucket(nc.jetstream(), ENTRY_SECONDS)
    entry = {"AETHER_RUNNER_ENTRY_SECONDS": str(ENTRY_SECONDS)}
    scripted = model({})
    # Two lanes without the runtime, one with it: most deliveries reach the first.
    plain = runners(scripted.url, AETHER_AGENT_CONCURRENCY="2", **entry)
    solo = runners(
        scripted.url,
        AETHER_AGENT_COMMAND_RUNTIMES=str(specs),
        AETHER_SANDBOX="unconfined",
        **entry,
    )
    solo_id = await runner_with(nc, name)

    for task_id in TASKS:
        ready = workspace_ready(make_repo(tmp_path, task_id), mission_id, task_id)
        await publish(msgspec.structs.replace(ready, runtime=name))
    await events.wait_for(
        lambda log: len(log.of(AgentCompleted)) == len(TASKS) or bool(log.of(AgentFailed)),
        timeout=120,
    )

    assert events.of(AgentFailed) == []
    assert sorted(done.task_id for done in events.of(AgentCompleted)) == list(TASKS)
    assert {started.runner_id for started in events.of(AgentStarted)} == {solo_id}
    assert len(events.of(AgentStarted)) == len(TASKS)
    handed = (plain.home / "logs" / "agent-runner.log").read_text()
    assert f"this runner lacks the runtime {name!r}" in handed  # not by chance

    # The only runner with the runtime stops (its entry goes with it): an attempt on it
    # waits for one the registry's entry age, then fails saying why.
    await asyncio.to_thread(solo.stop)
    began = time.monotonic()
    last = "t5"
    ready = workspace_ready(make_repo(tmp_path, last), mission_id, last)
    await publish(msgspec.structs.replace(ready, runtime=name))
    failed = await events.first(AgentFailed, timeout=60)
    waited = time.monotonic() - began

    assert failed.task_id == last and not failed.retryable
    assert failed.reason.startswith(f"no live agent runner has the runtime {name!r}")
    assert "; the live runners have: builtin (" in failed.reason
    assert waited >= ENTRY_SECONDS - 0.5
    assert [s.task_id for s in events.of(AgentStarted)].count(last) == 0
