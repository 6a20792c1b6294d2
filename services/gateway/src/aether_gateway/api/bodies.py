"""Request and response bodies. Requests refuse unknown fields, so a misspelt option is
an error instead of being ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from aether_events import Tier
from aether_events.estimates import PlanEstimate
from aether_gateway.adapters.queries import StoredEvent, UsageRow
from aether_gateway.adapters.tokens import TokenInfo
from aether_gateway.api.inputs import NOT_BLANK
from aether_gateway.domain import (
    AgentSession,
    Graph,
    Mission,
    MissionMessage,
    Plan,
    ProjectionFailure,
    Task,
)
from aether_gateway.domain.auth import Scope
from aether_gateway.domain.steps import FailedStep
from aether_runtime.runners import RunnerEntry

Reason = Annotated[str, msgspec.Meta(max_length=2000)]

RuntimeName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,39}$")]

# --- commands --------------------------------------------------------------------------


class CreateMission(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A mission request."""

    repository: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=NOT_BLANK)]
    requirement: Annotated[str, msgspec.Meta(min_length=1, max_length=20000, pattern=NOT_BLANK)]
    # Empty or left out: the repository's default branch, which the git broker reads.
    base_branch: Annotated[str, msgspec.Meta(max_length=255)] = ""
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    auto_approve: bool = False
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    max_tasks: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    # Tasks whose files overlap may run at once (their merges are line-level).
    allow_file_overlap: bool = False
    # Per model tier (``small``, ``standard``, ``complex``): another key is refused.
    model_overrides: dict[Tier, str] = msgspec.field(default_factory=dict)
    verify_command: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    # The agent runtime of the tasks, and per tier where it differs: a name no live runner
    # has is refused (``GET /runtimes``), unless no runner has announced itself.
    runtime: RuntimeName | None = None
    runtime_overrides: dict[Tier, RuntimeName] = msgspec.field(default_factory=dict)


class MissionAccepted(msgspec.Struct, kw_only=True):
    mission_id: str
    url: str
    events_url: str
    # The mission's budget: the one asked for, else the gateway's default (None: none).
    budget_usd: float | None = None
    # Set when the runtimes the request names could not be checked (no runner has
    # announced itself, or the bus's registry could not be read): the mission is kept,
    # and a task whose runtime no runner has fails its first attempt, saying so.
    warning: str | None = None


class ApprovePlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which plan version to approve; the latest when left out."""

    version: Annotated[int, msgspec.Meta(ge=1)] | None = None


class PlanApprovalAccepted(msgspec.Struct, kw_only=True):
    mission_id: str
    url: str
    version: int
    event_id: str


class PostMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answers to the planner's questions, or feedback on the plan awaiting approval."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=20000, pattern=NOT_BLANK)]


class MessageAccepted(msgspec.Struct, kw_only=True):
    """``revision_requested``: the message was feedback on the plan awaiting approval,
    and a revision of that plan was asked for."""

    mission_id: str
    url: str
    event_id: str
    revision_requested: bool


class PauseMission(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason = ""


class CancelMission(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason = ""


class SkipTask(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason = ""


class RaiseBudget(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The mission's new budget in USD: more than the current one."""

    budget_usd: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]


class CommandAccepted(msgspec.Struct, kw_only=True):
    """The command's event is stored; the mission's URL shows its effect once folded."""

    mission_id: str
    url: str
    event_id: str


# --- queries ---------------------------------------------------------------------------


class MissionPage(msgspec.Struct, kw_only=True):
    """One page of missions; ``next_cursor`` fetches the next (``null`` on the last)."""

    missions: list[Mission]
    next_cursor: str | None = None


class TaskView(Task, frozen=True, kw_only=True):
    """A task with the agent session of its current attempt, if one started."""

    agent: AgentSession | None = None


