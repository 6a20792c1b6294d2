"""The scheduler's start-up replay: live missions in full, finished ones in brief.

A finished mission asks nothing more of the scheduler: ``decide`` answers none of its
events, ``tick`` and ``catch_up`` pass it by, and the global concurrency counts only
live missions. What it still contributes is that it exists and how it ended (a late
event for it must not start it again; the mission gauges count it) and its spending
(today's and this month's global budgets). So the replay reads, of the whole history,
only the events that say so, one event type at a time (``MissionRequested``, the
terminal types, ``UsageRecorded`` and the attempts' results, which may carry usage:
``carried_by``), and then every event of each mission that has not ended, one mission at
a time. Folded in stream order through the same ``evolve``, this gives the state a full
replay gives, except that a finished mission's tasks are not kept; and the history of
finished missions costs a few events each instead of all of them.

A mission that ended a moment ago (its end event's time at or after ``full_since``) is
read in full, as a live one: its attempts that were running may still be reporting
their stop, within the grace that follows its end (``app.attempt_stopping``), which a
scheduler restarted within it must see.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from aether_events import (
    MISSIONS_STREAM,
    TERMINAL_TYPES,
    AgentCompleted,
    AgentFailed,
    Event,
    MissionRequested,
    UnknownEventType,
    UsageRecorded,
    carried_by,
    decode,
    mission_subject,
    on_its_subject,
    subject_parts,
    type_subjects,
)
from aether_events.replay import START_PATIENCE_SECONDS, stored_messages
from aether_runtime import Projection
from aether_runtime import metrics as runtime_metrics
from aether_runtime.unanswered import stream_end
from aether_scheduler.domain import State

# What the replay reads of every mission, finished or not. An attempt's usage may be
# stored inside its result (``carried_by``), so the results are read as well: one message
# more an attempt, beside the one a model call that usage stored alone costs, read and
# decoded for nothing where all of the attempt's usage went out alone.
SUMMARY_TYPES: tuple[type[Event], ...] = (
    MissionRequested,
    *TERMINAL_TYPES,
    UsageRecorded,
    AgentCompleted,
    AgentFailed,
)
# With more live missions than this, one read of the whole stream costs less than a
# read per mission.
PER_MISSION_READS = 64


def _mission_of(subject: str) -> str:
    return subject_parts(subject)[0]


def _ended_since(data: bytes, since: datetime) -> bool:
    """Whether the terminal event ``data`` happened at or after ``since`` (one that does
    not decode: no)."""
    try:
        event = decode(data)
    except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
        return False
    at = event.occurred_at
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)) >= since


async def replay_history(
    projection: Projection[State],
    js: JetStreamContext,
    service: str,
    full_since: datetime | None = None,
) -> int:
    """Replay the mission stream into ``projection``; returns the sequence it is complete
    up to (what ``Projection.rebuild`` returns). The missions that ended at or after
    ``full_since`` are read in full."""
    # Everything stored by now is read back; what comes later is the consumers' (each
    # read below stops at ``end``, so all of them see the same history).
    end = await stream_end(js, MISSIONS_STREAM)
    stored: dict[int, tuple[str, bytes]] = {}
    requested: dict[str, None] = {}
    finished: set[str] = set()
    recent: set[str] = set()
    # One read per subject (an attempt type has two forms): the server finds one
    # subject's messages quickly (see ``Projection._replay_types``).
    reads = [(cls, subject) for cls in SUMMARY_TYPES for subject in type_subjects(cls)]
    for cls, subject in reads:
        async for msg in stored_messages(
            js, MISSIONS_STREAM, subject, patience=START_PATIENCE_SECONDS
        ):
            seq = msg.metadata.sequence.stream
            if seq > end:
                continue
            stored[seq] = (msg.subject, msg.data)
            if cls is MissionRequested:
                requested[_mission_of(msg.subject)] = None
            elif cls in TERMINAL_TYPES:
                finished.add(_mission_of(msg.subject))
                if full_since is not None and _ended_since(msg.data, full_since):
                    recent.add(_mission_of(msg.subject))
    live = [m for m in requested if m not in finished or m in recent]
    if len(live) > PER_MISSION_READS:
        return await projection.rebuild(js, service, unfold=carried_by)
    for mission_id in live:
        async for msg in stored_messages(
            js, MISSIONS_STREAM, mission_subject(mission_id), patience=START_PATIENCE_SECONDS
        ):
            seq = msg.metadata.sequence.stream
            if seq <= end:
                stored[seq] = (msg.subject, msg.data)
    applied = 0
    for seq in sorted(stored):
        subject, data = stored[seq]
        try:
            event = decode(data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            continue
        if not on_its_subject(event, subject, len(data)):
            continue
        # What a result carries is folded as the handler folds it: first, with the
        # result's sequence (a finished mission's result itself changes nothing: its
        # tasks are not kept).
        for each in carried_by(event):
            projection.apply(each, seq)
            applied += 1
    runtime_metrics.REPLAYED.labels(service).inc(applied)
    projection.advance(end)
    projection.last_sequence = max(projection.last_sequence, end)
    return end
