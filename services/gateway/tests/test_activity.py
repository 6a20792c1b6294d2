"""GET /missions/{id}/activity: each attempt's start, progress reports and end, in order."""

from __future__ import annotations

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentProgress,
    AgentStarted,
    EventPublisher,
    MergeConflicted,
)

from .conftest import Script, eventually


async def publish(nc, *events):
    return await EventPublisher(nc.jetstream()).publish_all(events)


def progress(script: Script, task_id: str, attempt: int, turns: int, action: str):
    return AgentProgress(
        **script.meta(),
        task_id=task_id,
        attempt=attempt,
        runner_id="r-1",
        turns=turns,
        tool_calls=turns,
        last_action=action,
    )


async def test_activity_lists_starts_progress_and_ends_in_order_per_task(http, nc, script):
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await publish(
        nc,
        script.task_ready("t1"),
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),
        progress(script, "t1", 1, 1, "read_file src/t1.py"),
        AgentStarted(**script.meta(), task_id="t2", attempt=1, runner_id="r-2", model="m"),
        progress(script, "t1", 1, 2, "run_command pytest -q"),
        progress(script, "t2", 1, 1, "write_file src/t2.py"),
        AgentFailed(**script.meta(), task_id="t2", attempt=1, reason="the model stopped"),
        AgentCompleted(**script.meta(), task_id="t1", attempt=1, commit_sha="c" * 40, branch="b"),
        # Completed, then not merged: the refusal is part of the attempt's story.
        MergeConflicted(
            **script.meta(),
            task_id="t1",
            attempt=1,
            files=[],
            integration_sha="a" * 40,
            detail="verification failed: `pytest -q` exited with 1 after 0.2s",
            refusal="verification_failed",
        ),
    )
    path = f"/missions/{script.mission_id}/activity"

    async def complete():
        answer = (await http.get(path)).json()
        return answer if len(answer["entries"]) == 8 else None

    everything = await eventually(complete, what="the activity of both tasks")
    assert [(e["task_id"], e["type"]) for e in everything["entries"]] == [
        ("t1", "agent_started"),
        ("t1", "agent_progress"),
        ("t2", "agent_started"),
        ("t1", "agent_progress"),
        ("t2", "agent_progress"),
        ("t2", "agent_failed"),
        ("t1", "agent_completed"),
        ("t1", "merge_conflicted"),
    ]
    assert everything["position"] > 0

    one = (await http.get(path, params={"task_id": "t1"})).json()["entries"]
    assert [e["data"].get("last_action") for e in one] == [
        None,
        "read_file src/t1.py",
        "run_command pytest -q",
        None,
        None,
    ]
    assert one[-2]["data"]["commit_sha"] == "c" * 40
    assert one[-1]["data"]["refusal"] == "verification_failed"
    assert (await http.get(path, params={"task_id": "t1", "attempt": 2})).json()["entries"] == []


async def test_activity_of_an_unknown_mission_is_404(http):
    response = await http.get("/missions/m-nothing-here/activity")
    assert response.status_code == 404
