"""Rebuilding the read model from the streams gives the answers the live one gave."""

from __future__ import annotations

import psycopg

from aether_events import (
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    BudgetWarning,
    EventPublisher,
    PlanClarificationRequested,
    TaskEscalated,
    WaveStarted,
    new_mission_id,
)

from .conftest import Script, eventually


async def snapshot(http, mission_ids):
    """Every query's answer, as a client would see it."""
    paths = ["/missions", "/tasks", "/events?limit=1000", "/usage", "/usage?group_by=mission"]
    paths += ["/usage?group_by=model", "/usage?group_by=month"]
    for mission_id in mission_ids:
        paths += [f"/missions/{mission_id}", f"/missions/{mission_id}/usage"]
        paths += [f"/missions/{mission_id}/tasks/t1"]
    answers = {}
    for path in paths:
        response = await http.get(path)
        assert response.status_code == 200, (path, response.text)
        answers[path] = response.json()
    agents = (await http.get("/agents")).json()["agents"]
    # Whether a runner counts as active depends on the clock, not on the read model.
    answers["/agents"] = [{k: v for k, v in a.items() if k != "status"} for a in agents]
    return answers


async def test_a_rebuilt_read_model_answers_as_the_live_one_did(http, nc, gateway_server):
    publisher = EventPublisher(nc.jetstream())
    done, busy = Script(new_mission_id()), Script(new_mission_id())
    await publisher.publish_all(done.happy_path())
    await publisher.publish_all(
        [
            busy.requested(budget_usd=1.0),
            busy.prepared(),
            PlanClarificationRequested(**busy.meta(), questions=["Why?"]),
        ]
    )
    await eventually(lambda: _status(http, busy.mission_id, "awaiting_input"), what="the question")
    assert await http.post(f"/missions/{busy.mission_id}/messages", json={"text": "Because"})
    await publisher.publish_all(
        [
            busy.plan(task_ids=("t1", "t2")),
            busy.approved(),
            WaveStarted(**busy.meta(), wave=1, task_ids=["t1"]),
            busy.task_ready("t1"),
            AgentStarted(**busy.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),
            busy.usage(0.5),
            BudgetWarning(**busy.meta(), spent_usd=0.8, budget_usd=1.0),
            TaskEscalated(**busy.meta(), task_id="t1", attempt=1, reason="stuck"),
            AgentHeartbeat(**busy.meta(), task_id="t1", attempt=1, runner_id="r-1"),
            AgentProgress(
                **busy.meta(), task_id="t1", attempt=1, runner_id="r-1", turns=5, last_action="x"
            ),
        ]
    )
    await eventually(lambda: _status(http, done.mission_id, "completed"), what="done")
    assert (await http.post(f"/missions/{busy.mission_id}/pause")).status_code == 202
    assert await http.post(f"/missions/{busy.mission_id}/budget", json={"budget_usd": 3})

    async def settled():
        mission = (await http.get(f"/missions/{busy.mission_id}")).json()
        agent = (mission["tasks"] or [{}])[0].get("agent") or {}
        return (
            mission["status"] == "paused" and mission["budget_usd"] == 3 and agent.get("turns") == 5
        )

    await eventually(settled, what="every event to be folded")
    live = await snapshot(http, [done.mission_id, busy.mission_id])

    # Damage the read model, then rebuild it from the streams.
    async with await psycopg.AsyncConnection.connect(gateway_server.settings.database_url) as db:
        await db.execute("DELETE FROM tasks")
        await db.execute("UPDATE missions SET status = 'failed'")
        await db.commit()
    assert (await http.get(f"/missions/{done.mission_id}")).json()["status"] == "failed"

    response = await http.post("/admin/read-model/rebuild")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["missions_sequence"] == live["/events?limit=1000"]["events"][-1]["seq"]
    assert result["telemetry_sequence"] == 2
    assert result["events_folded"] == len(live["/events?limit=1000"]["events"]) + 2
    assert await snapshot(http, [done.mission_id, busy.mission_id]) == live

    # The live projection carries on after the rebuild, without folding anything twice.
    assert (await http.post(f"/missions/{busy.mission_id}/resume")).status_code == 202
    await eventually(lambda: _status(http, busy.mission_id, "running"), what="the resume")
    count = len((await http.get("/events?limit=1000")).json()["events"])
    assert count == len(live["/events?limit=1000"]["events"]) + 1


async def test_rebuilding_needs_the_admin_scope(http, gateway_server):
    token = await http.post("/admin/tokens", json={"name": "w", "scopes": ["write"]})
    async with gateway_server.client(token=token.json()["token"]) as writer:
        assert (await writer.post("/admin/read-model/rebuild")).status_code == 403


async def _status(http, mission_id, status):
    response = await http.get(f"/missions/{mission_id}")
    return response.status_code == 200 and response.json()["status"] == status
