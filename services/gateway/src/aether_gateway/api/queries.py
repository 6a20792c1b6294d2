"""Queries: missions, tasks, agents, events and usage, from the read model."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from aether_events import TYPES_BY_TAG, is_valid_token
from aether_events.estimates import plan_estimate
from aether_gateway.adapters.queries import UsageRow
from aether_gateway.api.auth import READ
from aether_gateway.api.bodies import (
    AgentList,
    EventPage,
    MissionDetail,
    MissionPage,
    MissionUsage,
    Runner,
    TaskDetail,
    TaskPage,
    TaskView,
    UsageLine,
    UsageReport,
)
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import bad_request, error_responses, mission_not_found, not_found
from aether_gateway.api.steps import failed_steps_of
from aether_gateway.domain import (
    MISSION_STATUSES,
    TASK_STATUSES,
    AgentSession,
    Mission,
    Task,
    task_graph,
)

_ERRORS = error_responses(400, 401, 403)
_ERRORS_404 = error_responses(400, 401, 403, 404)

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size")]
Cursor = Annotated[
    str | None, QueryParameter(description="`next_cursor` of the previous page", max_length=500)
]
Statuses = Annotated[
    list[str] | None,
    QueryParameter(description="Only these statuses (repeat, or separate with commas)"),
]
Instant = Annotated[
    str | None, QueryParameter(description="ISO 8601 date (UTC) or date-time", max_length=40)
]

# --- parameter helpers -----------------------------------------------------------------


def _statuses(values: list[str] | None, allowed: tuple[str, ...]) -> list[str] | None:
    if not values:
        return None
    wanted = [s for v in values for s in v.split(",") if s]
    unknown = [s for s in wanted if s not in allowed]
    if unknown:
        raise bad_request(f"unknown status {unknown[0]!r}", allowed=list(allowed))
    return wanted or None


def _instant(name: str, raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date or date-time", key=name) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def encode_cursor(*parts: Any) -> str:
    text = json.dumps([p.isoformat() if isinstance(p, datetime) else p for p in parts])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(raw: str | None, kinds: tuple[type, ...]) -> tuple[Any, ...] | None:
    if not raw:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(parts, list) or len(parts) != len(kinds):
            raise ValueError("wrong shape")
        return tuple(
            datetime.fromisoformat(p) if kind is datetime else kind(p)
            for p, kind in zip(parts, kinds, strict=True)
        )
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise bad_request("cursor is not one this API gave out", key="cursor") from None


def _valid_mission_id(mission_id: str) -> str:
    if not is_valid_token(mission_id):
        raise mission_not_found(mission_id)
    return mission_id


# --- missions --------------------------------------------------------------------------


@get(
    "/missions",
    summary="List missions, newest first",
    guards=[READ],
    responses=_ERRORS,
    tags=["missions"],
)
async def list_missions(
    ctx: NamedDependency[GatewayContext],
    status: Statuses = None,
    repository: Annotated[str | None, QueryParameter(max_length=4096)] = None,
    since: Instant = None,
    until: Instant = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> MissionPage:
    """Filter by status, repository and creation time (``since`` inclusive, ``until``
    exclusive); follow ``next_cursor`` for the next page."""
    await ctx.settled()
    before = _decode_cursor(cursor, (datetime, str))
    missions = await ctx.queries.missions(
        statuses=_statuses(status, MISSION_STATUSES),
        repository=repository,
        since=_instant("since", since),
        until=_instant("until", until),
        before=(before[0], before[1]) if before else None,
        limit=limit + 1,
    )
    next_cursor = None
    if len(missions) > limit:
        missions = missions[:limit]
        last = missions[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return MissionPage(missions=missions, next_cursor=next_cursor)


def _current_sessions(sessions: list[AgentSession]) -> dict[tuple[str, int], AgentSession]:
    return {(s.task_id, s.attempt): s for s in sessions}


def _task_view(task: Task, sessions: dict[tuple[str, int], AgentSession]) -> TaskView:
    return TaskView(
        **msgspec.structs.asdict(task), agent=sessions.get((task.task_id, task.attempt))
    )


async def _mission_or_wait(ctx: GatewayContext, mission_id: str) -> Mission:
    """Reads its writes: a mission whose request is on the stream but not folded yet is
    waited for (briefly) rather than reported missing."""
    _valid_mission_id(mission_id)
    await ctx.settled()
    mission = await ctx.queries.mission(mission_id)
    if mission is None:
        # Look again even if the read model was not behind when asked (see _mission in
        # commands: the request may have been folded in between).
        await ctx.caught_up()
        mission = await ctx.queries.mission(mission_id)
    if mission is None:
        raise mission_not_found(mission_id)
    return mission


@get(
    "/missions/{mission_id:str}",
    summary="A mission with its plans, tasks, graph, messages and cost",
    guards=[READ],
    responses=_ERRORS_404,
    tags=["missions"],
)
async def get_mission(
    ctx: NamedDependency[GatewayContext], mission_id: FromPath[str]
) -> MissionDetail:
    mission = await _mission_or_wait(ctx, mission_id)
    plans = await ctx.queries.plans(mission_id)
    tasks = await ctx.queries.mission_tasks(mission_id)
    sessions = _current_sessions(await ctx.queries.sessions(mission_id=mission_id))
    url = ctx.mission_url(mission_id)
    remaining = None
    if mission.budget_usd is not None:
        remaining = max(0.0, mission.budget_usd - (mission.cost_usd or 0.0))
    return MissionDetail(
        **msgspec.structs.asdict(mission),
        url=url,
        events_url=f"{url}/events",
        plan=next((p for p in plans if p.version == mission.plan_version), None),
        plans=plans,
        tasks=[_task_view(t, sessions) for t in tasks],
        graph=task_graph(tasks),
        messages=await ctx.queries.messages(mission_id),
        budget_remaining_usd=remaining,
        projection_errors=(
            await ctx.read_model.failures(mission_id) if mission.projection_failures else []
        ),
        failed_steps=await failed_steps_of(ctx, mission_id),
        plan_estimates=[
            plan_estimate(
                plan.version,
                [(task.id, task.tier) for task in plan.tasks],
                # The offline model is free: a plan it made (its tasks run on it too,
                # as a stack without a key runs every call on it) reserves nothing.
                _free(ctx.settings.estimate_usd) if plan.offline else ctx.settings.estimate_usd,
            )
            for plan in plans
        ],
    )


def _free(estimates: dict[str, float]) -> dict[str, float]:
    return dict.fromkeys(estimates, 0.0)


@get(
    "/missions/{mission_id:str}/tasks/{task_id:str}",
    summary="One task with every attempt's agent session",
    guards=[READ],
    responses=_ERRORS_404,
    tags=["tasks"],
)
async def get_task(
    ctx: NamedDependency[GatewayContext], mission_id: FromPath[str], task_id: FromPath[str]
) -> TaskDetail:
    await _mission_or_wait(ctx, mission_id)
    task = await ctx.queries.task(mission_id, task_id)
    if task is None:
        raise not_found(f"task {task_id!r} of mission {mission_id!r}")
    sessions = [
        s for s in await ctx.queries.sessions(mission_id=mission_id) if s.task_id == task_id
    ]
    sessions.sort(key=lambda s: s.attempt)
    view = _task_view(task, _current_sessions(sessions))
    return TaskDetail(**msgspec.structs.asdict(view), sessions=sessions)


# --- tasks -----------------------------------------------------------------------------


@get(
    "/tasks",
    summary="List tasks, most recently changed first",
    guards=[READ],
    responses=_ERRORS,
    tags=["tasks"],
)
async def list_tasks(
    ctx: NamedDependency[GatewayContext],
    mission_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    status: Statuses = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> TaskPage:
    await ctx.settled()
    before = _decode_cursor(cursor, (datetime, str, str))
    tasks = await ctx.queries.tasks(
        mission_id=mission_id,
        statuses=_statuses(status, TASK_STATUSES),
        before=(before[0], before[1], before[2]) if before else None,
        limit=limit + 1,
    )
    next_cursor = None
    if len(tasks) > limit:
        tasks = tasks[:limit]
        last = tasks[-1]
        next_cursor = encode_cursor(last.updated_at, last.mission_id, last.task_id)
    return TaskPage(tasks=tasks, next_cursor=next_cursor)


# --- agents ----------------------------------------------------------------------------


def runners(sessions: list[AgentSession], now: datetime, stale_seconds: float) -> list[Runner]:
    """Group agent sessions by the runner that worked them, most recently seen first."""
    grouped: dict[str, list[AgentSession]] = {}
    for session in sessions:
        if session.runner_id:
            grouped.setdefault(session.runner_id, []).append(session)
    found = []
    for runner_id, group in grouped.items():
        last_seen = max(s.last_seen_at for s in group)
        running = [s for s in group if s.status == "running"]
        fresh = now - last_seen <= timedelta(seconds=stale_seconds)
        status: Literal["active", "idle", "gone"] = (
            "gone" if not fresh else "active" if running else "idle"
        )
        found.append(
            Runner(
                runner_id=runner_id,
                status=status,
                last_seen_at=last_seen,
                running=running if fresh else [],
                sessions=len(group),
                completed=sum(1 for s in group if s.status == "completed"),
                failed=sum(1 for s in group if s.status in ("failed", "timed_out")),
            )
        )
    found.sort(key=lambda r: (r.last_seen_at, r.runner_id), reverse=True)
    return found


@get(
    "/agents",
    summary="Agent runners and what they are doing, from their sessions and heartbeats",
    guards=[READ],
    responses=_ERRORS,
    tags=["agents"],
)
async def list_agents(
    ctx: NamedDependency[GatewayContext],
    mission_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    status: Annotated[Literal["active", "idle", "gone"] | None, QueryParameter()] = None,
) -> AgentList:
    """A runner is ``active`` while it works a task and has been heard from lately,
    ``idle`` when it has been heard from but runs nothing, ``gone`` when it has not been
    heard from for a while (``AETHER_AGENT_STALE_SECONDS``)."""
    await ctx.settled()
    sessions = await ctx.queries.sessions(mission_id=mission_id)
    found = runners(sessions, datetime.now(UTC), ctx.settings.agent_stale_seconds)
    return AgentList(agents=[r for r in found if status is None or r.status == status])


# --- events ----------------------------------------------------------------------------


@get(
    "/events",
    summary="Stored events after a sequence, oldest first",
    guards=[READ],
    responses=_ERRORS,
    tags=["events"],
)
async def list_events(
    ctx: NamedDependency[GatewayContext],
    mission_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    type: Annotated[
        list[str] | None, QueryParameter(description="Only these event types (repeat)")
    ] = None,
    task_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    after: Annotated[int, QueryParameter(ge=0, description="A stream sequence")] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> EventPage:
    """Each event with its stream sequence (``seq``); pass the last one (or
    ``next_after``) as ``after`` for the next page. The events an attempt's result
    carried come before it with its sequence; a page never ends among them, so it may
    hold a few more than ``limit``."""
    await ctx.settled()
    types = [t for v in type or [] for t in v.split(",") if t] or None
    unknown = [t for t in types or [] if t not in TYPES_BY_TAG]
    if unknown:
        raise bad_request(f"unknown event type {unknown[0]!r}", allowed=sorted(TYPES_BY_TAG))
    events = await ctx.queries.events(
        mission_id=mission_id, types=types, task_id=task_id, after=after, limit=limit
    )
    next_after = events[-1].seq if len(events) >= limit else None
    return EventPage(events=events, next_after=next_after)


# --- usage -----------------------------------------------------------------------------


def _total(rows: list[UsageRow]) -> UsageRow:
    known = [r.cost_usd for r in rows if r.cost_usd is not None]
    return UsageRow(
        key=None,
        calls=sum(r.calls for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
        cache_read_tokens=sum(r.cache_read_tokens for r in rows),
        cache_write_tokens=sum(r.cache_write_tokens for r in rows),
        cost_usd=sum(known) if known else None,
        cost_complete=all(r.cost_complete for r in rows),
    )


@get(
    "/usage",
    summary="Model usage and cost per day, month, mission or model, with budgets",
    guards=[READ],
    responses=_ERRORS,
    tags=["usage"],
)
async def usage_report(
    ctx: NamedDependency[GatewayContext],
    group_by: Annotated[Literal["day", "month", "mission", "model"], QueryParameter()] = "day",
    mission_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    since: Instant = None,
    until: Instant = None,
) -> UsageReport:
    """Days and months (UTC) carry the global daily and monthly budgets, and whether the
    scheduler reported them used up; missions carry their own budget."""
    await ctx.settled()
    rows = await ctx.queries.usage(
        group_by,
        mission_id=mission_id,
        since=_instant("since", since),
        until=_instant("until", until),
    )
    budgets: dict[str, float | None] = {}
    exceeded: set[str] = set()
    if group_by in ("day", "month"):
        prefix = "daily" if group_by == "day" else "monthly"
        settings = ctx.settings
        limit = settings.daily_budget_usd if group_by == "day" else settings.monthly_budget_usd
        scopes = [f"{prefix}:{r.key}" for r in rows]
        alerts = await ctx.queries.budget_alerts(scopes)
        exceeded = {a.scope.split(":", 1)[1] for a in alerts if a.kind == "exceeded"}
        budgets = {str(r.key): limit for r in rows}
    elif group_by == "mission":
        for row in rows:
            mission = await ctx.queries.mission(str(row.key))
            if mission is not None:
                budgets[str(row.key)] = mission.budget_usd
                if mission.budget_exceeded:
                    exceeded.add(str(row.key))
    lines = [
        UsageLine(
            **msgspec.structs.asdict(r),
            budget_usd=budgets.get(str(r.key)),
            budget_exceeded=str(r.key) in exceeded,
        )
        for r in rows
    ]
    return UsageReport(group_by=group_by, rows=lines, total=_total(rows))


@get(
    "/missions/{mission_id:str}/usage",
    summary="A mission's spend against its budget, by model, task and day",
    guards=[READ],
    responses=_ERRORS_404,
    tags=["usage"],
)
async def mission_usage(
    ctx: NamedDependency[GatewayContext], mission_id: FromPath[str]
) -> MissionUsage:
    mission = await _mission_or_wait(ctx, mission_id)
    by_model = await ctx.queries.usage("model", mission_id=mission_id)
    remaining = None
    if mission.budget_usd is not None:
        remaining = max(0.0, mission.budget_usd - (mission.cost_usd or 0.0))
    return MissionUsage(
        mission_id=mission_id,
        budget_usd=mission.budget_usd,
        spent_usd=mission.cost_usd,
        remaining_usd=remaining,
        cost_complete=mission.cost_complete,
        budget_warning=mission.budget_warning,
        budget_exceeded=mission.budget_exceeded,
        total=_total(by_model),
        by_model=by_model,
        by_task=await ctx.queries.usage("task", mission_id=mission_id),
        by_day=await ctx.queries.usage("day", mission_id=mission_id),
    )


QUERY_ROUTES = [
    list_missions,
    get_mission,
    get_task,
    list_tasks,
    list_agents,
    list_events,
    usage_report,
    mission_usage,
]
