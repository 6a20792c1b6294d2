"""The v1 event catalogue.

Events are facts in the past tense and are never edited. A schema changes only by adding
optional fields with defaults; the wire tag of a class never changes (it is spelled out on
every class so a rename of the Python class cannot move it). Stored samples of every event
live in ``libs/events/tests/samples`` and must keep decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal, TypeVar, get_args

import msgspec

from aether_events.usage import Usage

E = TypeVar("E", bound="Event")

# The model tiers a plan may ask for, cheapest first (``TIERS`` lists them in that order).
Tier = Literal["small", "standard", "complex"]
TIERS: tuple[Tier, ...] = get_args(Tier)


def as_tier(value: str) -> Tier | None:
    """``value`` as a tier, or ``None`` when it names none."""
    for tier in TIERS:
        if value == tier:
            return tier
    return None


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Common metadata of every event.

    ``causation_id`` is the event that caused this one (``None`` for a user's command);
    ``correlation_id`` is the mission's request, shared by every event of the mission.
    """

    event_id: str
    mission_id: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None


# --- value types carried inside events -------------------------------------------------


class RepoFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    size: int


class PlannedTask(msgspec.Struct, frozen=True, kw_only=True):
    """One node of a plan: what to do, where, after what, and with which model tier."""

    id: str
    title: str
    description: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    depends_on: list[str] = msgspec.field(default_factory=list)
    tier: Tier = "standard"
    acceptance_criteria: list[str] = msgspec.field(default_factory=list)
    # Higher runs first among tasks that are ready at the same time.
    priority: int = 0
    # A role the repository defines (``.claude/agents/<role>.md``) the agent takes on
    # (added in v1.2).
    role: str | None = None


# --- mission lifecycle ---------------------------------------------------------------


class MissionRequested(Event, frozen=True, kw_only=True, tag="mission_requested"):
    """``base_branch`` empty (or left out): the repository's default branch, which the git
    broker reads when it prepares the repository (a local repository's ``HEAD``, a
    remote's ``HEAD`` symbolic ref) and names in ``RepositoryPrepared.base_branch``.
    Events before this rule always carried a name, so their meaning is unchanged."""

    repository: str
    requirement: str
    base_branch: str = ""
    budget_usd: float | None = None
    auto_approve: bool = False
    max_concurrency: int = 4
    max_tasks: int = 20
    model_overrides: dict[str, str] = msgspec.field(default_factory=dict)
    verify_command: str | None = None
    requested_by: str | None = None
    # Let tasks whose file scopes overlap run at the same time (off: the later one waits).
    allow_file_overlap: bool = False
    # The agent runtime of the mission's tasks ("builtin", "claude-code"; None: the
    # runner's default), and per task tier ("small", …) where it differs (added in v1.2).
    runtime: str | None = None
    runtime_overrides: dict[str, str] = msgspec.field(default_factory=dict)


class RepositoryPrepared(Event, frozen=True, kw_only=True, tag="repository_prepared"):
    repository_path: str
    base_branch: str
    base_sha: str
    integration_branch: str
    files: list[RepoFile] = msgspec.field(default_factory=list)
    file_count: int = 0
    files_truncated: bool = False
    # Where the broker will push the integration branch once the mission completes (a
    # URL without credentials, a path or a remote's name); empty: nowhere. A completed
    # mission with one has its delivery (BranchPushed or BranchPushFailed) still to come.
    delivery_remote: str = ""


class PlanProduced(Event, frozen=True, kw_only=True, tag="plan_produced"):
    version: int
    tasks: list[PlannedTask]
    rationale: str = ""
    model: str = ""
    offline: bool = False
    repairs: list[str] = msgspec.field(default_factory=list)
    # The requirement the plan was made from when it is not the mission's as submitted
    # (a repository command the mission invoked, its arguments put in); agents get it.
    requirement: str | None = None


class PlanFailed(Event, frozen=True, kw_only=True, tag="plan_failed"):
    reason: str
    version: int = 1


