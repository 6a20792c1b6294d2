"""An attempt whose preparation never returns (a file system that never answers) is given
up, and the task goes on in another attempt, on the five services, real NATS and
PostgreSQL.

The hang is real: the attempt's journal, which its preparation reads in a worker thread,
is a FIFO no one writes to, so the thread waits in the kernel's ``open`` and cannot be
cancelled. Before, the runner's loop went on turning, beating for the attempt and keeping
its delivery alive: the attempt was never timed out, never taken over, and the mission
never completed. Now the preparation is given up after ``AETHER_AGENT_STEP_TIMEOUT_SECONDS``:
the attempt fails (retryably) with the reason, its beats stop, the scheduler opens a second
attempt that completes, the runner says on ``/readyz`` (and, a step timeout later, on
``/healthz``) that a thread of its is stuck, and the thread, once the FIFO lets it go,
publishes nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from aether.stack import SERVICES, Stack
from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentStarted,
    BranchMerged,
    TaskReady,
    TaskTimedOut,
    UsageRecorded,
    WorkspaceReady,
)
from aether_llm import MessagesServer
from tests.e2e.test_mission_flow import create_database, stack_for
from tests.support import MissionLog, ScriptedModel, finish, submit_mission, write

pytestmark = pytest.mark.e2e

PLAN = {
    "rationale": "one file",
    "tasks": [
        {
            "id": "x",
            "title": "Write x",
            "description": "x",
            "files": ["x.txt"],
            "depends_on": [],
            "tier": "small",
        }
    ],
}
STEP_TIMEOUT = 3


@pytest.fixture
def model() -> Iterator[MessagesServer]:
    script = ScriptedModel(plan=PLAN, scripts={"x": [write("x.txt", "x\n"), finish("wrote x")]})
    server = MessagesServer(script).start()
    yield server
    server.stop()


async def answer(url: str) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url)
    return response.status_code, response.text


async def until_answered(url: str, status: int, timeout: float = 30.0) -> str:
    """The body of ``url``'s first answer with ``status``, asked every 0.1 s."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await answer(url)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} still answers {code} ({body}) after {timeout}s")
        await asyncio.sleep(0.1)


async def test_a_preparation_that_never_returns_is_given_up_and_the_task_goes_on(
    tmp_path: Path, model: MessagesServer, database_url: str, repo: Path
) -> None:
    stack: Stack = stack_for(tmp_path, model, create_database(database_url))
    stack.env.update(
        {
            "AETHER_AGENT_STEP_TIMEOUT_SECONDS": str(STEP_TIMEOUT),
            # Beats while the preparation is within its time, so their end shows.
            "AETHER_AGENT_HEARTBEAT_SECONDS": "0.5",
            "AETHER_RETRY_BASE_SECONDS": "0.2",
            "AETHER_AGENT_CONCURRENCY": "2",
        }
    )
    fifo = tmp_path / "never-answers"
    os.mkfifo(fifo)
    await asyncio.to_thread(stack.start_infrastructure)
    try:
        # Every service but the runner: the first attempt's workspace waits for it, and
        # its journal is made a FIFO before any runner can read it.
        for name in SERVICES:
            if name != "agent-runner":
                stack.start_service(name)
        await asyncio.to_thread(stack.wait_ready)
        mission_id = await submit_mission(stack, repo, "one file")
        nc = await nats.connect(stack.nats_url)
        log = await MissionLog(nc, mission_id, telemetry=True).start()
        try:
            ready = await log.first(WorkspaceReady, timeout=60)
            state = Path(ready.git_dir) / "aether-agent"
            state.mkdir(parents=True, exist_ok=True)
            # A second name for the FIFO, which outlives the mission's worktrees.
            os.link(fifo, state / "transcript.jsonl")

            stack.start_service("agent-runner")
            await asyncio.to_thread(stack.wait_ready, ["agent-runner"])
            runner = stack.processes["agent-runner"].url

            failed = await log.first(AgentFailed, timeout=60)
            assert failed.attempt == 1 and failed.retryable
            assert failed.reason == (
                f"preparation of attempt {mission_id}/x/a1 has not finished in {STEP_TIMEOUT} s"
            )
            # The thread is still stuck: the runner is not ready, and a step timeout
            # later not live either, so its supervisor would replace it.
            code, body = await answer(f"{runner}/readyz")
            assert code == 503, body
            assert f"preparation of attempt {mission_id}/x/a1 stuck" in body
            body = await until_answered(f"{runner}/healthz", 503, timeout=STEP_TIMEOUT + 30)
            assert f"preparation of attempt {mission_id}/x/a1 stuck" in body

            await log.completion(timeout=90)

            # The FIFO answers at last: the thread returns, is forgotten, and the runner
            # is ready and live again.
            # (A blank line: a journal with no record, from which the preparation would
            # go on to reset the worktree and begin the conversation, were it not given
            # up.)
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(writer, b"\n")
            os.close(writer)
            await until_answered(f"{runner}/readyz", 200)
            await until_answered(f"{runner}/healthz", 200)
            await log.caught_up()
        finally:
            await log.stop()
            await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)

    assert sorted(e.attempt for e in log.of(TaskReady)) == [1, 2]
    assert log.of(TaskTimedOut) == []
    merged = log.of(BranchMerged)
    assert [(e.task_id, e.attempt) for e in merged] == [("x", 2)]
    # Nothing of the first attempt but its failure, and its beats ended with it.
    first = [
        e
        for e in log.events
        if isinstance(e, AgentStarted | AgentCompleted | AgentFailed | UsageRecorded)
        and e.attempt == 1
    ]
    assert first == [failed]
    beats = [e for e in log.of(AgentHeartbeat) if e.attempt == 1]
    assert beats, "the runner beat while the preparation was within its time"
    assert all(beat.occurred_at <= failed.occurred_at for beat in beats)
    said = (stack.home / "logs" / "agent-runner.log").read_text()
    assert f"preparation of attempt {mission_id}/x/a1 has not finished" in said
    assert "a given-up step returned; nothing of its attempt is reported" in said
