"""Commands: each publishes its event once, answers 202 with the mission's URL, and
refuses what the mission's state does not allow with a message."""

from __future__ import annotations

import pytest

from aether_events import (
    BranchPushed,
    BranchPushFailed,
    BudgetRaised,
    DeliveryRetryRequested,
    EventPublisher,
    MissionCancelled,
    MissionMessagePosted,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanClarificationRequested,
    PlanRevisionRequested,
    TaskEscalated,
    TaskRetryRequested,
    TaskSkipped,
)
from aether_gateway.config import GatewaySettings
from aether_runtime.settings import SettingsError

from .conftest import Script, eventually, stored_events

MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}


async def publish(nc, *events):
    await EventPublisher(nc.jetstream()).publish_all(events)


async def wait_for(http, mission_id, predicate, what="the mission"):
    async def probe():
        response = await http.get(f"/missions/{mission_id}")
        if response.status_code == 200 and predicate(response.json()):
            return response.json()
        return None

    return await eventually(probe, what=what)


async def events_of(nc, mission_id, cls):
    return [e for e in await stored_events(nc, mission_id) if isinstance(e, cls)]


def assert_accepted(response, gateway_server, mission_id):
    assert response.status_code == 202, response.text
    body = response.json()
    url = f"{gateway_server.settings.base_url}/missions/{mission_id}"
    assert body["mission_id"] == mission_id
    assert body["url"] == url
    assert response.headers["location"] == url
    return body


async def running_mission(nc, http, script: Script, *, escalate: str | None = None):
    events = [
        script.requested(budget_usd=2.0),
        script.prepared(),
        script.plan(),
        script.approved(),
    ]
    if escalate:
        events += [
            script.task_ready(escalate),
            TaskEscalated(**script.meta(), task_id=escalate, attempt=1, reason="failed 3 times"),
        ]
    await publish(nc, *events)
    return await wait_for(
        http,
        script.mission_id,
        lambda m: (
            m["status"] == "running"
            and (escalate is None or any(t["status"] == "escalated" for t in m["tasks"]))
        ),
    )


# --- creating missions -------------------------------------------------------------------


async def test_a_mission_names_its_agent_runtime_and_a_per_tier_override(http, nc):
    body = {**MISSION, "runtime": "claude-code", "runtime_overrides": {"small": "builtin"}}
    created = await http.post("/missions", json=body)
    assert created.status_code == 202, created.text
    [requested] = await events_of(nc, created.json()["mission_id"], MissionRequested)
    assert requested.runtime == "claude-code"
    assert requested.runtime_overrides == {"small": "builtin"}
    refused = await http.post("/missions", json={**MISSION, "runtime": "../bin/sh"})
    assert refused.status_code == 400, refused.text


