"""Subjects that name the attempt: what an agent runner reports on one attempt goes on a
subject naming its task and attempt (so a credential can be limited to them), and the
filters of these types still find the events stored on the older four-token subjects."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    ATTEMPT_TYPES,
    MISSIONS_STREAM,
    AgentCompleted,
    AgentHeartbeat,
    AgentStarted,
    BranchMerged,
    Event,
    EventPublisher,
    MissionRequested,
    Usage,
    UsageRecorded,
    attempt_subject,
    encode,
    ensure_streams,
    mission_history,
    on_its_subject,
    replay,
    subject_for,
    subject_parts,
    task_token,
    type_subject,
    type_subjects,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def meta(mission_id: str, name: str) -> dict[str, object]:
    return {
        "event_id": f"{mission_id}-{name}",
        "mission_id": mission_id,
        "occurred_at": NOW,
        "correlation_id": f"corr-{mission_id}",
    }


def completed(mission_id: str, task_id: str, attempt: int, name: str) -> AgentCompleted:
    return AgentCompleted(
        **meta(mission_id, name),  # type: ignore[arg-type]
        task_id=task_id,
        attempt=attempt,
        commit_sha="0" * 40,
        branch="b",
    )


def usage(mission_id: str, name: str, task_id: str | None, attempt: int | None) -> UsageRecorded:
    return UsageRecorded(
        **meta(mission_id, name),  # type: ignore[arg-type]
        service="agent-runner" if task_id else "planner",
        model="m",
        usage=Usage(input_tokens=1, output_tokens=1),
        step=name,
        task_id=task_id,
        attempt=attempt,
    )


def test_an_attempts_events_name_the_task_and_the_attempt() -> None:
    assert subject_for(completed("m-1", "t1", 2, "c")) == "aether.mission.m-1.agent_completed.t1.2"
    beat = AgentHeartbeat(**meta("m-1", "b"), task_id="t1", attempt=1, runner_id="r")  # type: ignore[arg-type]
    assert subject_for(beat) == "aether.telemetry.m-1.agent_heartbeat.t1.1"
    assert subject_for(usage("m-1", "u", "t1", 3)) == "aether.mission.m-1.usage_recorded.t1.3"
    # What names no attempt, and what no attempt credential publishes, keeps four tokens.
    assert subject_for(usage("m-1", "p", None, None)) == "aether.mission.m-1.usage_recorded"
    merged = BranchMerged(
        **meta("m-1", "m"),  # type: ignore[arg-type]
        task_id="t1",
        attempt=1,
        merge_sha="0" * 40,
        integration_branch="main",
    )
    assert subject_for(merged) == "aether.mission.m-1.branch_merged"


def test_a_task_token_is_the_id_or_a_digest_and_never_another_tasks() -> None:
    assert task_token("t1") == "t1"
    assert task_token("api-client_2") == "api-client_2"
    dotted = task_token("1.2")
    assert dotted.startswith("_") and len(dotted) == 33 and "." not in dotted
    # An id that looks like a digest is digested too: it cannot take another's token.
    assert task_token(dotted) != dotted
    assert task_token("x" * 65).startswith("_")
    ids = ["1.2", "1-2", "1_2", "_1", "1", "x" * 64, "x" * 65, "x" * 128, dotted]
    assert len({task_token(task_id) for task_id in ids}) == len(ids)


def test_an_attempt_subject_is_only_for_attempt_types() -> None:
    with pytest.raises(ValueError, match="not reported per attempt"):
        attempt_subject(BranchMerged, "m-1", "t1", 1)
    with pytest.raises(ValueError, match="not a valid subject token"):
        attempt_subject(AgentStarted, "m.1", "t1", 1)
    with pytest.raises(ValueError, match="negative"):
        attempt_subject(AgentStarted, "m-1", "t1", -1)


def test_the_filters_of_an_attempt_type_name_both_forms() -> None:
    for cls in ATTEMPT_TYPES:
        old, new = type_subjects(cls)
        assert new == f"{old}.*.*"
        with pytest.raises(ValueError, match="type_subjects"):
            type_subject(cls)
    assert type_subjects(MissionRequested) == [type_subject(MissionRequested)]
    assert type_subjects(AgentCompleted, "m-7") == [
        "aether.mission.m-7.agent_completed",
        "aether.mission.m-7.agent_completed.*.*",
    ]


def test_a_subject_names_its_mission_and_type_in_either_form() -> None:
    assert subject_parts("aether.mission.m-1.agent_completed") == ("m-1", "agent_completed")
    assert subject_parts("aether.mission.m-1.agent_completed.t1.2") == ("m-1", "agent_completed")
    assert subject_parts("aether.telemetry.m-1.agent_progress._ab.1") == ("m-1", "agent_progress")
    assert subject_parts("aether.mission.m-1") == ("", "")
    assert subject_parts("other.mission.m-1.x") == ("", "")


async def test_events_stored_on_the_old_subjects_are_still_read(nc: NatsClient) -> None:
    """A stream holding an attempt's event on the four-token subject (as stored before
    subjects named the attempt), then newer ones: the type's filters and the mission's
    history give them all, in stream order."""
    js = nc.jetstream()
    await ensure_streams(js)
    old = completed("m-1", "t1", 1, "old")
    await js.publish("aether.mission.m-1.agent_completed", encode(old))
    publisher = EventPublisher(js)
    new = completed("m-1", "t2", 1, "new")
    other = completed("m-2", "1.2", 3, "other")
    for event in (new, usage("m-1", "u", "t2", 1), other):
        await publisher.publish(event)

    def collect(found: list[Event], event: Event, _: int) -> list[Event]:
        found.append(event)
        return found

    empty: list[Event] = []
    read, _ = await replay(js, MISSIONS_STREAM, type_subjects(AgentCompleted), empty, collect)
    assert [event.event_id for event in read] == [old.event_id, new.event_id, other.event_id]
    empty = []
    one, _ = await replay(js, MISSIONS_STREAM, type_subjects(AgentCompleted, "m-1"), empty, collect)
    assert [event.event_id for event in one] == [old.event_id, new.event_id]
    history = await mission_history(js, "m-1")
    assert [event.event_id for event in history] == [old.event_id, new.event_id, "m-1-u"]


def test_an_attempts_event_is_taken_only_from_its_own_subject() -> None:
    event = completed("m-1", "t2", 1, "c")
    assert on_its_subject(event, "aether.mission.m-1.agent_completed.t2.1")
    assert on_its_subject(event, "aether.mission.m-1.agent_completed")  # stored before
    # Published with the credential of another task, another attempt, another mission.
    assert not on_its_subject(event, "aether.mission.m-1.agent_completed.t1.1")
    assert not on_its_subject(event, "aether.mission.m-1.agent_completed.t2.2")
    assert not on_its_subject(event, "aether.mission.m-2.agent_completed.t2.1")
    assert not on_its_subject(event, "aether.mission.m-2.agent_completed")
    assert not on_its_subject(event, "aether.mission.m-1.agent_started.t2.1")
    # Other types are limited by type alone (static users): any subject will do.
    assert on_its_subject(
        MissionRequested(**meta("m-1", "r"), repository="/r", requirement="x"), "x"
    )  # type: ignore[arg-type]


async def test_a_replay_passes_over_an_event_about_other_work(nc: NatsClient) -> None:
    """What t1's credential could store: its own subject, a payload about t2."""
    js = nc.jetstream()
    await ensure_streams(js)
    forged = completed("m-1", "t2", 1, "forged")
    await js.publish("aether.mission.m-1.agent_completed.t1.1", encode(forged))
    real = completed("m-1", "t1", 1, "real")
    await EventPublisher(js).publish(real)

    def collect(found: list[Event], event: Event, _: int) -> list[Event]:
        found.append(event)
        return found

    empty: list[Event] = []
    read, result = await replay(js, MISSIONS_STREAM, type_subjects(AgentCompleted), empty, collect)
    assert [event.event_id for event in read] == [real.event_id]
    assert result.skipped == 1
