"""What a chaos trial must show, as pure functions of what it recorded.

Each check returns the problems it found (empty: passed), in words a reader of the trial
line can act on. The inputs are the mission's events as stored (sequence, the server's
storage time), the model server's log of calls, the kills made, the gateway's read model
and the final tree. A check that asks what happened reads an attempt's result as the
start and usage it carries, then itself, each event once (``unfolded``): a runner sends
a short attempt's events inside its result, and may have sent one alone before.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionProgress,
    MissionRequested,
    PlanApproved,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    TaskRetried,
    TaskTimedOut,
    UsageRecorded,
    WaveCompleted,
    WaveStarted,
    WorkspaceReady,
    advance,
    carried_by,
    tag_of,
    unfolded,
)

from .model import ModelCall

# A reply the caller received but had not yet journaled when it was killed is lost with
# it; this is how long after the reply left the server a kill still explains a repeat.
JOURNAL_GRACE_SECONDS = 2.0

CHECKS = ("completed", "merges", "duplicates", "model-calls", "tree", "read-model")


@dataclass(frozen=True)
class Stored:
    """One event as the stream holds it."""

    seq: int
    stored_at: float  # the server's timestamp, seconds since the epoch
    event: Event


@dataclass
class KillRecord:
    """One planned kill and what happened when it was carried out."""

    target: str  # a service name or "nats"
    phase: str  # "boot" (before the target's first ready) or "run" (during the mission)
    planned: str  # the trigger, in words
    killed_at: float | None = None  # wall clock; None: never fired
    restarted_at: float | None = None
    was_ready: bool | None = None  # whether the target had answered /readyz before
    starting: list[str] = field(default_factory=list)  # services not ready at the kill
    events_before: int | None = None  # mission events stored when it fired


@dataclass
class ReadModelView:
    """What the gateway says about the mission."""

    status: str | None = None
    final_sha: str | None = None
    tasks: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ModelCallReport:
    problems: list[str] = field(default_factory=list)
    calls: int = 0  # answered by the model server
    used: int = 0  # whose usage the stream records
    excused: int = 0  # repeats of a call whose caller was killed while it was in flight
    dropped: int = 0  # calls of an attempt that ended before it used the reply


@dataclass(frozen=True)
class Stall:
    """The longest quiet time on the stream around one nats-server restart."""

    kill: KillRecord
    seconds: float | None  # None: nothing to measure (no events before or after)
    down_seconds: float


def _events(stored: Sequence[Stored]) -> list[Event]:
    """The messages stored, one event each (a result with what it carries)."""
    return [s.event for s in stored]


def _happened(stored: Sequence[Stored]) -> list[Event]:
    """The events that happened: those a result carries too, each once."""
    return unfolded(_events(stored))


def check_completed(stored: Sequence[Stored]) -> list[str]:
    events = _events(stored)
    completed = [e for e in events if isinstance(e, MissionCompleted)]
    ended = [e for e in events if isinstance(e, MissionFailed | MissionCancelled)]
    problems = [f"mission ended {tag_of(type(e))}: {getattr(e, 'reason', '')}" for e in ended]
    if len(completed) > 1:
        problems.append(f"MissionCompleted stored {len(completed)} times")
    if not completed and not ended:
        merged = {e.task_id for e in events if isinstance(e, BranchMerged)}
        last = tag_of(type(events[-1])) if events else "nothing"
        problems.append(f"not completed: {len(merged)} tasks merged, last event {last}")
    return problems


def check_merges(
    stored: Sequence[Stored], task_ids: Sequence[str], line_tasks: Sequence[str] | None
) -> list[str]:
    """Exactly one BranchMerged per task, and one commit per task on the integration
    branch's first-parent line (``line_tasks``: the Aether-Task of each, None if unread)."""
    merged = Counter(e.task_id for e in _events(stored) if isinstance(e, BranchMerged))
    problems = []
    never = [t for t in task_ids if merged[t] == 0]
    if never:
        problems.append(f"{len(never)} of {len(task_ids)} tasks never merged: {', '.join(never)}")
    problems += [f"{t} merged {n} times on the stream" for t, n in merged.items() if n > 1]
    problems += [f"merge of unknown task {t}" for t in merged if t not in task_ids]
    if line_tasks is not None:
        on_line = Counter(line_tasks)
        repeated = sorted(t for t, n in on_line.items() if n > 1)
        if repeated:
            problems.append(f"merged more than once on the branch: {', '.join(repeated)}")
    return problems