class MissionDetail(Mission, frozen=True, kw_only=True):
    """A mission with its plans, tasks, graph, conversation and remaining budget."""

    url: str
    events_url: str
    plan: Plan | None = None
    plans: list[Plan] = msgspec.field(default_factory=list)
    tasks: list[TaskView] = msgspec.field(default_factory=list)
    graph: Graph = msgspec.field(default_factory=lambda: Graph(nodes=[], edges=[], layers=[]))
    messages: list[MissionMessage] = msgspec.field(default_factory=list)
    budget_remaining_usd: float | None = None
    # The events counted in ``projection_failures``: what the read model could not store.
    projection_errors: list[ProjectionFailure] = msgspec.field(default_factory=list)
    # Events a service could not handle (see GET /missions/{id}/steps).
    failed_steps: list[FailedStep] = msgspec.field(default_factory=list)
    # Per plan version: what each task is expected to cost from its tier (the
    # scheduler's reservation rule; nothing for a plan the offline model runs).
    plan_estimates: list[PlanEstimate] = msgspec.field(default_factory=list)


class TaskPage(msgspec.Struct, kw_only=True):
    tasks: list[Task]
    next_cursor: str | None = None


class TaskDetail(TaskView, frozen=True, kw_only=True):
    """A task with every attempt's agent session, oldest first."""

    sessions: list[AgentSession] = msgspec.field(default_factory=list)


class Runner(msgspec.Struct, kw_only=True):
    """An agent-runner instance, as its sessions and heartbeats show it.

    ``status``: ``active`` (working and heard from lately), ``idle`` (heard from lately,
    nothing running) or ``gone`` (not heard from for a while).
    """

    runner_id: str
    status: Literal["active", "idle", "gone"]
    last_seen_at: datetime
    running: list[AgentSession]
    sessions: int
    completed: int
    failed: int


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[Runner]


class RuntimeOffer(msgspec.Struct, kw_only=True):
    """One agent runtime and the live runners that have it."""

    name: str
    runners: list[str]


class RuntimeList(msgspec.Struct, kw_only=True):
    """The agent runtimes of the live runners, by name, and the runners' own entries
    (``runner_id``, ``host``, ``runtimes``, ``default_runtime``, ``lanes``, ``version``,
    ``started_at``, ``announced_at``, ``refresh_seconds``); ``tiers``: the model tiers a
    planned task may have, cheapest first, which a mission's ``runtime_overrides`` name."""

    runtimes: list[RuntimeOffer]
    runners: list[RunnerEntry]
    tiers: list[str]


class EventPage(msgspec.Struct, kw_only=True):
    """Events after a sequence; ``next_after`` continues (``null`` when none remain)."""

    events: list[StoredEvent]
    next_after: int | None = None


class UsageLine(UsageRow, frozen=True, kw_only=True):
    """Usage of one group, with the budget that applies to it (day, month, mission)."""

    budget_usd: float | None = None
    budget_exceeded: bool = False


class UsageReport(msgspec.Struct, kw_only=True):
    group_by: str
    rows: list[UsageLine]
    total: UsageRow


class MissionUsage(msgspec.Struct, kw_only=True):
    """A mission's spend against its budget, by model, task and day."""

    mission_id: str
    budget_usd: float | None
    spent_usd: float | None
    remaining_usd: float | None
    cost_complete: bool
    budget_warning: bool
    budget_exceeded: bool
    total: UsageRow
    by_model: list[UsageRow]
    by_task: list[UsageRow]
    by_day: list[UsageRow]


# --- admin -----------------------------------------------------------------------------


class CreateToken(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)]
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class TokenCreated(TokenInfo, frozen=True, kw_only=True):
    """The new token; ``token`` is the secret, shown this once and never again."""

    token: str


class TokenList(msgspec.Struct, kw_only=True):
    tokens: list[TokenInfo]


class WhoAmI(msgspec.Struct, kw_only=True):
    id: str
    name: str
    kind: str
    scopes: list[str]


class RebuildResult(msgspec.Struct, kw_only=True):
    """The read model folded again from both streams, up to these sequences."""

    missions_sequence: int
    telemetry_sequence: int
    events_folded: int
    seconds: float
