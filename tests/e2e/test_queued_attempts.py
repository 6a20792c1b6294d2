"""A mission wider than its runners: the attempts that wait for a free lane are not timed
out meanwhile, on the five services, real NATS and PostgreSQL.

One agent lane, three independent tasks allowed at once, each attempt longer than the
liveness timeout (its first model reply takes 3 s, the timeout is 2 s, the runner beats
every half second): the second and third attempts wait 3 and 6 s for the lane. Each
attempt runs once and the mission completes; before, both waiting attempts timed out
and were retried behind the one running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from aether.stack import Stack
from aether_events import (
    AgentStarted,
    BranchMerged,
    MissionCompleted,
    TaskReady,
    TaskRetried,
    TaskTimedOut,
)
from aether_llm import MessagesServer
from tests.e2e.test_mission_flow import create_database, stack_for
from tests.support import MissionLog, ScriptedModel, finish, submit_mission, write

pytestmark = pytest.mark.e2e

TASKS = ("x", "y", "z")
PLAN = {
    "rationale": "three files, independent of each other",
    "tasks": [
        {
            "id": tid,
            "title": f"Write {tid}",
            "description": tid,
            "files": [f"{tid}.txt"],
            "depends_on": [],
            "tier": "small",
        }
        for tid in TASKS
    ],
}
# Longer than the liveness timeout below: an attempt's first reply.
REPLY_SECONDS = 3.0


@pytest.fixture
def slow_model() -> Iterator[MessagesServer]:
    script = ScriptedModel(
        plan=PLAN,
        scripts={tid: [write(f"{tid}.txt", f"{tid}\n"), finish(f"wrote {tid}")] for tid in TASKS},
        delays=dict.fromkeys(TASKS, REPLY_SECONDS),
    )
    server = MessagesServer(script).start()
    yield server
    server.stop()


async def test_attempts_waiting_for_a_free_runner_are_not_timed_out(
    tmp_path: Path, slow_model: MessagesServer, database_url: str, repo: Path
) -> None:
    stack: Stack = stack_for(tmp_path, slow_model, create_database(database_url))
    stack.env.update(
        {
            "AETHER_AGENT_CONCURRENCY": "1",
            "AETHER_HEARTBEAT_TIMEOUT_SECONDS": "2",
            "AETHER_AGENT_HEARTBEAT_SECONDS": "0.5",
        }
    )
    await asyncio.to_thread(stack.start)
    try:
        mission_id = await submit_mission(stack, repo, "three files", max_concurrency=3)
        nc = await nats.connect(stack.nats_url)
        log = await MissionLog(nc, mission_id).start()
        try:
            await log.completion(timeout=120)
        finally:
            await log.stop()
            await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)
    assert log.of_type(MissionCompleted)
    assert log.of_type(TaskTimedOut) == [] and log.of_type(TaskRetried) == []
    assert sorted((e.task.id, e.attempt) for e in log.of_type(TaskReady)) == [
        (tid, 1) for tid in TASKS
    ]
    assert sorted(e.task_id for e in log.of_type(AgentStarted)) == list(TASKS)
    assert sorted(e.task_id for e in log.of_type(BranchMerged)) == list(TASKS)
    # The lane ran them one after another: the last began after the others' replies.
    starts = sorted(e.occurred_at for e in log.of_type(AgentStarted))
    assert (starts[-1] - starts[0]).total_seconds() >= 2 * REPLY_SECONDS - 0.5