def logical_key(event: Event) -> Hashable | None:
    """What makes an event one of a kind: two stored events with the same key are one
    step recorded twice (under different ids)."""
    kind = tag_of(type(event))
    match event:
        case MissionRequested() | RepositoryPrepared() | MissionCompleted() | MissionFailed():
            return (kind,)
        case PlanProduced(version=version) | PlanApproved(version=version):
            return (kind, version)
        case WaveStarted(wave=wave) | WaveCompleted(wave=wave):
            return (kind, wave)
        case TaskReady(task=task, attempt=attempt) | WorkspaceReady(task=task, attempt=attempt):
            return (kind, task.id, attempt)
        case (
            AgentCompleted(task_id=task_id, attempt=attempt)
            | AgentFailed(task_id=task_id, attempt=attempt)
        ):
            return ("agent_result", task_id, attempt)
        case (
            AgentStarted(task_id=task_id, attempt=attempt)
            | MergeConflicted(task_id=task_id, attempt=attempt)
            | TaskRetried(task_id=task_id, attempt=attempt)
            | TaskTimedOut(task_id=task_id, attempt=attempt)
        ):
            return (kind, task_id, attempt)
        case BranchMerged(task_id=task_id):
            return (kind, task_id)
        case UsageRecorded(step=step):
            return (kind, step)
    return None


def check_duplicates(stored: Sequence[Stored]) -> list[str]:
    """No message stored twice (by id), and no step recorded twice under different ids,
    the events a result carries included: an event carried after it was published
    alone is the same event (same id), not a step recorded twice."""
    problems = []
    by_id: dict[str, list[int]] = defaultdict(list)
    # Per step, the message that first brought each of its events, by the event's id.
    by_key: dict[Hashable, dict[str, int]] = defaultdict(dict)
    for s in stored:
        by_id[s.event.event_id].append(s.seq)
        for event in carried_by(s.event):
            key = logical_key(event)
            if key is not None:
                by_key[key].setdefault(event.event_id, s.seq)
    for event_id, seqs in by_id.items():
        if len(seqs) > 1:
            problems.append(f"event {event_id} stored {len(seqs)} times (seq {seqs})")
    for key, first_seqs in by_key.items():
        if len(first_seqs) > 1:
            seqs = list(first_seqs.values())
            what = ":".join(str(part) for part in key) if isinstance(key, tuple) else str(key)
            problems.append(f"{what} stored {len(seqs)} times under different ids (seq {seqs})")
    return problems


def check_model_calls(
    stored: Sequence[Stored], calls: Sequence[ModelCall], kills: Sequence[KillRecord]
) -> ModelCallReport:
    """No step asked the model twice, unless its caller died with the call in flight.

    A call is *used* when the stream records its usage (the serial is the input-token
    count), alone or carried by its attempt's result. An unused call of an agent is
    attributed to the task's latest attempt whose workspace was stored before the call
    arrived: if that attempt used a call for the same turn, the unused one repeated the
    step. An unused plan call repeated the planning if any plan call was used.
    """
    report = ModelCallReport(calls=len(calls))
    by_serial = {c.serial: c for c in calls}
    used: dict[int, str] = {}
    used_steps: set[tuple[str, int, int]] = set()
    plan_used = False
    for event in _happened(stored):
        if not isinstance(event, UsageRecorded):
            continue
        serial = event.usage.input_tokens
        call = by_serial.get(serial)
        if call is None:
            report.problems.append(f"usage of {event.step} names no call the model answered")
            continue
        if serial in used and used[serial] != event.step:
            report.problems.append(f"call #{serial} recorded for {used[serial]} and {event.step}")
        used[serial] = event.step
        if call.kind == "plan":
            plan_used = True
        elif event.task_id is not None and event.attempt is not None:
            used_steps.add((event.task_id, event.attempt, call.turn))
    report.used = len(used)
    starts: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in stored:
        if isinstance(s.event, WorkspaceReady):
            starts[s.event.task.id].append((s.stored_at, s.event.attempt))
    for call in calls:
        if call.serial in used:
            continue
        caller = "planner" if call.kind == "plan" else "agent-runner"
        in_flight = any(
            k.target == caller
            and k.killed_at is not None
            and call.arrived <= k.killed_at <= call.answered + JOURNAL_GRACE_SECONDS
            for k in kills
        )
        if call.kind == "plan":
            step, repeated = "the plan", plan_used
        else:
            assert call.task_id is not None
            earlier = [a for at, a in sorted(starts[call.task_id]) if at <= call.arrived]
            if not earlier:
                report.problems.append(
                    f"call #{call.serial} for {call.task_id} before any workspace of it"
                )
                continue
            attempt = earlier[-1]
            step = f"agent:{call.task_id}:a{attempt}:turn{call.turn}"
            repeated = (call.task_id, attempt, call.turn) in used_steps
        if not repeated:
            report.dropped += 1
        elif in_flight:
            report.excused += 1
        else:
            report.problems.append(f"model asked twice for {step} (call #{call.serial} unused)")
    return report