class PlanRevisionRequested(Event, frozen=True, kw_only=True, tag="plan_revision_requested"):
    feedback: str
    base_version: int
    requested_by: str | None = None


class PlanClarificationRequested(
    Event, frozen=True, kw_only=True, tag="plan_clarification_requested"
):
    """The planner needs answers before it can plan; the mission waits for a message."""

    questions: list[str]
    model: str = ""
    offline: bool = False


class MissionAnswered(Event, frozen=True, kw_only=True, tag="mission_answered"):
    """The mission was a question: the planner answered it and there is nothing to build."""

    answer: str
    model: str = ""
    offline: bool = False


class MissionMessagePosted(Event, frozen=True, kw_only=True, tag="mission_message_posted"):
    """A person wrote to the mission: answers to the planner's questions, or plan feedback."""

    text: str
    author: str | None = None


class PlanApproved(Event, frozen=True, kw_only=True, tag="plan_approved"):
    version: int
    approved_by: str | None = None
    automatic: bool = False


class MissionPaused(Event, frozen=True, kw_only=True, tag="mission_paused"):
    reason: str = ""
    requested_by: str | None = None


class MissionResumed(Event, frozen=True, kw_only=True, tag="mission_resumed"):
    requested_by: str | None = None


class MissionCancelled(Event, frozen=True, kw_only=True, tag="mission_cancelled"):
    reason: str = ""
    requested_by: str | None = None


class MissionCompleted(Event, frozen=True, kw_only=True, tag="mission_completed"):
    final_sha: str
    integration_branch: str
    tasks_merged: int
    usage: Usage = msgspec.field(default_factory=Usage)
    duration_seconds: float = 0.0


class MissionFailed(Event, frozen=True, kw_only=True, tag="mission_failed"):
    reason: str


class BranchPushed(Event, frozen=True, kw_only=True, tag="branch_pushed"):
    """The git broker delivered a completed mission: ``integration_branch`` on ``remote``
    (its URL or path, without credentials) points at ``sha``. ``already_there``: the
    remote branch was found at ``sha`` (a completion handled again), nothing was sent."""

    integration_branch: str
    sha: str
    remote: str
    already_there: bool = False


class DeliveryRetryRequested(Event, frozen=True, kw_only=True, tag="delivery_retry_requested"):
    """A person asked the git broker to push a completed mission's result again after it
    gave up (``BranchPushFailed``): the remote fixed, the branch moved back."""

    requested_by: str | None = None


class BranchPushFailed(Event, frozen=True, kw_only=True, tag="branch_push_failed"):
    """The git broker gave up delivering a completed mission (after its retries, or at
    once when someone else moved the remote branch): ``reason`` says why, for people."""

    integration_branch: str
    sha: str
    remote: str
    reason: str


class BudgetRaised(Event, frozen=True, kw_only=True, tag="budget_raised"):
    budget_usd: float
    requested_by: str | None = None


# --- budgets -----------------------------------------------------------------------


class BudgetWarning(Event, frozen=True, kw_only=True, tag="budget_warning"):
    spent_usd: float
    budget_usd: float
    scope: str = "mission"


class BudgetExceeded(Event, frozen=True, kw_only=True, tag="budget_exceeded"):
    spent_usd: float
    budget_usd: float
    scope: str = "mission"


# --- tasks -------------------------------------------------------------------------


class TaskReady(Event, frozen=True, kw_only=True, tag="task_ready"):
    """``carried``: see ``carried_by`` (added in v1.3)."""

    task: PlannedTask
    attempt: int
    model: str
    requirement: str = ""
    wave: int = 0
    max_cost_usd: float | None = None
    context: str = ""
    # What the scheduler reserved from the budget for this attempt.
    estimated_cost_usd: float | None = None
    # The agent runtime to work it with (None: the runner's default; added in v1.2).
    runtime: str | None = None
    # A resolution attempt: this earlier commit of the task, which conflicted, is merged
    # into the new workspace with its conflicts marked for the agent to resolve.
    resolve_sha: str | None = None
    carried: list[WaveCompleted | WaveStarted] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for event in self.carried:
            if event.mission_id != self.mission_id:
                raise ValueError("a task_ready carries an event of another mission")


