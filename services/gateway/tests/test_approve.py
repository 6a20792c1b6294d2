"""Approving a plan: refused until there is one, then published once per version."""

from __future__ import annotations

from aether_events import EventPublisher, PlanApproved

from .conftest import eventually, stored_events


async def test_approval_is_refused_before_a_plan_and_published_after(http, nc, script):
    publisher = EventPublisher(nc.jetstream())
    assert (await http.post(f"/missions/{script.mission_id}/plan/approve")).status_code == 404

    await publisher.publish_all([script.requested(), script.prepared()])

    async def prepared():
        response = await http.get(f"/missions/{script.mission_id}")
        return response.status_code == 200 and response.json()["status"] == "preparing"

    await eventually(prepared, what="the mission to be preparing")
    early = await http.post(f"/missions/{script.mission_id}/plan/approve")
    assert early.status_code == 409
    assert early.json()["error"] == "the mission has no plan to approve yet"

    await publisher.publish(script.plan(version=1))
    await publisher.publish(script.plan(version=2))

    async def awaiting():
        response = await http.get(f"/missions/{script.mission_id}")
        body = response.json()
        return body["status"] == "awaiting_approval" and body["plan_version"] == 2

    await eventually(awaiting, what="plan version 2")
    stale = await http.post(f"/missions/{script.mission_id}/plan/approve", json={"version": 1})
    assert stale.status_code == 409
    assert "not the latest" in stale.json()["error"]
    bad = await http.post(f"/missions/{script.mission_id}/plan/approve", json={"version": "x"})
    assert bad.status_code == 400

    accepted = await http.post(f"/missions/{script.mission_id}/plan/approve", json={})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["version"] == 2

    approvals = [
        e for e in await stored_events(nc, script.mission_id) if isinstance(e, PlanApproved)
    ]
    assert len(approvals) == 1
    approval = approvals[0]
    assert approval.version == 2
    assert approval.automatic is False
    assert approval.approved_by == "bootstrap-admin"
    assert approval.causation_id is None
    assert approval.correlation_id == script.correlation_id
    assert approval.event_id == accepted.json()["event_id"]

    async def running():
        response = await http.get(f"/missions/{script.mission_id}")
        return response.json()["status"] == "running"

    await eventually(running, what="the mission to run")
    again = await http.post(f"/missions/{script.mission_id}/plan/approve", json={"version": 2})
    assert again.status_code == 409
    assert again.json()["error"] == "plan version 2 is already approved"


async def test_a_plan_just_published_can_be_approved_before_the_read_model_shows_it(
    http, nc, script
):
    # A client that saw plan_produced on the event stream approves at once; the gateway
    # catches its read model up instead of answering 404 or 409.
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all([script.requested(), script.prepared(), script.plan(version=1)])
    accepted = await http.post(f"/missions/{script.mission_id}/plan/approve", json={"version": 1})
    assert accepted.status_code == 202, accepted.text
    approvals = [
        e for e in await stored_events(nc, script.mission_id) if isinstance(e, PlanApproved)
    ]
    assert [a.version for a in approvals] == [1]