def check_tree(final_tree: str | None, expected_tree: str | None) -> list[str]:
    if final_tree is None:
        return ["no final tree (no MissionCompleted)"]
    if expected_tree is not None and final_tree != expected_tree:
        return [f"final tree {final_tree[:12]} differs from the fault-free {expected_tree[:12]}"]
    return []


def check_read_model(stored: Sequence[Stored], view: ReadModelView | None) -> list[str]:
    """The gateway's mission, tasks and events say what the stream says; the events
    it shows are those that happened, a result's carried ones each on its own."""
    if view is None:
        return ["no answer from the gateway"]
    if view.error is not None:
        return [view.error]
    problems = []
    events = _happened(stored)
    # The stream's verdict by the rules every service shares (``aether_events.status``).
    progress = MissionProgress()
    for e in events:
        progress = advance(progress, e)
    if progress.terminal and view.status != progress.status:
        problems.append(f"status {view.status}, stream says {progress.status}")
    completed = [e for e in events if isinstance(e, MissionCompleted)]
    if completed and view.final_sha != completed[0].final_sha:
        problems.append(f"final sha {view.final_sha}, stream says {completed[0].final_sha}")
    attempts: dict[str, int] = {}
    for e in events:
        if isinstance(e, TaskReady):
            attempts[e.task.id] = max(attempts.get(e.task.id, 0), e.attempt)
    wrong = []
    for e in events:
        if isinstance(e, BranchMerged):
            status, attempt, merge_sha = view.tasks.get(e.task_id, ("absent", 0, None))
            if status != "merged" or merge_sha != e.merge_sha:
                wrong.append(f"{e.task_id} {status}")
            elif attempt != attempts.get(e.task_id):
                wrong.append(f"{e.task_id} attempt {attempt}≠{attempts.get(e.task_id)}")
    if wrong:
        problems.append(f"tasks not as merged: {', '.join(wrong)}")
    stream_ids = {e.event_id for e in events}
    shown = set(view.event_ids)
    if shown != stream_ids or len(view.event_ids) != len(shown):
        missing, extra = len(stream_ids - shown), len(shown - stream_ids)
        problems.append(
            f"events: {len(view.event_ids)} shown for {len(stream_ids)} on the stream"
            f" ({missing} missing, {extra} extra)"
        )
    return problems


def stalls(
    stored: Sequence[Stored], kills: Sequence[KillRecord], window: float = 60.0
) -> list[Stall]:
    """For each nats-server kill: the longest gap between consecutive stored events from
    the last event before the kill until ``window`` seconds after the restart."""
    times = sorted(s.stored_at for s in stored)
    out = []
    for kill in kills:
        if kill.target != "nats" or kill.killed_at is None:
            continue
        restarted = kill.restarted_at if kill.restarted_at is not None else kill.killed_at
        down = restarted - kill.killed_at
        before = [t for t in times if t <= kill.killed_at]
        after = [t for t in times if t > kill.killed_at]
        if not before or not after:
            out.append(Stall(kill, None, down))
            continue
        span = [before[-1], *(t for t in after if t <= restarted + window)]
        if len(span) < 2:
            span.append(after[0])
        gap = max(b - a for a, b in itertools.pairwise(span))
        out.append(Stall(kill, gap, down))
    return out


def longest_gap(stored: Sequence[Stored]) -> float:
    times = sorted(s.stored_at for s in stored)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