class WorkspaceReady(Event, frozen=True, kw_only=True, tag="workspace_ready"):
    task: PlannedTask
    attempt: int
    model: str
    branch: str
    worktree_path: str
    base_sha: str
    requirement: str = ""
    max_cost_usd: float | None = None
    context: str = ""
    # The agent runtime to work it with (None: the runner's default; added in v1.2).
    runtime: str | None = None
    # A resolution attempt: the commit merged in, and the files left with conflict markers.
    resolve_sha: str | None = None
    conflicted_files: list[str] = msgspec.field(default_factory=list)
    # The worktree's git directory (``<repository>/.git/worktrees/<id>``), named by the
    # broker so that the runner never has to believe the worktree's own ``.git`` file.
    git_dir: str = ""
    # A push token for this attempt alone (its task branch, until the attempt ends), for
    # a runner that fetches and pushes over smart HTTP; empty where none is served.
    push_token: str = ""


class AgentStarted(Event, frozen=True, kw_only=True, tag="agent_started"):
    """``sandbox``: what the attempt's commands run in (``bubblewrap``, ``unconfined`` when
    an operator chose so, ``unavailable`` when commands are refused, ``None`` when the
    agent has no command tool or the runner predates the field). ``runtime``: the agent
    runtime the attempt runs with (``builtin``, ``claude-code``, a command runtime's name;
    "" from a runner before v1.4)."""

    task_id: str
    attempt: int
    runner_id: str
    model: str
    sandbox: str | None = None
    runtime: str = ""


class UsageRecorded(Event, frozen=True, kw_only=True, tag="usage_recorded"):
    """One model call: which service made it, for which step, and what it cost."""

    service: str
    model: str
    usage: Usage
    step: str
    offline: bool = False
    task_id: str | None = None
    attempt: int | None = None


class AgentCompleted(Event, frozen=True, kw_only=True, tag="agent_completed"):
    """``carried``: see ``carried_by`` (added in v1.3)."""

    task_id: str
    attempt: int
    commit_sha: str
    branch: str
    summary: str = ""
    files_changed: list[str] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    # Scope drift: the changed files the task's planned scope does not cover.
    files_outside_scope: list[str] = msgspec.field(default_factory=list)
    carried: list[AgentStarted | UsageRecorded] = msgspec.field(default_factory=list)
    # The attempt's model replies and tool calls, all told (added in v1.4; 0 from an
    # older runner). Progress reports count them only every few seconds while it works.
    turns: int = 0
    tool_calls: int = 0

    def __post_init__(self) -> None:
        _check_carried(self)


class AgentFailed(Event, frozen=True, kw_only=True, tag="agent_failed"):
    """``carried``: see ``carried_by`` (added in v1.3)."""

    task_id: str
    attempt: int
    reason: str
    retryable: bool = True
    carried: list[AgentStarted | UsageRecorded] = msgspec.field(default_factory=list)
    # As ``AgentCompleted``'s (added in v1.4).
    turns: int = 0
    tool_calls: int = 0

    def __post_init__(self) -> None:
        _check_carried(self)


def _check_carried(result: AgentCompleted | AgentFailed) -> None:
    own = (result.mission_id, result.task_id, result.attempt)
    for event in result.carried:
        if (event.mission_id, event.task_id, event.attempt) != own:
            raise ValueError("an attempt's result carries an event of another attempt")


def carried_by(event: Event) -> list[Event]:
    """The events ``event`` stands for, in the order they happened: an attempt's result
    (``AgentCompleted``, ``AgentFailed``) that carries the attempt's ``AgentStarted`` and
    ``UsageRecorded`` events is those events, then itself; a ``TaskReady`` that carries
    the ``WaveCompleted`` and ``WaveStarted`` the scheduler decided with it is those, then
    itself; any other event is itself.

    An attempt's stream holds those events back for a moment (``TRANSCRIPT_LINGER`` in
    the agent runner) and publishes what it still holds inside the result, so an attempt
    that ends that soon is one message on the bus instead of four; the scheduler sends
    the waves a merge ends and begins inside the TaskReady decided with them (a chained
    task's: one message instead of three). Each carried event keeps its own id and time,
    and every consumer folds it as if it had come alone, right before the event that
    carries it. One published alone before is the same event again (same id), folded
    once."""
    if isinstance(event, AgentCompleted | AgentFailed | TaskReady) and event.carried:
        return [*event.carried, event]
    return [event]