async def test_a_repeated_post_with_an_idempotency_key_creates_one_mission(
    http, nc, gateway_server
):
    headers = {"Idempotency-Key": "4f1c2b4e-create-once"}
    first = await http.post("/missions", json=MISSION, headers=headers)
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = await http.post("/missions", json=MISSION, headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    mission_id = first.json()["mission_id"]
    assert len(await events_of(nc, mission_id, MissionRequested)) == 1

    different = await http.post(
        "/missions", json={**MISSION, "requirement": "Something else"}, headers=headers
    )
    assert different.status_code == 422
    assert "different request" in different.json()["error"]

    # Keys belong to their caller: another caller's same key is another mission.
    token = await http.post("/admin/tokens", json={"name": "other", "scopes": ["write"]})
    async with gateway_server.client(token=token.json()["token"]) as other:
        theirs = await other.post("/missions", json=MISSION, headers=headers)
    assert theirs.status_code == 202
    assert theirs.json()["mission_id"] != mission_id

    without_key = [(await http.post("/missions", json=MISSION)).json()["mission_id"] for _ in "ab"]
    assert without_key[0] != without_key[1]


async def test_two_racing_requests_with_one_key_still_make_one_mission(http, nc):
    import asyncio

    headers = {"Idempotency-Key": "racing"}
    answers = await asyncio.gather(
        *(http.post("/missions", json=MISSION, headers=headers) for _ in range(5))
    )
    ids = {a.json()["mission_id"] for a in answers}
    assert [a.status_code for a in answers] == [202] * 5
    assert len(ids) == 1
    assert len(await events_of(nc, ids.pop(), MissionRequested)) == 1


async def test_an_invalid_idempotency_key_is_refused(http):
    # One gateway for every key: a refusal changes nothing, and a gateway of its own
    # for each was nearly all of their time.
    for key in ["", "a" * 256, "with space", "naïve".encode("latin-1")]:
        response = await http.post("/missions", json=MISSION, headers={"Idempotency-Key": key})
        assert response.status_code == 400, key


async def test_mission_creation_is_rate_limited_per_caller(make_gateway):
    server = await make_gateway(mission_rate_limit=2, mission_rate_window_seconds=3600)
    async with server.client() as c:
        assert (await c.post("/missions", json=MISSION)).status_code == 202
        assert (await c.post("/missions", json=MISSION)).status_code == 202
        limited = await c.post("/missions", json=MISSION)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) > 0
        assert "at most 2 missions" in limited.json()["error"]
        # Reading is not limited, nor is a replay of an earlier request.
        assert (await c.get("/missions")).status_code == 200
        other = await c.post("/admin/tokens", json={"name": "other", "scopes": ["write"]})
    # Per caller: another token has a window of its own.
    async with server.client(token=other.json()["token"]) as c:
        assert (await c.post("/missions", json=MISSION)).status_code == 202


async def test_every_other_write_request_is_rate_limited_per_caller(make_gateway, nc, script):
    """Commands (and tokens, rebuilds) have a per-caller limit of their own: past it a
    429 with Retry-After, nothing published; a replay of an earlier request is answered
    without counting; mission requests and reads are not counted against it."""
    server = await make_gateway(command_rate_limit=3, command_rate_window_seconds=3600)
    question = PlanClarificationRequested(**script.meta(), questions=["Which greeting?"])
    await publish(nc, script.requested(), script.prepared(), question)
    url = f"/missions/{script.mission_id}/messages"
    async with server.client() as admin:
        await wait_for(admin, script.mission_id, lambda m: m["status"] == "awaiting_input")
        writer = await admin.post("/admin/tokens", json={"name": "writer", "scopes": ["write"]})
        assert writer.status_code == 201  # the admin's first write request of three
    async with server.client(token=writer.json()["token"]) as c:
        first = {"Idempotency-Key": "first-message"}
        assert (await c.post(url, json={"text": "one"}, headers=first)).status_code == 202
        replayed = await c.post(url, json={"text": "one"}, headers=first)
        assert replayed.headers["idempotent-replayed"] == "true"  # not counted
        assert (await c.post(url, json={"text": "two"})).status_code == 202
        assert (await c.post(url, json={"text": "three"})).status_code == 202
        limited = await c.post(url, json={"text": "four"})
        assert limited.status_code == 429, limited.text
        assert 0 < int(limited.headers["retry-after"]) <= 3600
        assert "at most 3 write requests per 3600 seconds" in limited.json()["error"]
        assert (await c.post(f"/missions/{script.mission_id}/pause")).status_code == 429
        # A replay is still answered past the limit; reads and mission requests go on.
        again = await c.post(url, json={"text": "one"}, headers=first)
        assert (again.status_code, again.headers["idempotent-replayed"]) == (202, "true")
        assert (await c.get(f"/missions/{script.mission_id}")).status_code == 200
        assert (await c.post("/missions", json=MISSION)).status_code == 202
    texts = [e.text for e in await events_of(nc, script.mission_id, MissionMessagePosted)]
    assert sorted(texts) == ["one", "three", "two"]
    assert not await events_of(nc, script.mission_id, MissionPaused)
    # Per caller: the admin has its own window, and token creation counts in it.
    async with server.client() as admin:
        assert (await admin.post(url, json={"text": "from the admin"})).status_code == 202
        assert (
            await admin.post("/admin/tokens", json={"name": "x", "scopes": ["read"]})
        ).status_code == 201
        refused = await admin.post("/admin/tokens", json={"name": "y", "scopes": ["read"]})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("AETHER_COMMAND_RATE_LIMIT", "-1"), ("AETHER_COMMAND_RATE_WINDOW_SECONDS", "0")],
)
def test_a_bad_command_rate_setting_stops_the_gateway_naming_it(name, value):
    assert GatewaySettings.from_env({name: "7"}) is not None
    with pytest.raises(SettingsError, match=name):
        GatewaySettings.from_env({name: value})


