"""The gateway reads a stored message's mission and type from its subject, in either
form (an attempt's events name the task and attempt too), and passes over an attempt
event stored on another attempt's subject."""

from __future__ import annotations

from datetime import UTC, datetime

from aether_events import AgentCompleted, encode, subject_for
from aether_gateway.adapters.stream import Incoming, StoredMessage

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def completed(task_id: str) -> AgentCompleted:
    return AgentCompleted(
        event_id=f"completed-{task_id}",
        mission_id="m-1",
        occurred_at=NOW,
        correlation_id="c",
        task_id=task_id,
        attempt=1,
        commit_sha="0" * 40,
        branch="b",
    )


def test_the_mission_and_type_of_either_subject_form() -> None:
    for subject in (
        "aether.mission.m-1.agent_completed",
        "aether.mission.m-1.agent_completed.t1.1",
    ):
        message = StoredMessage(1, subject, b"", NOW)
        assert (message.mission_id, message.tag) == ("m-1", "agent_completed")


def test_an_attempt_event_on_another_attempts_subject_is_passed_over() -> None:
    real = completed("t1")
    taken = Incoming.of_message(StoredMessage(1, subject_for(real), encode(real), NOW))
    assert taken.event == real
    forged = completed("t2")  # on t1's subject: what t1's credential could store
    passed = Incoming.of_message(StoredMessage(2, subject_for(real), encode(forged), NOW))
    assert passed.event is None and passed.unknown
    old = Incoming.of_message(
        StoredMessage(3, "aether.mission.m-1.agent_completed", encode(forged), NOW)
    )
    assert old.event == forged