def alone(event: Event) -> Event:
    """``event`` as it would have come without the events it carries."""
    if isinstance(event, AgentCompleted | AgentFailed | TaskReady) and event.carried:
        return msgspec.structs.replace(event, carried=[])
    return event


def unfolded(events: Iterable[Event]) -> list[Event]:
    """The events ``events`` stand for (``carried_by``), each once (the first copy of an
    id, as every consumer folds it: an event carried by a result may have been published
    alone before), in the order they come: what a reader of a stream that asks whether
    an event happened, or when, must look at rather than the messages stored."""
    return _each_once(events, carried_by)


def _each_once(events: Iterable[Event], parts: Callable[[Event], Iterable[E]]) -> list[E]:
    """The ``parts`` of ``events``, in order, each id once (its first copy)."""
    seen: set[str] = set()
    out: list[E] = []
    for event in events:
        for part in parts(event):
            if part.event_id not in seen:
                seen.add(part.event_id)
                out.append(part)
    return out


class BranchMerged(Event, frozen=True, kw_only=True, tag="branch_merged"):
    """The git broker merged an attempt's commit into the integration branch at
    ``merge_sha``. ``resolution`` (added in v9): the attempt was a conflict resolution
    (its ``TaskReady`` and ``WorkspaceReady`` carried ``resolve_sha``); ``False`` from a
    broker before v9."""

    task_id: str
    attempt: int
    merge_sha: str
    integration_branch: str
    fast_forward: bool = False
    files_changed: list[str] = msgspec.field(default_factory=list)
    # Files both sides had changed, merged line by line (a clean three-way content merge).
    lines_merged: list[str] = msgspec.field(default_factory=list)
    resolution: bool = False


class MergeConflicted(Event, frozen=True, kw_only=True, tag="merge_conflicted"):
    """The git broker did not merge an attempt's commit; the integration branch stayed at
    ``integration_sha``. ``refusal`` says why (added in v8): ``conflict`` (both sides
    changed ``files``), ``unsafe_paths`` (the commit has paths no checkout may write,
    ``files``), ``conflict_markers`` (the result would add blocks of conflict markers,
    ``detail`` names where), ``verification_failed`` (the merged result failed the
    mission's verification command, ``detail`` holds its output), ``missing_commit`` or
    ``too_large`` (the task's change holds more files, bytes or depth than the broker
    merges, ``detail`` says which); "" from a broker before v8, which reported
    ``conflict_markers`` and ``verification_failed`` with no ``files``."""

    task_id: str
    attempt: int
    files: list[str]
    integration_sha: str
    detail: str = ""
    refusal: str = ""


class MergeWithheld(Event, frozen=True, kw_only=True, tag="merge_withheld"):
    """An attempt's commit the git broker did not merge because its mission ended first
    (cancelled; added in v1.5): the integration branch stayed at ``integration_sha``, the
    commit is still on the attempt's task branch until the mission's clean-up.
    ``reason`` says why, for people (the cancel's own reason and who asked, if given).
    ``verification`` (added in v10): what the verification the cancel stopped said, as a
    failed verification's ``MergeConflicted.detail`` does (its first line, then
    ``--- output ---`` and what the command printed until it was stopped); empty when
    none was stopped, and from a broker before v10."""

    task_id: str
    attempt: int
    commit_sha: str
    integration_sha: str
    reason: str
    verification: str = ""


class TaskRetried(Event, frozen=True, kw_only=True, tag="task_retried"):
    task_id: str
    attempt: int
    reason: str
    not_before: datetime | None = None