async def test_a_mission_request_records_every_option(http, nc):
    body = {
        **MISSION,
        "base_branch": "develop",
        "budget_usd": 3.5,
        "auto_approve": True,
        "max_concurrency": 2,
        "max_tasks": 7,
        "model_overrides": {"small": "claude-tiny"},
        "verify_command": "pytest -q",
    }
    mission_id = (await http.post("/missions", json=body)).json()["mission_id"]
    shown = await wait_for(http, mission_id, lambda m: True)
    for key, value in body.items():
        assert shown[key] == value, key
    assert shown["requested_by"] == "bootstrap-admin"


# --- messages ----------------------------------------------------------------------------


async def test_answers_to_the_planners_questions_are_posted(http, nc, script, gateway_server):
    question = PlanClarificationRequested(
        **script.meta(), questions=["Which greeting?", "Any language?"]
    )
    await publish(nc, script.requested(), script.prepared(), question)
    await wait_for(http, script.mission_id, lambda m: m["status"] == "awaiting_input")

    response = await http.post(
        f"/missions/{script.mission_id}/messages", json={"text": "Hello, in English"}
    )
    body = assert_accepted(response, gateway_server, script.mission_id)
    assert body["revision_requested"] is False
    [posted] = await events_of(nc, script.mission_id, MissionMessagePosted)
    assert posted.text == "Hello, in English"
    assert posted.author == "bootstrap-admin"
    assert posted.event_id == body["event_id"]
    assert not await events_of(nc, script.mission_id, PlanRevisionRequested)

    shown = await wait_for(http, script.mission_id, lambda m: m["status"] == "preparing")
    assert shown["questions"] == []
    assert [(m["kind"], m["text"]) for m in shown["messages"]] == [
        ("question", "Which greeting?\nAny language?"),
        ("message", "Hello, in English"),
    ]


async def test_feedback_on_a_plan_awaiting_approval_asks_for_a_revision(
    http, nc, script, gateway_server
):
    await publish(nc, script.requested(), script.prepared(), script.plan(version=1))
    await wait_for(http, script.mission_id, lambda m: m["status"] == "awaiting_approval")
    url = f"/missions/{script.mission_id}/messages"
    body = assert_accepted(
        await http.post(url, json={"text": "Split t2 in two"}), gateway_server, script.mission_id
    )
    assert body["revision_requested"] is True
    [revision] = await events_of(nc, script.mission_id, PlanRevisionRequested)
    assert revision.feedback == "Split t2 in two"
    assert revision.base_version == 1
    assert revision.causation_id == body["event_id"]
    await wait_for(http, script.mission_id, lambda m: m["status"] == "preparing")


