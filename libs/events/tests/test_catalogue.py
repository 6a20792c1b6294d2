"""The contracts: stored samples keep decoding, subjects and ids are stable."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether_events import (
    ALL_TYPES,
    TYPES_BY_TAG,
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentStarted,
    BranchMerged,
    MergeWithheld,
    MissionRequested,
    TaskReady,
    TranscriptEntries,
    UnknownEventType,
    UsageRecorded,
    WaveCompleted,
    WaveStarted,
    alone,
    carried_by,
    decode,
    derived_id,
    encode,
    entries_of,
    ids,
    mission_subject,
    subject_for,
    tag_of,
    transcript_of,
    type_subject,
    type_subjects,
    unfolded,
)

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("v*/*.json"))


def carries(new: object, old: object) -> bool:
    """Whether ``new`` holds everything ``old`` held (dicts may have gained keys)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(
            k in new and carries(new[k], v) for k, v in old.items()
        )
    if isinstance(old, list):
        return (
            isinstance(new, list)
            and len(new) == len(old)
            and all(carries(n, o) for n, o in zip(new, old, strict=True))
        )
    return new == old


def test_every_event_type_has_a_stored_sample() -> None:
    tags = {path.stem for path in SAMPLES.glob("v1/*.json")}
    assert tags == {tag_of(cls) for cls in ALL_TYPES}


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stored_sample_still_decodes(path: Path) -> None:
    payload = path.read_bytes()
    event = decode(payload)
    assert type(event) is TYPES_BY_TAG[path.stem]
    # Re-encoding loses nothing the sample carried (newer optional fields may be added).
    assert carries(json.loads(encode(event)), json.loads(payload))


def test_unknown_fields_are_ignored_so_newer_producers_do_not_break_consumers() -> None:
    data = json.loads((SAMPLES / "v1" / "mission_requested.json").read_bytes())
    data["added_in_a_later_version"] = {"anything": 1}
    event = decode(json.dumps(data).encode())
    assert isinstance(event, MissionRequested)


def test_unknown_event_type_is_distinguished_from_a_malformed_payload() -> None:
    data = json.loads((SAMPLES / "v1" / "mission_failed.json").read_bytes())
    data["type"] = "something_from_the_future"
    with pytest.raises(UnknownEventType):
        decode(json.dumps(data).encode())
    with pytest.raises(msgspec.DecodeError):
        decode(b"{not json")
    del data["type"]
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(data).encode())


def test_subjects_filter_by_mission_and_by_type() -> None:
    event = decode((SAMPLES / "v1" / "mission_requested.json").read_bytes())
    assert subject_for(event) == "aether.mission.m-0123456789abcdef.mission_requested"
    assert mission_subject("m-1") == "aether.mission.m-1.>"
    assert type_subject(MissionRequested) == "aether.mission.*.mission_requested"
    assert type_subjects(AgentHeartbeat) == [
        "aether.telemetry.*.agent_heartbeat",
        "aether.telemetry.*.agent_heartbeat.*.*",
    ]


def test_subject_refuses_mission_ids_that_are_not_tokens() -> None:
    event = decode((SAMPLES / "v1" / "mission_failed.json").read_bytes())
    bad = msgspec.structs.replace(event, mission_id="m.1.>")
    with pytest.raises(ValueError, match="not a valid subject token"):
        subject_for(bad)


def test_derived_ids_are_deterministic_per_step() -> None:
    assert derived_id("m-1", "task_ready", "t1", 1) == derived_id("m-1", "task_ready", "t1", 1)
    assert derived_id("m-1", "task_ready", "t1", 1) != derived_id("m-1", "task_ready", "t1", 2)


# Ids derived before, stored in streams: a step must keep its id across versions, or a
# redelivered cause would publish its effect again under a new one.
KNOWN_IDS = [
    (("m-1", "task_ready", "t1", 1), "aa0e5592a93756beb3293cdadbab7f84"),
    (("m-ü", "agent", "t1", "a2", "turn3"), "999ad74b533258d8b22dbe9910a0d347"),
]


@pytest.mark.parametrize(("parts", "known"), KNOWN_IDS)
def test_a_derived_id_is_the_one_derived_before(parts: tuple[object, ...], known: str) -> None:
    assert derived_id(*parts) == known


@given(st.lists(st.one_of(st.text(), st.integers()), min_size=1, max_size=6))
def test_a_derived_id_is_the_name_based_uuid_of_its_parts(parts: list[object]) -> None:
    name = "\x1f".join(str(p) for p in parts)
    assert derived_id(*parts) == uuid.uuid5(ids._NAMESPACE, name).hex


def test_a_mission_without_a_base_branch_asks_for_the_repositorys_default() -> None:
    # Requests before the rule carried a name and keep it; a request without one is
    # empty, which the git broker reads as the repository's default branch.
    named = decode((SAMPLES / "v1" / "mission_requested.json").read_bytes())
    unnamed = decode((SAMPLES / "v3" / "mission_requested.json").read_bytes())
    assert isinstance(named, MissionRequested) and named.base_branch == "main"
    assert isinstance(unnamed, MissionRequested) and unnamed.base_branch == ""


