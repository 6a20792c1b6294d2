"""Attempts cut short by their wall-time limit are reported, with the runner's per-process
caches of base trees and parsed indexes warm.

With those caches a task's git work is quick, which once made a heartbeat's publish meet
the attempt's end often enough that a cut attempt was sometimes never reported (the
heartbeat stopped only on a cancellation the NATS client could swallow; the mechanism
has its own deterministic test in ``test_service``). Here one runner commits a task in a
repository, so its base tree and index are cached, then works three more tasks of that
repository at once, each cut by its one-second limit while its heartbeat beats every
50 ms: every one of them must end in AgentFailed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aether_agent_runner.adapters import git as runner_git
from aether_events import AgentCompleted, AgentFailed, AgentHeartbeat
from aether_llm import Reply, text_block

CUT = ("t2", "t3", "t4")


def _slow(request: dict[str, Any]) -> Reply:
    return Reply([text_block("…")], "end_turn", 1, 1, delay_seconds=30)


async def test_attempts_cut_by_their_wall_time_are_reported_with_the_caches_warm(
    task_repo: Any,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    others = {task: make_repo(task_repo.root, task) for task in CUT}
    turns = {
        "t1": [reply(tool("write_file", path="notes.txt", content="first\n")), finish()],
        **{task: [_slow] for task in CUT},
    }
    await start_runner(model(turns), max_seconds=1.0, heartbeat_seconds=0.05, concurrency=len(CUT))

    await publish(workspace_ready(task_repo, mission_id))
    completed = await events.first(AgentCompleted)
    assert completed.task_id == "t1"
    base_tree = task_repo.git_dir.store()[task_repo.base_sha.encode()].tree
    assert base_tree in runner_git._TREES  # what the next attempts read is cached

    for task, repo in others.items():
        await publish(workspace_ready(repo, mission_id, task))
    await events.wait_for(lambda log: len(log.of(AgentFailed)) == len(CUT))

    failed = {event.task_id: event for event in events.of(AgentFailed)}
    assert sorted(failed) == sorted(CUT)
    for event in failed.values():
        assert event.reason.startswith("wall-time limit reached"), event.reason
        assert event.retryable is False
    assert [e.task_id for e in events.of(AgentCompleted)] == ["t1"]
    assert {e.task_id for e in events.of(AgentHeartbeat)} >= set(CUT)
