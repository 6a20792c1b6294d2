"""The read model's rows, as plain values: what a mission, a plan, a task and an agent
session look like to the people and programs asking the gateway."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

# The statuses and their rules are shared (``aether_events.status``); re-exported here
# for the read model's users.
from aether_events import MISSION_STATUSES as MISSION_STATUSES
from aether_events import TASK_STATUSES as TASK_STATUSES
from aether_events import TERMINAL_STATUSES as TERMINAL_STATUSES
from aether_events import MissionStatus as MissionStatus
from aether_events import PlannedTask
from aether_events import TaskStatus as TaskStatus

SessionStatus = Literal["running", "completed", "failed", "timed_out"]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """Where a completed mission's result goes: ``pending`` from the repository's
    preparation, which names the remote the git broker will push to (``sha`` empty until
    the mission completed, then its final commit, ``at`` the completion), then the push
    (``pushed``, ``BranchPushed``) or why the broker gave up (``failed``,
    ``BranchPushFailed``), and whether a person asked for it again since (``retrying``:
    ``at`` and ``reason`` stay the failure's)."""

    status: Literal["pending", "pushed", "failed", "retrying"]
    remote: str
    branch: str
    sha: str
    at: datetime
    # The remote branch was already at ``sha`` when the broker looked (nothing was sent).
    already_there: bool = False
    reason: str | None = None


class Mission(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``missions``."""

    id: str
    status: MissionStatus
    repository: str
    base_branch: str
    requirement: str
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    auto_approve: bool = False
    budget_usd: float | None = None
    max_concurrency: int = 4
    max_tasks: int = 20
    model_overrides: dict[str, str] = msgspec.field(default_factory=dict)
    verify_command: str | None = None
    requested_by: str | None = None
    # The agent runtime the mission asked for its tasks (None: each runner's default), and
    # per tier where it differs.
    runtime: str | None = None
    runtime_overrides: dict[str, str] = msgspec.field(default_factory=dict)
    integration_branch: str | None = None
    base_sha: str | None = None
    final_sha: str | None = None
    plan_version: int | None = None
    approved_version: int | None = None
    # Questions the planner asked and nobody has answered yet.
    questions: list[str] = msgspec.field(default_factory=list)
    answer: str | None = None
    offline: bool = False
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cache_read: int = 0
    tokens_cache_write: int = 0
    # The sum of the costs that are known; ``None`` until one is. ``cost_complete`` turns
    # false once a model call of unknown price is recorded, so a partial sum never
    # passes for the whole cost.
    cost_usd: float | None = None
    cost_complete: bool = True
    budget_warning: bool = False
    budget_exceeded: bool = False
    current_wave: int | None = None
    # How many times the mission was paused and resumed: a pause or resume command names
    # its step by these, so a repeated command is stored once.
    pauses: int = 0
    resumes: int = 0
    error: str | None = None
    # Set once the git broker delivered the result, or gave up (``AETHER_PUSH_REMOTE``).
    delivery: Delivery | None = None
    # Events of this mission the read model could not store as they were (see
    # ``ProjectionFailure``): non-zero means this record may be incomplete.
    projection_failures: int = 0


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``plans``: a version of a mission's plan."""

    mission_id: str
    version: int
    tasks: list[PlannedTask]
    produced_at: datetime
    rationale: str = ""
    model: str = ""
    offline: bool = False
    repairs: list[str] = msgspec.field(default_factory=list)


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``tasks``: where a planned task stands now."""

    mission_id: str
    task_id: str
    title: str
    updated_at: datetime
    position: int = 0
    description: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    depends_on: list[str] = msgspec.field(default_factory=list)
    tier: str = "standard"
    status: TaskStatus = "pending"
    attempt: int = 0
    wave: int | None = None
    model: str | None = None
    # The agent runtime of the current attempt: the one its TaskReady asked for (None:
    # the runner's default), then the one its agent started with.
    runtime: str | None = None
    runner_id: str | None = None
    branch: str | None = None
    base_sha: str | None = None
    commit_sha: str | None = None
    merge_sha: str | None = None
    # The merged attempt resolved a merge conflict (BranchMerged.resolution).
    resolution: bool = False
    summary: str = ""
    files_changed: list[str] = msgspec.field(default_factory=list)
    # Scope drift: changed files its planned scope (``files``) does not cover.
    files_outside_scope: list[str] = msgspec.field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    cost_complete: bool = True
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class UsageEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``usage_records``: a model call (or several) and its cost, named by
    the event it comes from (its sequence and part: see ``carried``)."""

    seq: int
    part: int = 0
    mission_id: str
    occurred_at: datetime
    service: str
    step: str
    model: str
    offline: bool = False
    task_id: str | None = None
    attempt: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None


MessageKind = Literal["question", "message", "answer"]


class MissionMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``mission_messages``: the conversation between people and the planner."""

    seq: int
    mission_id: str
    kind: MessageKind
    text: str
    occurred_at: datetime
    author: str | None = None


class BudgetAlert(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``budget_alerts``: a budget warned about or used up.

    ``scope`` is ``mission``, ``daily:YYYY-MM-DD`` or ``monthly:YYYY-MM``.
    """

    seq: int
    mission_id: str
    scope: str
    kind: Literal["warning", "exceeded"]
    spent_usd: float
    budget_usd: float
    occurred_at: datetime


class SessionUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """What one event says about an agent session (one attempt at one task).

    The adapter merges it into ``agent_sessions`` so that the order in which the mission
    stream and the telemetry stream are folded does not change the result: ``status`` is
    only set by mission events, ``last_seen_at`` keeps the latest time, progress is taken
    from the newest progress report, turns and tool calls are the most any event counted
    (they only grow: the attempt's result counts them all), and usage adds up.
    """

    mission_id: str
    task_id: str
    attempt: int
    seen_at: datetime
    runner_id: str | None = None
    model: str | None = None
    status: SessionStatus | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    # Progress (from AgentProgress), applied when newer than what is stored; turns and
    # tool calls from a result too.
    progress_at: datetime | None = None
    turns: int = 0
    tool_calls: int = 0
    files_changed: list[str] = msgspec.field(default_factory=list)
    last_action: str = ""
    # Usage to add (from UsageRecorded).
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    unknown_cost: bool = False


class AgentSession(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``agent_sessions``: an agent at work on one attempt of one task."""

    mission_id: str
    task_id: str
    attempt: int
    status: SessionStatus
    last_seen_at: datetime
    runner_id: str | None = None
    model: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    progress_at: datetime | None = None
    turns: int = 0
    tool_calls: int = 0
    files_changed: list[str] = msgspec.field(default_factory=list)
    last_action: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    cost_complete: bool = True


FailureOutcome = Literal["sanitised", "placeholder", "skipped"]


class ProjectionFailure(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``projection_failures``: an event the read model could not store as it
    was, and what it stored instead (``sanitised``: the event with the characters
    PostgreSQL refuses replaced; ``placeholder``: a bare mission row; ``skipped``:
    nothing)."""

    stream: Literal["missions", "telemetry"]
    seq: int
    mission_id: str
    type: str
    error: str
    outcome: FailureOutcome
    failed_at: datetime
