"""Failed steps: listed on the mission with what came of them, and retried on request."""

from __future__ import annotations

from datetime import UTC, datetime

from aether_events import (
    MISSIONS_STREAM,
    EventPublisher,
    StepRetryRequested,
)
from aether_runtime.runner_secrets import runner_secret, step_record_key
from aether_runtime.steps import step_failed, step_recovered

from .conftest import Script, eventually, stored_events
from .test_cli import Cli


async def failed_step_on_the_stream(nc, script: Script):
    publisher = EventPublisher(nc.jetstream())
    requested = script.requested()
    stored = await publisher.publish(requested)
    failed = step_failed(
        requested,
        service="git-broker",
        consumer="git-broker",
        stream=MISSIONS_STREAM,
        sequence=stored.seq,
        error="FileLocked: refs/heads/x.lock",
        attempts=20,
        now=datetime.now(UTC),
    )
    await publisher.publish(failed)
    return requested, failed


async def steps_of(http, mission_id, status):
    async def probe():
        response = await http.get(f"/missions/{mission_id}/steps")
        if response.status_code != 200:
            return None
        steps = response.json()["steps"]
        return steps if steps and steps[0]["status"] == status else None

    return await eventually(probe, what=f"a {status} step")


async def test_a_failed_step_is_shown_and_a_retry_is_asked_of_the_service_that_failed(
    http, nc, script
):
    requested, failed = await failed_step_on_the_stream(nc, script)
    (step,) = await steps_of(http, script.mission_id, "failed")
    assert step["failed_event_id"] == requested.event_id
    assert step["failed_event_type"] == "mission_requested"
    assert (step["service"], step["consumer"]) == ("git-broker", "git-broker")
    assert step["attempts"] == 20 and step["error"].startswith("FileLocked")
    record = (await http.get(f"/missions/{script.mission_id}")).json()
    assert record["failed_steps"] == [step]
    events = await http.get(f"/events?mission_id={script.mission_id}&type=step_failed")
    assert [e["event_id"] for e in events.json()["events"]] == [failed.event_id]

    answer = await http.post(f"/missions/{script.mission_id}/steps/{requested.event_id}/retry")
    assert answer.status_code == 202, answer.text
    retries = [
        e for e in await stored_events(nc, script.mission_id) if isinstance(e, StepRetryRequested)
    ]
    assert [r.event_id for r in retries] == [answer.json()["event_id"]]
    (retry,) = retries
    assert (retry.service, retry.consumer) == ("git-broker", "git-broker")
    assert (retry.stream, retry.stream_sequence) == (MISSIONS_STREAM, failed.stream_sequence)
    assert retry.failed_event_id == requested.event_id
    assert retry.causation_id == failed.event_id
    assert retry.requested_by == "bootstrap-admin"
    (step,) = await steps_of(http, script.mission_id, "retrying")
    assert step["retries"] == 1

    await EventPublisher(nc.jetstream()).publish(step_recovered(retry, datetime.now(UTC)))
    await steps_of(http, script.mission_id, "recovered")
    again = await http.post(f"/missions/{script.mission_id}/steps/{requested.event_id}/retry")
    assert again.status_code == 409
    assert again.json()["error"] == "the step has recovered already"
    history = await stored_events(nc, script.mission_id)
    assert sum(isinstance(e, StepRetryRequested) for e in history) == 1


async def test_retrying_a_step_that_did_not_fail_is_not_found(http, nc, script):
    requested, _ = await failed_step_on_the_stream(nc, script)
    await steps_of(http, script.mission_id, "failed")
    missing = await http.post(f"/missions/{script.mission_id}/steps/not-an-event/retry")
    assert missing.status_code == 404
    assert "no failed step" in missing.json()["error"]
    other = await http.post(
        f"/missions/{script.mission_id}/steps/{requested.event_id}/retry?service=planner"
    )
    assert other.status_code == 404
    assert (
        await http.post(f"/missions/m-nothere/steps/{requested.event_id}/retry")
    ).status_code == 404
    assert not any(
        isinstance(e, StepRetryRequested) for e in await stored_events(nc, script.mission_id)
    )


