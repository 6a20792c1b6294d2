"""Runner processes (``python -m aether_agent_runner``) on real NATS: killed mid-task and
replaced, two sharing one durable consumer, and a command's environment in a real process."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aether import prestart
from aether.stack import Stack
from aether_events import (
    AgentCompleted,
    AgentStarted,
    TranscriptRecorded,
    UsageRecorded,
    new_event_id,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def runners(tmp_path: Path, nats_url: str) -> Iterator[Callable[..., Stack]]:
    """``runners(model_url, **env)``: start one runner process (each its own Stack)."""
    stacks: list[Stack] = []

    def start(model_url: str, **env: str) -> Stack:
        stack = Stack(
            home=tmp_path / f"runner-{len(stacks)}",
            random_ports=True,
            prestart=prestart.shared(),
            env={
                "NATS_URL": nats_url,
                "DATABASE_URL": "postgresql://unused",
                "ANTHROPIC_API_KEY": "test-key",
                "ANTHROPIC_BASE_URL": model_url,
                "AETHER_MODEL_MAX_RETRIES": "0",
                "AETHER_AGENT_ACK_WAIT_SECONDS": "2",
                "AETHER_AGENT_CONCURRENCY": "1",
                "AETHER_AGENT_HEARTBEAT_SECONDS": "1",
                **env,
            },
        )
        # Registered before anything starts: a runner that is slow to get ready (or never
        # does) is still stopped at the end, never left running.
        stacks.append(stack)
        stack.start_infrastructure()
        stack.start_service("agent-runner")
        stack.wait_ready(["agent-runner"])
        return stack

    yield start
    for stack in stacks:
        stack.stop()


def signal_when(scripted: Any, wanted: tuple[str, int]) -> asyncio.Event:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def on_call(task: str, turn: int) -> None:
        if (task, turn) == wanted:
            loop.call_soon_threadsafe(event.set)

    scripted.script.on_call = on_call
    return event


async def test_a_runner_killed_mid_task_is_replaced_without_repeating_work(
    tmp_path: Path,
    task_repo: Any,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    runners: Callable[..., Stack],
    publish: Callable[..., Any],
    events: Any,
    watch: Callable[..., Any],
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    append = "python -c \"open('log.txt', 'a').write('ran\\n')\""
    write = reply(tool("write_file", path="m.txt", content="m"))
    scripted = model(
        {
            "t1": [
                reply(tool("run_command", command=append)),
                reply(tool("write_file", path="b.txt", content="b")),
                reply(tool("write_file", path="c.txt", content="c")),
                finish("log, b and c"),
            ],
            "marker": [write, finish()],
        }
    )
    gate = scripted.script.gates[("t1", 2)] = threading.Event()
    third_call = signal_when(scripted, ("t1", 2))
    first = runners(scripted.url)
    await publish(workspace_ready(task_repo, mission_id))
    await asyncio.wait_for(third_call.wait(), 60)

    await asyncio.to_thread(first.kill, "agent-runner")  # SIGKILL mid-call
    gate.set()
    second = runners(scripted.url)
    done = await events.first(AgentCompleted, timeout=60)
    # Barrier: a later task on the same single-lane runner has finished too.
    marker = f"m-marker-{new_event_id()[:8]}"
    marker_log = await watch(marker)
    await publish(workspace_ready(make_repo(tmp_path, "marker"), marker, "marker"))
    await marker_log.first(AgentCompleted, timeout=60)

    assert len(events.of(AgentCompleted)) == 1
    assert done.summary == "log, b and c"
    assert done.files_changed == ["b.txt", "c.txt", "log.txt"]
    # Calls 0 and 1 were answered before the kill and are not made again; call 2 was in
    # flight (its reply never arrived) and is the only one repeated.
    assert [c for c in scripted.script.calls if c.startswith("t1")] == [
        "t1:0",
        "t1:1",
        "t1:2",
        "t1:2",
        "t1:3",
    ]
    assert (task_repo.worktree / "log.txt").read_text() == "ran\n"
    assert len(events.of(AgentStarted)) == 1
    steps = [u.step for u in events.of(UsageRecorded)]
    assert steps == [f"agent:t1:a1:turn{n}" for n in range(1, 5)]
    log = (second.home / "logs" / "agent-runner.log").read_text()
    assert "resuming the attempt from its journal" in log
    # The transcript: one entry per journal record, the ones the second runner published
    # again (same ids) not doubled; the repeated model call is one turn.
    entries = events.of(TranscriptRecorded)
    assert sorted(e.sequence for e in entries) == list(range(8))
    assert [e.kind for e in sorted(entries, key=lambda e: e.sequence)] == [
        "prompt",
        *["turn", "command", "turn", "tool_call", "turn", "tool_call"],
        "turn",
    ]


async def test_two_runner_processes_share_the_work(
    tmp_path: Path,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    runners: Callable[..., Stack],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    tasks = ["t1", "t2", "t3", "t4"]
    scripted = model(
        {t: [reply(tool("write_file", path=f"{t}.txt", content=t)), finish()] for t in tasks}
    )
    # The first two agents wait for each other: with one agent per process, only two
    # processes working at once can get them past this point.
    together = threading.Barrier(2, timeout=30)
    met: list[bool] = []
    arrivals = iter(range(100))
    inner = scripted.script.on_call

    def on_call(task: str, turn: int) -> None:
        if turn == 0 and next(arrivals) < 2:
            try:
                together.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
        if inner is not None:
            inner(task, turn)

    scripted.script.on_call = on_call
    runners(scripted.url)
    runners(scripted.url)

    for task in tasks:
        await publish(workspace_ready(make_repo(tmp_path, task), mission_id, task))
    await events.wait_for(lambda log: len(log.of(AgentCompleted)) == 4, timeout=90)

    assert met == [True, True]
    started = {e.task_id: e for e in events.of(AgentStarted)}
    completed = {e.task_id: e for e in events.of(AgentCompleted)}
    by_runner: dict[str, list[tuple[Any, Any]]] = {}
    for task in tasks:
        span = (started[task].occurred_at, completed[task].occurred_at)
        by_runner.setdefault(started[task].runner_id, []).append(span)
    assert len(by_runner) == 2
    for spans in by_runner.values():  # one agent at a time in each process
        spans.sort()
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert end <= begin


async def test_a_real_runner_keeps_its_secrets_from_commands(
    task_repo: Any,
    model: Callable[..., Any],
    runners: Callable[..., Stack],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
    results_of: Any,
) -> None:
    dump = "python -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    scripted = model(
        {
            "t1": [
                reply(tool("run_command", command=dump)),
                reply(tool("write_file", path="a.txt", content="a")),
                finish(),
            ]
        }
    )
    secrets = {
        "GITHUB_TOKEN": "ghp-proc-secret",
        "AWS_SECRET_ACCESS_KEY": "aws-proc-secret",
        "STRIPE_API_KEY": "sk-proc-secret",
    }
    runners(scripted.url, **secrets)
    await publish(workspace_ready(task_repo, mission_id))
    await events.first(AgentCompleted, timeout=60)

    output = results_of(scripted.script.requests[1])[0]
    env = json.loads(output.splitlines()[2])
    assert "PATH" in env
    leaked = {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "NATS_URL", "DATABASE_URL", *secrets}
    assert not leaked & set(env)
    for value in ["test-key", *secrets.values()]:
        assert value not in output