class TaskTimedOut(Event, frozen=True, kw_only=True, tag="task_timed_out"):
    task_id: str
    attempt: int
    last_heartbeat_at: datetime | None = None


class TaskEscalated(Event, frozen=True, kw_only=True, tag="task_escalated"):
    task_id: str
    attempt: int
    reason: str


class TaskRetryRequested(Event, frozen=True, kw_only=True, tag="task_retry_requested"):
    """A person asked for an escalated task to run again."""

    task_id: str
    requested_by: str | None = None


class TaskSkipped(Event, frozen=True, kw_only=True, tag="task_skipped"):
    """A person decided an escalated task is not needed; its dependents may go on."""

    task_id: str
    reason: str = ""
    requested_by: str | None = None


class WorkspaceFailed(Event, frozen=True, kw_only=True, tag="workspace_failed"):
    """The git broker could not prepare a task's branch or worktree."""

    task_id: str
    attempt: int
    reason: str
    retryable: bool = False


class WaveStarted(Event, frozen=True, kw_only=True, tag="wave_started"):
    wave: int
    task_ids: list[str] = msgspec.field(default_factory=list)


class WaveCompleted(Event, frozen=True, kw_only=True, tag="wave_completed"):
    wave: int


# --- steps: one service's handling of one event --------------------------------------


class StepFailed(Event, frozen=True, kw_only=True, tag="step_failed"):
    """A service's handler failed on an event at its last allowed delivery (or, with
    ``retry_of``, on a retry a person asked for). The message was terminated so later
    events go on; ``StepRetryRequested`` runs the handler on the event again."""

    service: str
    consumer: str
    failed_event_id: str
    failed_event_type: str
    stream: str
    stream_sequence: int
    error: str
    attempts: int
    retry_of: str | None = None


class StepRetryRequested(Event, frozen=True, kw_only=True, tag="step_retry_requested"):
    """A person asked a service to handle a failed event again (see ``StepFailed``)."""

    service: str
    consumer: str
    failed_event_id: str
    stream: str
    stream_sequence: int
    requested_by: str | None = None


class StepRecovered(Event, frozen=True, kw_only=True, tag="step_recovered"):
    """A retried step succeeded: the service handled the event that had failed."""

    service: str
    consumer: str
    failed_event_id: str
    retry_of: str


# --- telemetry (second stream, short retention) -------------------------------------


class AgentProgress(Event, frozen=True, kw_only=True, tag="agent_progress"):
    task_id: str
    attempt: int
    runner_id: str
    turns: int = 0
    tool_calls: int = 0
    files_changed: list[str] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    last_action: str = ""


class AgentHeartbeat(Event, frozen=True, kw_only=True, tag="agent_heartbeat"):
    task_id: str
    attempt: int
    runner_id: str


TranscriptKind = Literal["prompt", "turn", "tool_call", "command", "note", "output"]
# How far apart the runs of one attempt number their transcript entries, for every
# runtime but the built-in loop: run ``r``'s entries are ``r * TRANSCRIPT_RUN_STRIDE``,
# the next one, and so on without a hole. The built-in loop's entry ``n`` is its journal's
# record ``n``, and records that show nothing leave holes.
TRANSCRIPT_RUN_STRIDE = 1_000_000


class TranscriptRecorded(Event, frozen=True, kw_only=True, tag="transcript_recorded"):
    """One entry of an attempt's transcript: the prompt, a model turn, a tool call with
    its arguments and result, a command with its exit status, a note sent back to the
    model, or a line of a CLI agent's output.

    ``sequence`` orders the entries of one attempt and, with the attempt, names the entry:
    a resumed attempt publishes an entry again under the same sequence (and event id), and
    the gateway keeps the first. Every text field is an excerpt cut to the runner's cap
    (``truncated`` says one was) with configured secrets redacted. ``arguments`` is the
    tool call's input as JSON text. ``exit_code`` is ``None`` for a command that did not
    exit by itself (timed out or stopped: ``status`` says which).
    """

    task_id: str
    attempt: int
    runner_id: str
    sequence: int
    kind: TranscriptKind
    runtime: str = ""
    text: str = ""
    tool: str = ""
    arguments: str = ""
    result: str = ""
    is_error: bool = False
    exit_code: int | None = None
    status: str = ""
    stop_reason: str | None = None
    usage: Usage | None = None
    truncated: bool = False