async def test_a_read_only_token_cannot_retry_a_step(gateway_server, http, nc, script):
    requested, _ = await failed_step_on_the_stream(nc, script)
    await steps_of(http, script.mission_id, "failed")
    made = await http.post("/admin/tokens", json={"name": "dash", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    async with gateway_server.client(token=made.json()["token"]) as reader:
        assert (await reader.get(f"/missions/{script.mission_id}/steps")).status_code == 200
        refused = await reader.post(
            f"/missions/{script.mission_id}/steps/{requested.event_id}/retry"
        )
        assert refused.status_code == 403


async def test_the_cli_shows_failed_steps_and_retries_one(gateway_server, http, nc, script, capsys):
    requested, _ = await failed_step_on_the_stream(nc, script)
    await steps_of(http, script.mission_id, "failed")
    cli = Cli(gateway_server, capsys)
    code, out, _ = await cli("mission", "show", script.mission_id)
    assert code == 0 and "failed steps:" in out
    assert "git-broker" in out and "mission_requested" in out and "FileLocked" in out
    shown = await cli.json("mission", "show", script.mission_id)
    assert [s["failed_event_id"] for s in shown["failed_steps"]] == [requested.event_id]
    code, out, _ = await cli("mission", "retry-step", script.mission_id, requested.event_id)
    assert code == 0 and "will run again" in out
    history = await stored_events(nc, script.mission_id)
    assert sum(isinstance(e, StepRetryRequested) for e in history) == 1


async def test_two_runners_records_of_one_failed_step_are_one_step(http, nc, script):
    """Each runner keys its step records with its own secret (decision 0032): two runners
    recording the same failed step (the advisory of a delivery nobody answered reaches
    every runner) store two records under two ids. The mission shows one step, as the
    first record tells it; a copy arriving after a retry was asked does not reopen it."""
    publisher = EventPublisher(nc.jetstream())
    requested = script.requested()
    stored = await publisher.publish(requested)
    master = "a master secret of the test"

    def record_of(runner: str, error: str):
        return step_failed(
            requested,
            service="agent-runner",
            consumer="agent-runner",
            stream=MISSIONS_STREAM,
            sequence=stored.seq,
            error=error,
            attempts=20,
            now=datetime.now(UTC),
            key=step_record_key(runner_secret(master, runner)),
        )

    first, second = record_of("r-1", "RuntimeError: one"), record_of("r-2", "RuntimeError: two")
    assert first.event_id != second.event_id
    assert not (await publisher.publish(first)).duplicate
    assert not (await publisher.publish(second)).duplicate

    async def both_stored():
        events = await http.get(f"/events?mission_id={script.mission_id}&type=step_failed")
        return len(events.json()["events"]) == 2

    await eventually(both_stored, what="both records in the read model")
    (step,) = await steps_of(http, script.mission_id, "failed")
    assert step["attempts"] == 20 and step["error"] == "RuntimeError: one"
    assert step["step_failed_event_id"] == first.event_id

    answer = await http.post(f"/missions/{script.mission_id}/steps/{requested.event_id}/retry")
    assert answer.status_code == 202, answer.text
    await steps_of(http, script.mission_id, "retrying")
    late = record_of("r-3", "RuntimeError: late")
    await publisher.publish(late)

    async def late_stored():
        events = await http.get(f"/events?mission_id={script.mission_id}&type=step_failed")
        return len(events.json()["events"]) == 3

    await eventually(late_stored, what="the late record in the read model")
    (step,) = (await http.get(f"/missions/{script.mission_id}/steps")).json()["steps"]
    assert step["status"] == "retrying" and step["retries"] == 1