def test_a_transcript_batch_decodes_only_with_entries_of_its_own_attempt() -> None:
    data = json.loads((SAMPLES / "v1" / "transcript_entries.json").read_bytes())
    batch = decode(json.dumps(data).encode())
    assert [entry.sequence for entry in entries_of(batch)] == [0, 1]
    other = json.loads(json.dumps(data))
    other["entries"][1]["task_id"] = "t2"
    with pytest.raises(msgspec.ValidationError, match="another attempt"):
        decode(json.dumps(other).encode())
    later = json.loads(json.dumps(data))
    later["entries"][0]["attempt"] = 2
    with pytest.raises(msgspec.ValidationError, match="another attempt"):
        decode(json.dumps(later).encode())
    empty = {**data, "entries": []}
    with pytest.raises(msgspec.ValidationError, match="no entry"):
        decode(json.dumps(empty).encode())
    nested = {**data, "entries": [data]}
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(nested).encode())


def test_entries_of_an_event_that_is_no_transcript_is_empty() -> None:
    entry = decode((SAMPLES / "v1" / "transcript_recorded.json").read_bytes())
    assert entries_of(entry) == [entry]
    assert entries_of(decode((SAMPLES / "v1" / "mission_failed.json").read_bytes())) == []


def test_a_transcript_read_from_the_stream_has_each_entry_once() -> None:
    batch = decode((SAMPLES / "v1" / "transcript_entries.json").read_bytes())
    assert isinstance(batch, TranscriptEntries)
    first, second = batch.entries
    # Sent alone, then again with the next (a resumed attempt): the first copy is kept.
    assert transcript_of([first, batch]) == [first, second]
    assert transcript_of([batch, first]) == [first, second]


@pytest.mark.parametrize("result", [AgentCompleted, AgentFailed])
def test_a_result_stands_for_the_events_it_carries_then_itself(
    result: type[AgentCompleted | AgentFailed],
) -> None:
    event = decode((SAMPLES / "v6" / f"{tag_of(result)}.json").read_bytes())
    assert isinstance(event, result)
    started, used, itself = carried_by(event)
    assert isinstance(started, AgentStarted) and isinstance(used, UsageRecorded)
    assert itself is event
    # Each keeps its own id and time.
    assert len({started.event_id, used.event_id, event.event_id}) == 3
    assert started.occurred_at < used.occurred_at < event.occurred_at
    alone = decode((SAMPLES / "v1" / f"{tag_of(result)}.json").read_bytes())
    assert carried_by(alone) == [alone]
    assert carried_by(started) == [started]


def test_a_stream_read_as_events_has_each_carried_event_once_before_its_result() -> None:
    result = decode((SAMPLES / "v6" / "agent_completed.json").read_bytes())
    assert isinstance(result, AgentCompleted)
    started, used = result.carried
    # The samples share one id: the event before the result gets one of its own.
    data = json.loads((SAMPLES / "v1" / "workspace_ready.json").read_bytes())
    before = decode(json.dumps({**data, "event_id": "w" * 32}).encode())
    assert unfolded([before, result]) == [before, started, used, result]
    # The start published alone first, then carried again (same id): kept where it came.
    assert unfolded([started, before, result]) == [started, before, used, result]
    # A message stored twice is one event.
    assert unfolded([before, before]) == [before]


def test_a_task_ready_stands_for_the_waves_it_carries_then_itself() -> None:
    event = decode((SAMPLES / "v6" / "task_ready.json").read_bytes())
    assert isinstance(event, TaskReady)
    completed, started, itself = carried_by(event)
    assert isinstance(completed, WaveCompleted) and isinstance(started, WaveStarted)
    assert (completed.wave, started.wave, itself.wave) == (0, 1, 1)
    assert itself is event
    assert alone(event) == msgspec.structs.replace(event, carried=[])
    assert carried_by(alone(event)) == [alone(event)]
    other = json.loads((SAMPLES / "v6" / "task_ready.json").read_bytes())
    other["carried"][0]["mission_id"] = "m-other"
    with pytest.raises(msgspec.ValidationError, match="another mission"):
        decode(json.dumps(other).encode())
    # Only waves are carried by a TaskReady.
    started_alone = json.loads((SAMPLES / "v2" / "agent_started.json").read_bytes())
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps({**other, "carried": [started_alone]}).encode())


def test_a_result_carries_only_events_of_its_own_attempt() -> None:
    data = json.loads((SAMPLES / "v6" / "agent_completed.json").read_bytes())
    for field, value in (("task_id", "t2"), ("attempt", 2), ("mission_id", "m-other")):
        other = json.loads(json.dumps(data))
        other["carried"][1][field] = value
        with pytest.raises(msgspec.ValidationError, match="another attempt"):
            decode(json.dumps(other).encode())
    # Only an attempt's start and its model calls' usage are carried.
    progress = json.loads((SAMPLES / "v1" / "agent_progress.json").read_bytes())
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps({**data, "carried": [progress]}).encode())


def test_a_merge_says_whether_its_attempt_resolved_a_conflict() -> None:
    resolved = decode((SAMPLES / "v9" / "branch_merged.json").read_bytes())
    assert isinstance(resolved, BranchMerged) and resolved.resolution
    # A merge from a broker before v9 says nothing, read as not a resolution.
    older = decode((SAMPLES / "v1" / "branch_merged.json").read_bytes())
    assert isinstance(older, BranchMerged) and not older.resolution


def test_a_withheld_merge_carries_what_the_verification_it_stopped_printed() -> None:
    stopped = decode((SAMPLES / "v10" / "merge_withheld.json").read_bytes())
    assert isinstance(stopped, MergeWithheld)
    assert stopped.verification.startswith("verification stopped: `make test`")
    assert "--- output ---\nchecked 3 of 5" in stopped.verification
    # A withheld merge from a broker before v10 (or with no verification stopped) says none.
    older = decode((SAMPLES / "v1" / "merge_withheld.json").read_bytes())
    assert isinstance(older, MergeWithheld) and older.verification == ""
