"""An attempt's event ids, keyed with the attempt's key (``attempt_ids``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from aether_events import (
    AgentCompleted,
    AgentStarted,
    TranscriptEntries,
    TranscriptRecorded,
    UsageRecorded,
    keyed,
    keyed_id,
    step_event_id,
    step_ids,
)
from aether_events.catalogue import Usage

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _meta(step: step_ids.Step) -> dict[str, object]:
    return {
        "event_id": step_event_id("m-1", step),
        "mission_id": "m-1",
        "occurred_at": AT,
        "correlation_id": "c",
    }


def _started() -> AgentStarted:
    return AgentStarted(
        **_meta(step_ids.agent_started("t1", 1)), task_id="t1", attempt=1, runner_id="r", model="m"
    )


def _usage(turn: int) -> UsageRecorded:
    return UsageRecorded(
        **_meta(step_ids.agent_usage("t1", 1, turn)),
        service="agent-runner",
        model="m",
        usage=Usage(input_tokens=1),
        step=f"turn{turn}",
        task_id="t1",
        attempt=1,
    )


def _entry(sequence: int) -> TranscriptRecorded:
    return TranscriptRecorded(
        **_meta(step_ids.transcript_entry("t1", 1, sequence)),
        task_id="t1",
        attempt=1,
        runner_id="r",
        sequence=sequence,
        kind="note",
        text="x",
    )


def test_a_keyed_id_is_the_same_for_the_same_key_and_step_and_no_other() -> None:
    public = _started().event_id
    assert keyed_id(KEY, public) == keyed_id(KEY, public)
    assert keyed_id(KEY, public) != keyed_id(OTHER, public)
    assert keyed_id(KEY, public) != keyed_id(KEY, _usage(1).event_id)
    assert keyed_id(KEY, public) != public
    # An event id's shape: 32 hex digits, a version 8 UUID.
    parsed = uuid.UUID(hex=keyed_id(KEY, public))
    assert (parsed.version, parsed.variant) == (8, uuid.RFC_4122)
    with pytest.raises(ValueError, match="16 bytes"):
        keyed_id(b"short", public)


def test_an_event_and_what_it_carries_get_the_ids_they_get_alone() -> None:
    """A start and a usage held by the runner go out inside its result, or alone if it
    was killed meanwhile and resumed: the same ids either way, so each is counted once."""
    start, usage = _started(), _usage(1)
    result = AgentCompleted(
        **_meta(step_ids.agent_completed("t1", 1)),
        task_id="t1",
        attempt=1,
        commit_sha="0" * 40,
        branch="b",
        carried=[start, usage],
    )
    stamped = keyed(result, KEY)
    assert stamped.event_id == keyed_id(KEY, result.event_id)
    assert [e.event_id for e in stamped.carried] == [
        keyed(start, KEY).event_id,
        keyed(usage, KEY).event_id,
    ]
    assert stamped.carried[0].event_id == keyed_id(KEY, start.event_id)
    assert result.carried[0].event_id == start.event_id  # the original is left alone
    entries = TranscriptEntries(
        **_meta(step_ids.transcript_entries("t1", 1, 1, 2)),
        task_id="t1",
        attempt=1,
        runner_id="r",
        entries=[_entry(1), _entry(2)],
    )
    grouped = keyed(entries, KEY)
    assert [e.event_id for e in grouped.entries] == [
        keyed(_entry(1), KEY).event_id,
        keyed(_entry(2), KEY).event_id,
    ]
    assert grouped.event_id == keyed_id(KEY, entries.event_id)