class TranscriptEntries(Event, frozen=True, kw_only=True, tag="transcript_entries"):
    """Several entries of one attempt's transcript in one message: what its runner had to
    publish within a moment (the entries of a short attempt, a burst of a CLI agent's
    output), sent as one message with one acknowledgement and one delivery to each
    consumer rather than one each.

    Each entry is a whole ``TranscriptRecorded`` with its own id and sequence, so the
    gateway keeps the first copy of each entry however the entries were grouped (a
    resumed attempt may group them otherwise). Every entry is of this event's mission,
    task and attempt, and there is at least one: otherwise the event does not decode (an
    attempt's credential publishes only on its own attempt's subjects, and the entries
    inside must not name another)."""

    task_id: str
    attempt: int
    runner_id: str
    entries: list[TranscriptRecorded]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a transcript_entries event holds no entry")
        own = (self.mission_id, self.task_id, self.attempt)
        for entry in self.entries:
            if (entry.mission_id, entry.task_id, entry.attempt) != own:
                raise ValueError("a transcript entry of another attempt")


def entries_of(event: Event) -> list[TranscriptRecorded]:
    """The transcript entries ``event`` carries: itself, the entries of a
    ``TranscriptEntries``, or none."""
    if isinstance(event, TranscriptRecorded):
        return [event]
    if isinstance(event, TranscriptEntries):
        return list(event.entries)
    return []


def transcript_of(events: Iterable[Event]) -> list[TranscriptRecorded]:
    """Every transcript entry ``events`` carry, each once (the first copy of an id, as
    the gateway keeps it: a resumed attempt sends its entries again, maybe grouped
    otherwise), in the order they come."""
    return _each_once(events, entries_of)


AnyEvent = (
    MissionRequested
    | RepositoryPrepared
    | PlanProduced
    | PlanFailed
    | PlanRevisionRequested
    | PlanClarificationRequested
    | MissionAnswered
    | MissionMessagePosted
    | PlanApproved
    | MissionPaused
    | MissionResumed
    | MissionCancelled
    | MissionCompleted
    | MissionFailed
    | BranchPushed
    | BranchPushFailed
    | DeliveryRetryRequested
    | BudgetWarning
    | BudgetExceeded
    | BudgetRaised
    | TaskReady
    | WorkspaceReady
    | AgentStarted
    | UsageRecorded
    | AgentCompleted
    | AgentFailed
    | BranchMerged
    | MergeConflicted
    | MergeWithheld
    | TaskRetried
    | TaskTimedOut
    | TaskEscalated
    | TaskRetryRequested
    | TaskSkipped
    | WorkspaceFailed
    | WaveStarted
    | WaveCompleted
    | StepFailed
    | StepRetryRequested
    | StepRecovered
    | AgentProgress
    | AgentHeartbeat
    | TranscriptRecorded
    | TranscriptEntries
)

# Transcript entries travel with telemetry (the gateway keeps them durably in its
# database); the mission stream stays the small record every service folds.
TELEMETRY_TYPES: frozenset[type[Event]] = frozenset(
    {AgentProgress, AgentHeartbeat, TranscriptRecorded, TranscriptEntries}
)

TERMINAL_TYPES: frozenset[type[Event]] = frozenset(
    {MissionCompleted, MissionFailed, MissionCancelled, MissionAnswered}
)


def tag_of(cls: type[Event]) -> str:
    """The wire tag of an event class (``MissionRequested`` → ``mission_requested``)."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


ALL_TYPES: tuple[type[Event], ...] = AnyEvent.__args__
TYPES_BY_TAG: dict[str, type[Event]] = {tag_of(cls): cls for cls in ALL_TYPES}
