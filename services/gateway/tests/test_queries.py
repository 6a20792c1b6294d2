"""Queries: filters, cursor pagination, the mission view, tasks, agents, events, usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from aether.render import mission_detail
from aether_events import (
    AgentCompleted,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    BudgetExceeded,
    EventPublisher,
    MissionMessagePosted,
    PlanClarificationRequested,
    Usage,
    UsageRecorded,
    WaveStarted,
    WorkspaceReady,
    new_mission_id,
)

from .conftest import T0, Script, eventually


async def publish(nc, *events):
    return await EventPublisher(nc.jetstream()).publish_all(events)


async def settled(http, mission_id, predicate=lambda m: True):
    async def probe():
        response = await http.get(f"/missions/{mission_id}")
        if response.status_code == 200 and predicate(response.json()):
            return response.json()
        return None

    return await eventually(probe, what=f"mission {mission_id}")


async def pages(http, path, key, **params):
    """Every item of a paginated list, following ``next_cursor``."""
    items, cursor, count = [], None, 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body[key])
        count += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, count


# --- missions ----------------------------------------------------------------------------


async def test_missions_page_by_cursor_without_gaps_or_repeats(http, nc):
    scripts = [Script(new_mission_id(), start=T0 + timedelta(minutes=i)) for i in range(7)]
    await publish(nc, *(s.requested() for s in scripts))
    await settled(http, scripts[-1].mission_id)
    await settled(http, scripts[0].mission_id)
    seen, count = await pages(http, "/missions", "missions", limit=3)
    assert count == 3
    assert [m["id"] for m in seen] == [s.mission_id for s in reversed(scripts)]

    # A mission arriving between pages is not shown twice and does not shift the pages.
    first = (await http.get("/missions", params={"limit": 3})).json()
    late = Script(new_mission_id(), start=T0 + timedelta(hours=1))
    await publish(nc, late.requested())
    await settled(http, late.mission_id)
    second = await http.get("/missions", params={"limit": 3, "cursor": first["next_cursor"]})
    assert [m["id"] for m in second.json()["missions"]] == [
        s.mission_id for s in reversed(scripts[1:4])
    ]


async def test_missions_filter_by_status_repository_and_date(http, nc):
    a = Script(new_mission_id(), start=T0)
    b = Script(new_mission_id(), start=T0 + timedelta(days=2))
    c = Script(new_mission_id(), start=T0 + timedelta(days=4))
    await publish(
        nc,
        a.requested(repository="/repos/one"),
        b.requested(repository="/repos/two"),
        b.prepared(),
        c.requested(repository="/repos/one"),
        *c.happy_path()[1:],
    )
    await settled(http, c.mission_id, lambda m: m["status"] == "completed")
    await settled(http, b.mission_id, lambda m: m["status"] == "preparing")

    async def ids(**params):
        response = await http.get("/missions", params=params)
        assert response.status_code == 200, response.text
        return [m["id"] for m in response.json()["missions"]]

    assert await ids(repository="/repos/one") == [c.mission_id, a.mission_id]
    assert await ids(status="requested") == [a.mission_id]
    assert await ids(status=["requested", "completed"]) == [c.mission_id, a.mission_id]
    assert await ids(status="requested,preparing") == [b.mission_id, a.mission_id]
    day = (T0 + timedelta(days=2)).date().isoformat()
    assert await ids(since=day) == [c.mission_id, b.mission_id]
    assert await ids(until=day) == [a.mission_id]
    assert await ids(since=(T0 + timedelta(days=1)).isoformat(), until=day + "T23:59:59Z") == [
        b.mission_id
    ]


async def test_mission_queries_are_validated(http):
    # One gateway for every case: a query only reads, and a gateway of its own for each
    # was nearly all of their time.
    for params, mentions in [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"status": "sleeping"}, "sleeping"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4Il0"}, "cursor"),
    ]:
        response = await http.get("/missions", params=params)
        assert response.status_code == 400, (params, response.text)
        assert mentions in response.json()["error"], (params, response.text)


async def test_a_mission_shows_its_graph_messages_budget_and_agents(http, nc, script):
    seq = await publish(
        nc,
        script.requested(budget_usd=1.0),
        script.prepared(),
        PlanClarificationRequested(**script.meta(), questions=["Which language?"]),
        MissionMessagePosted(**script.meta(), text="Python", author="alice"),
        script.plan(task_ids=("t1", "t2", "t3")),
        script.approved(),
        WaveStarted(**script.meta(), wave=1, task_ids=["t1"]),
        script.task_ready("t1", wave=1),
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),
        UsageRecorded(
            **script.meta(),
            service="agent-runner",
            model="claude-test",
            usage=Usage(input_tokens=100, output_tokens=10, cost_usd=0.25),
            step="agent",
            task_id="t1",
            attempt=1,
        ),
    )
    await publish(
        nc,
        AgentProgress(
            **script.meta(),
            task_id="t1",
            attempt=1,
            runner_id="r-1",
            turns=3,
            tool_calls=2,
            last_action="write_file src/t1.py",
        ),
    )
    assert seq
    mission = await settled(
        http,
        script.mission_id,
        # Telemetry is folded by its own consumer: wait for both streams.
        lambda m: (
            m["cost_usd"] == 0.25
            and m["tasks"]
            and (m["tasks"][0].get("agent") or {}).get("turns") == 3
        ),
    )
    assert mission["status"] == "running"
    assert mission["current_wave"] == 1
    assert mission["cost_usd"] == 0.25
    assert mission["budget_remaining_usd"] == 0.75
    assert mission["url"].endswith(f"/missions/{script.mission_id}")
    # The fixture plan makes t2 and t3 depend on t1.
    assert mission["graph"] == {
        "nodes": ["t1", "t2", "t3"],
        "edges": [{"source": "t1", "target": "t2"}, {"source": "t1", "target": "t3"}],
        "layers": [["t1"], ["t2", "t3"]],
    }
    assert [(m["kind"], m["author"]) for m in mission["messages"]] == [
        ("question", "planner"),
        ("message", "alice"),
    ]
    t1 = mission["tasks"][0]
    assert t1["status"] == "running"
    assert t1["wave"] == 1
    assert t1["runner_id"] == "r-1"
    assert t1["cost_usd"] == 0.25
    assert t1["agent"]["last_action"] == "write_file src/t1.py"
    assert t1["agent"]["cost_usd"] == 0.25
    assert mission["tasks"][1]["agent"] is None


async def test_an_attempt_too_short_for_a_progress_report_is_counted_by_its_result(
    http, nc, script
):
    # Progress is reported every few seconds: an attempt that ends sooner reports none,
    # and its result counts its turns and tool calls. A report that arrives after the
    # result (another stream), with fewer, does not take them back.
    result = msgspec.structs.replace(script.agent_completed("t1"), turns=3, tool_calls=2)
    await publish(
        nc,
        script.requested(),
        script.prepared(),
        script.plan(task_ids=("t1",)),
        script.approved(),
        script.task_ready("t1"),
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),
        result,
    )
    await publish(
        nc,
        AgentProgress(
            **script.meta(),
            task_id="t1",
            attempt=1,
            runner_id="r-1",
            turns=1,
            tool_calls=1,
            last_action="late",
        ),
    )

    def agent(m: dict[str, Any]) -> dict[str, Any]:
        return (m["tasks"][0].get("agent") or {}) if m["tasks"] else {}

    # Both streams folded: the report's last action is shown, the result's counts kept.
    mission = await settled(
        http, script.mission_id, lambda m: agent(m).get("last_action") == "late"
    )
    assert (agent(mission)["turns"], agent(mission)["tool_calls"]) == (3, 2)


# --- tasks -------------------------------------------------------------------------------


async def test_tasks_filter_and_page(http, nc):
    a, b = Script(new_mission_id()), Script(new_mission_id(), start=T0 + timedelta(hours=1))
    await publish(
        nc,
        *a.happy_path(),
        b.requested(),
        b.prepared(),
        b.plan(task_ids=("x1", "x2", "x3")),
        b.approved(),
        b.task_ready("x1"),
    )
    await settled(http, a.mission_id, lambda m: m["status"] == "completed")
    await settled(http, b.mission_id, lambda m: m["tasks"] and m["tasks"][0]["status"] == "ready")

    everything, count = await pages(http, "/tasks", "tasks", limit=2)
    assert count == 2
    assert sorted((t["mission_id"], t["task_id"]) for t in everything) == sorted(
        [(a.mission_id, "t1"), (b.mission_id, "x1"), (b.mission_id, "x2"), (b.mission_id, "x3")]
    )
    assert len({(t["mission_id"], t["task_id"]) for t in everything}) == 4
    merged = (await http.get("/tasks", params={"status": "merged"})).json()["tasks"]
    assert [(t["mission_id"], t["task_id"]) for t in merged] == [(a.mission_id, "t1")]
    of_b = await http.get("/tasks", params={"mission_id": b.mission_id, "status": "pending"})
    assert sorted(t["task_id"] for t in of_b.json()["tasks"]) == ["x2", "x3"]
    assert (await http.get("/tasks", params={"status": "lost"})).status_code == 400

    detail = (await http.get(f"/missions/{a.mission_id}/tasks/t1")).json()
    assert detail["status"] == "merged"
    assert [(s["attempt"], s["status"]) for s in detail["sessions"]] == [(1, "completed")]
    assert detail["agent"]["status"] == "completed"
    missing = await http.get(f"/missions/{a.mission_id}/tasks/t9")
    assert missing.status_code == 404
    assert missing.json()["error"] == f"task 't9' of mission '{a.mission_id}' not found"


async def test_a_task_shows_the_files_it_changed_outside_its_scope(http, nc, script):
    await publish(
        nc,
        script.requested(),
        script.prepared(),
        script.plan(task_ids=("t1",)),
        script.approved(),
        script.task_ready("t1"),
        AgentCompleted(
            **script.meta(),
            task_id="t1",
            attempt=1,
            commit_sha="c" * 40,
            branch="b",
            files_changed=["LICENSE.txt", "src/t1.py"],
            files_outside_scope=["LICENSE.txt"],
        ),
    )
    mission = await settled(
        http, script.mission_id, lambda m: m["tasks"] and m["tasks"][0]["status"] == "completed"
    )
    assert mission["tasks"][0]["files_outside_scope"] == ["LICENSE.txt"]
    task = (await http.get(f"/missions/{script.mission_id}/tasks/t1")).json()
    assert task["files_outside_scope"] == ["LICENSE.txt"]
    assert "outside scope: LICENSE.txt" in mission_detail(mission)


# --- agents ------------------------------------------------------------------------------


async def test_agents_show_what_each_runner_is_doing(http, nc, script):
    now = datetime.now(UTC)
    script._now = now - timedelta(seconds=30)
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await publish(
        nc,
        script.task_ready("t1"),
        AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="runner-a", model="m"),
        AgentHeartbeat(**script.meta(), task_id="t1", attempt=1, runner_id="runner-a"),
        AgentProgress(
            **script.meta(),
            task_id="t1",
            attempt=1,
            runner_id="runner-a",
            turns=2,
            last_action="read_file README.md",
        ),
    )

    async def active():
        agents = (await http.get("/agents")).json()["agents"]
        if agents and agents[0]["running"] and agents[0]["running"][0]["turns"] == 2:
            return agents
        return None

    [runner] = await eventually(active, what="the runner to show up")
    assert runner["runner_id"] == "runner-a"
    assert runner["status"] == "active"
    [session] = runner["running"]
    assert (session["mission_id"], session["task_id"], session["attempt"]) == (
        script.mission_id,
        "t1",
        1,
    )
    assert session["last_action"] == "read_file README.md"

    await publish(
        nc,
        AgentCompleted(**script.meta(), task_id="t1", attempt=1, commit_sha="c" * 40, branch="b"),
    )

    async def idle():
        agents = (await http.get("/agents", params={"status": "idle"})).json()["agents"]
        return agents or None

    [runner] = await eventually(idle, what="the runner to be idle")
    assert runner["running"] == []
    assert runner["completed"] == 1
    assert (await http.get("/agents", params={"status": "active"})).json()["agents"] == []
    assert (await http.get("/agents", params={"mission_id": "m-other"})).json()["agents"] == []
    assert (await http.get("/agents", params={"status": "asleep"})).status_code == 400


# --- events ------------------------------------------------------------------------------


async def test_events_filter_by_mission_type_task_and_sequence(http, nc, script):
    other = Script(new_mission_id())
    acks = await publish(nc, *script.happy_path(), other.requested())
    await settled(http, other.mission_id)
    seqs = [a.seq for a in acks]

    everything = (await http.get("/events")).json()
    assert [e["seq"] for e in everything["events"]] == seqs
    assert everything["next_after"] is None

    mine = (await http.get("/events", params={"mission_id": script.mission_id})).json()
    assert [e["seq"] for e in mine["events"]] == seqs[:-1]
    assert mine["events"][0]["data"]["type"] == "mission_requested"
    assert mine["events"][0]["type"] == "mission_requested"

    typed = await http.get("/events", params={"type": ["task_ready", "branch_merged"]})
    assert [e["type"] for e in typed.json()["events"]] == ["task_ready", "branch_merged"]
    of_task = (await http.get("/events", params={"task_id": "t1"})).json()["events"]
    assert [e["type"] for e in of_task] == ["task_ready", "agent_completed", "branch_merged"]

    page = (await http.get("/events", params={"after": seqs[2], "limit": 3})).json()
    assert [e["seq"] for e in page["events"]] == seqs[3:6]
    assert page["next_after"] == seqs[5]
    rest = (await http.get("/events", params={"after": page["next_after"]})).json()
    assert [e["seq"] for e in rest["events"]] == seqs[6:]

    assert (await http.get("/events", params={"type": "nonsense"})).status_code == 400
    assert (await http.get("/events", params={"after": -1})).status_code == 400
    assert (await http.get("/events", params={"limit": 1001})).status_code == 400


# --- usage -------------------------------------------------------------------------------


def usage_event(script, cost, tokens=100, model="claude-test", task_id=None):
    return UsageRecorded(
        **script.meta(),
        service="agent-runner" if task_id else "planner",
        model=model,
        usage=Usage(input_tokens=tokens, output_tokens=tokens // 10, cost_usd=cost),
        step="agent" if task_id else "plan",
        task_id=task_id,
        attempt=1 if task_id else None,
    )


async def test_usage_per_day_month_mission_and_model_with_budgets(make_gateway, nc):
    server = await make_gateway(daily_budget_usd=1.0, monthly_budget_usd=10.0)
    a = Script(new_mission_id(), start=T0)
    b = Script(new_mission_id(), start=T0 + timedelta(days=1))
    await publish(
        nc,
        a.requested(budget_usd=2.0),
        usage_event(a, 0.5, model="claude-big"),
        usage_event(a, 0.25),
        b.requested(),
        usage_event(b, 0.75),
        usage_event(b, None, model="mystery"),
        BudgetExceeded(**b.meta(), spent_usd=1.5, budget_usd=1.0, scope="daily:2026-01-02"),
    )
    async with server.client() as http:
        await settled(http, b.mission_id, lambda m: m["tokens_in"] == 200)

        daily = (await http.get("/usage")).json()
        assert daily["group_by"] == "day"
        assert [(r["key"], r["cost_usd"], r["cost_complete"]) for r in daily["rows"]] == [
            ("2026-01-01", 0.75, True),
            ("2026-01-02", 0.75, False),
        ]
        assert [r["budget_usd"] for r in daily["rows"]] == [1.0, 1.0]
        assert [r["budget_exceeded"] for r in daily["rows"]] == [False, True]
        assert daily["total"]["cost_usd"] == 1.5
        assert daily["total"]["calls"] == 4
        assert daily["total"]["cost_complete"] is False

        monthly = (await http.get("/usage", params={"group_by": "month"})).json()
        assert [(r["key"], r["calls"], r["budget_usd"]) for r in monthly["rows"]] == [
            ("2026-01", 4, 10.0)
        ]
        per_mission = (await http.get("/usage", params={"group_by": "mission"})).json()["rows"]
        assert {r["key"]: (r["cost_usd"], r["budget_usd"]) for r in per_mission} == {
            a.mission_id: (0.75, 2.0),
            b.mission_id: (0.75, None),
        }
        per_model = (await http.get("/usage", params={"group_by": "model"})).json()["rows"]
        assert {r["key"]: r["cost_usd"] for r in per_model} == {
            "claude-big": 0.5,
            "claude-test": 1.0,
            "mystery": None,
        }
        one_day = await http.get("/usage", params={"since": "2026-01-02"})
        assert [r["key"] for r in one_day.json()["rows"]] == ["2026-01-02"]

        mission = (await http.get(f"/missions/{a.mission_id}/usage")).json()
        assert mission["budget_usd"] == 2.0
        assert mission["spent_usd"] == 0.75
        assert mission["remaining_usd"] == 1.25
        assert mission["total"]["input_tokens"] == 200
        assert [r["key"] for r in mission["by_model"]] == ["claude-big", "claude-test"]
        assert [r["key"] for r in mission["by_day"]] == ["2026-01-01"]

        assert (await http.get("/usage", params={"group_by": "week"})).status_code == 400
        assert (await http.get("/usage", params={"since": "soon"})).status_code == 400
        assert (await http.get("/missions/m-none/usage")).status_code == 404


async def test_an_attempts_push_token_is_never_stored_or_served(http, nc, script):
    ready = script.task_ready("t1")
    workspace = WorkspaceReady(
        **script.meta(),
        task=ready.task,
        attempt=1,
        model="claude-test",
        branch="aether-tasks/m/t1/a1",
        worktree_path="/wt/t1-a1",
        base_sha="a" * 40,
        push_token="eyJ0b2tlbiI.d0n7-l34k-m3",
    )
    await publish(nc, script.requested(), script.prepared(), ready, workspace)

    async def shown():
        events = (await http.get("/events", params={"type": "workspace_ready"})).json()
        return events["events"] or None

    [event] = await eventually(shown, what="the workspace_ready event")
    assert event["data"]["push_token"] == ""
    assert event["data"]["branch"] == "aether-tasks/m/t1/a1"
    # The live stream (the hub's ring, or the read model) shows the same.
    async with http.stream("GET", f"/missions/{script.mission_id}/events") as stream:
        async for line in stream.aiter_lines():
            assert "d0n7-l34k-m3" not in line
            if line.startswith("data:") and '"workspace_ready"' in line:
                break