async def test_invalid_messages_are_refused(http, nc, script):
    # One gateway for every case: a refusal changes nothing, and a gateway of its own
    # for each was nearly all of their time.
    await publish(nc, script.requested())
    for body in [{}, {"text": ""}, {"text": "   "}, {"text": 5}, {"tex": "x"}]:
        response = await http.post(f"/missions/{script.mission_id}/messages", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"], body


async def test_commands_on_an_unknown_mission_are_404(http):
    for path, body in [
        ("/missions/m-nothere/messages", {"text": "hi"}),
        ("/missions/m-nothere/pause", None),
        ("/missions/m-nothere/resume", None),
        ("/missions/m-nothere/cancel", None),
        ("/missions/m-nothere/budget", {"budget_usd": 5}),
        ("/missions/m-nothere/tasks/t1/retry", None),
        ("/missions/m-nothere/tasks/t1/skip", None),
        ("/missions/m-nothere/plan/approve", None),
        ("/missions/m-nothere/delivery/retry", None),
    ]:
        response = await http.post(path, json=body)
        assert response.status_code == 404, path
        assert response.json()["error"] == "mission 'm-nothere' not found"


# --- pause, resume, cancel ----------------------------------------------------------------


async def test_pause_and_resume_each_publish_once_per_step(http, nc, script, gateway_server):
    await running_mission(nc, http, script)
    pause_url = f"/missions/{script.mission_id}/pause"
    first = assert_accepted(
        await http.post(pause_url, json={"reason": "lunch"}), gateway_server, script.mission_id
    )
    # A repeat before the pause is folded names the same step: one event is stored.
    second = await http.post(pause_url)
    if second.status_code == 202:
        assert second.json()["event_id"] == first["event_id"]
    else:
        assert second.status_code == 409
    await wait_for(http, script.mission_id, lambda m: m["status"] == "paused")
    again = await http.post(pause_url)
    assert again.status_code == 409
    assert again.json()["error"] == "the mission is already paused"
    [paused] = await events_of(nc, script.mission_id, MissionPaused)
    assert paused.reason == "lunch"
    assert paused.requested_by == "bootstrap-admin"

    resume_url = f"/missions/{script.mission_id}/resume"
    assert_accepted(await http.post(resume_url), gateway_server, script.mission_id)
    await wait_for(http, script.mission_id, lambda m: m["status"] == "running")
    not_paused = await http.post(resume_url)
    assert not_paused.status_code == 409
    assert not_paused.json()["error"] == "the mission is not paused"

    # A second pause is a new step, with a new id.
    assert_accepted(await http.post(pause_url), gateway_server, script.mission_id)
    pauses = await events_of(nc, script.mission_id, MissionPaused)
    assert len(pauses) == 2
    assert pauses[0].event_id != pauses[1].event_id
    assert len(await events_of(nc, script.mission_id, MissionResumed)) == 1


async def test_cancel_once_then_every_command_is_refused(http, nc, script, gateway_server):
    await running_mission(nc, http, script)
    url = f"/missions/{script.mission_id}"
    body = assert_accepted(
        await http.post(f"{url}/cancel", json={"reason": "wrong repo"}),
        gateway_server,
        script.mission_id,
    )
    await wait_for(http, script.mission_id, lambda m: m["status"] == "cancelled")
    [cancelled] = await events_of(nc, script.mission_id, MissionCancelled)
    assert cancelled.event_id == body["event_id"]
    assert cancelled.reason == "wrong repo"
    for path, payload in [
        ("/cancel", None),
        ("/pause", None),
        ("/messages", {"text": "hello?"}),
        ("/budget", {"budget_usd": 10}),
        ("/plan/approve", None),
    ]:
        response = await http.post(url + path, json=payload)
        assert response.status_code == 409, path
        assert response.json()["error"] == "the mission is cancelled"


async def test_pause_and_cancel_bodies_are_validated(http, nc, script):
    await publish(nc, script.requested())
    url = f"/missions/{script.mission_id}"
    assert (await http.post(f"{url}/pause", json={"reason": 5})).status_code == 400
    assert (await http.post(f"{url}/cancel", json={"why": "x"})).status_code == 400
    assert (await http.post(f"{url}/pause", json={"reason": "x" * 2001})).status_code == 400


# --- escalated tasks ---------------------------------------------------------------------


async def test_an_escalated_task_can_be_retried_once_per_attempt(http, nc, script, gateway_server):
    await running_mission(nc, http, script, escalate="t1")
    url = f"/missions/{script.mission_id}/tasks/t1/retry"
    body = assert_accepted(await http.post(url), gateway_server, script.mission_id)
    [retry] = await events_of(nc, script.mission_id, TaskRetryRequested)
    assert retry.task_id == "t1"
    assert retry.event_id == body["event_id"]
    shown = await wait_for(http, script.mission_id, lambda m: m["tasks"][0]["status"] == "pending")
    assert shown["tasks"][0]["error"] == "retry requested"
    refused = await http.post(url)
    assert refused.status_code == 409
    assert "only an escalated or failed task" in refused.json()["error"]


async def test_a_delivery_given_up_can_be_asked_for_again_once_per_failure(
    http, nc, script, gateway_server
):
    url = f"/missions/{script.mission_id}/delivery/retry"
    await running_mission(nc, http, script)
    refused = await http.post(url)
    assert refused.status_code == 409
    assert "only a completed mission's result is delivered" in refused.json()["error"]
    await publish(nc, script.completed())
    await wait_for(http, script.mission_id, lambda m: m["status"] == "completed")
    refused = await http.post(url)
    assert refused.status_code == 409 and "AETHER_PUSH_REMOTE" in refused.json()["error"]

    where = {"integration_branch": f"aether/{script.mission_id}", "sha": "e" * 40}
    await publish(nc, BranchPushFailed(**script.meta(), **where, remote="/r.git", reason="moved"))
    await wait_for(
        http, script.mission_id, lambda m: (m["delivery"] or {}).get("status") == "failed"
    )
    body = assert_accepted(await http.post(url), gateway_server, script.mission_id)
    shown = await wait_for(http, script.mission_id, lambda m: m["delivery"]["status"] == "retrying")
    assert shown["delivery"]["reason"] == "moved"  # the failure's, until the retry's end
    again = assert_accepted(await http.post(url), gateway_server, script.mission_id)
    assert again["event_id"] == body["event_id"]  # one retry per failure
    [retry] = await events_of(nc, script.mission_id, DeliveryRetryRequested)
    assert retry.event_id == body["event_id"] and retry.requested_by

    await publish(nc, BranchPushed(**script.meta(), **where, remote="/r.git"))
    await wait_for(http, script.mission_id, lambda m: m["delivery"]["status"] == "pushed")
    refused = await http.post(url)
    assert refused.status_code == 409 and "delivered to /r.git already" in refused.json()["error"]


async def test_an_escalated_task_can_be_skipped(http, nc, script, gateway_server):
    await running_mission(nc, http, script, escalate="t1")
    url = f"/missions/{script.mission_id}/tasks/t1/skip"
    assert_accepted(
        await http.post(url, json={"reason": "not needed"}), gateway_server, script.mission_id
    )
    [skipped] = await events_of(nc, script.mission_id, TaskSkipped)
    assert skipped.reason == "not needed"
    await wait_for(http, script.mission_id, lambda m: m["tasks"][0]["status"] == "skipped")
    assert (await http.post(url)).status_code == 409
    pending = await http.post(f"/missions/{script.mission_id}/tasks/t2/skip")
    assert pending.status_code == 409
    assert "t2" in pending.json()["error"]
    unknown = await http.post(f"/missions/{script.mission_id}/tasks/t9/retry")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == f"task 't9' not found in mission '{script.mission_id}'"


# --- budgets -----------------------------------------------------------------------------


async def test_a_budget_can_only_be_raised(http, nc, script, gateway_server):
    await running_mission(nc, http, script)
    url = f"/missions/{script.mission_id}/budget"
    lower = await http.post(url, json={"budget_usd": 1.5})
    assert lower.status_code == 409
    assert "more than the current one ($2.00)" in lower.json()["error"]
    assert_accepted(await http.post(url, json={"budget_usd": 5}), gateway_server, script.mission_id)
    # The same raise again names the same step.
    repeat = await http.post(url, json={"budget_usd": 5})
    assert repeat.status_code in (202, 409)
    [raised] = await events_of(nc, script.mission_id, BudgetRaised)
    assert raised.budget_usd == 5
    shown = await wait_for(http, script.mission_id, lambda m: m["budget_usd"] == 5)
    assert shown["budget_remaining_usd"] == 5
    for bad in ({}, {"budget_usd": 0}, {"budget_usd": -1}, {"budget_usd": "lots"}):
        response = await http.post(url, json=bad)
        assert response.status_code == 400, bad
        assert "budget_usd" in response.json()["error"]
