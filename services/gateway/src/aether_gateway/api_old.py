"""The REST and SSE routes: decode and validate, call the read model or the bus, answer.

Every error answers ``{"error": "<what went wrong>", "detail": <more, or null>}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_409_CONFLICT

from aether_events import (
    TERMINAL_TYPES,
    MissionRequested,
    PlanApproved,
    derived_id,
    is_valid_token,
    new_event_id,
    new_mission_id,
    tag_of,
)
from aether_gateway import metrics
from aether_gateway.adapters.bus import Bus
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.config import GatewaySettings
from aether_gateway.domain import MISSION_STATUSES, TERMINAL_STATUSES, Mission, Plan, Task

log = logging.getLogger("aether.gateway.api")

TERMINAL_TAGS = frozenset(tag_of(cls) for cls in TERMINAL_TYPES)


@dataclass
class GatewayContext:
    """What the routes work with, built once by the app."""

    settings: GatewaySettings
    read_model: ReadModel
    bus: Bus
    # Set when the app shuts down, so open event streams end instead of holding it up.
    closing: asyncio.Event = field(default_factory=asyncio.Event)


# --- request and response bodies --------------------------------------------------------


class CreateMission(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A mission request. Unknown fields are refused so a misspelt option is not ignored."""

    repository: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    requirement: Annotated[str, msgspec.Meta(min_length=1, max_length=20000)]
    base_branch: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "main"
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    auto_approve: bool = False
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    max_tasks: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    model_overrides: dict[str, str] = msgspec.field(default_factory=dict)
    verify_command: Annotated[str, msgspec.Meta(min_length=1)] | None = None


class MissionAccepted(msgspec.Struct, kw_only=True):
    mission_id: str
    url: str
    events_url: str


class ApprovePlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which plan version to approve; the latest when left out."""

    version: Annotated[int, msgspec.Meta(ge=1)] | None = None


class PlanApprovalAccepted(msgspec.Struct, kw_only=True):
    mission_id: str
    version: int
    event_id: str


class MissionList(msgspec.Struct, kw_only=True):
    missions: list[Mission]


class MissionDetail(Mission, frozen=True, kw_only=True):
    """A mission with its latest plan, every plan version and its tasks."""

    events_url: str
    plan: Plan | None = None
    plans: list[Plan] = msgspec.field(default_factory=list)
    tasks: list[Task] = msgspec.field(default_factory=list)


class ErrorBody(msgspec.Struct, kw_only=True):
    error: str
    detail: Any = None


# --- helpers ----------------------------------------------------------------------------


def _mission_url(ctx: GatewayContext, mission_id: str) -> str:
    return f"{ctx.settings.base_url}/missions/{mission_id}"


def _not_found(mission_id: str) -> NotFoundException:
    return NotFoundException(
        detail=f"mission {mission_id!r} not found",
        extra={"mission_id": mission_id},
    )


def _conflict(message: str, **detail: Any) -> HTTPException:
    return HTTPException(status_code=HTTP_409_CONFLICT, detail=message, extra=detail or None)


def _not_blank(name: str, value: str) -> None:
    if not value.strip():
        raise ClientException(
            detail=f"{name} must not be blank", extra=[{"key": name, "message": "blank"}]
        )


async def _publish(ctx: GatewayContext, event: MissionRequested | PlanApproved) -> int:
    try:
        return await ctx.bus.publish(event)
    except Exception as error:
        log.exception("publishing failed", extra={"event_type": tag_of(type(event))})
        raise ServiceUnavailableException(
            detail="the event bus did not accept the request; try again",
            extra={"reason": type(error).__name__},
        ) from error


def _parse_sequence(name: str, raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ClientException(
            detail=f"{name} must be a stream sequence (a non-negative integer)",
            extra={"key": name, "value": raw},
        )
    return value


# --- routes ------------------------------------------------------------------------------


@post("/missions", status_code=HTTP_202_ACCEPTED, summary="Request a mission")
async def create_mission(
    ctx: NamedDependency[GatewayContext], data: JSONBody[CreateMission]
) -> MissionAccepted:
    """Publish ``MissionRequested``; the mission appears in the read model shortly after."""
    _not_blank("repository", data.repository)
    _not_blank("requirement", data.requirement)
    event_id = new_event_id()
    event = MissionRequested(
        event_id=event_id,
        mission_id=new_mission_id(),
        occurred_at=datetime.now(UTC),
        correlation_id=event_id,
        repository=data.repository.strip(),
        requirement=data.requirement,
        base_branch=data.base_branch,
        budget_usd=data.budget_usd,
        auto_approve=data.auto_approve,
        max_concurrency=data.max_concurrency,
        max_tasks=data.max_tasks,
        model_overrides=data.model_overrides,
        verify_command=data.verify_command,
    )
    await _publish(ctx, event)
    url = _mission_url(ctx, event.mission_id)
    return MissionAccepted(mission_id=event.mission_id, url=url, events_url=f"{url}/events")


@get("/missions", summary="List missions, newest first")
async def list_missions(
    ctx: NamedDependency[GatewayContext],
    status: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
) -> MissionList:
    if status is not None and status not in MISSION_STATUSES:
        raise ClientException(
            detail=f"unknown status {status!r}", extra={"allowed": list(MISSION_STATUSES)}
        )
    return MissionList(missions=await ctx.read_model.missions(status=status, limit=limit))


async def _caught_up(ctx: GatewayContext, within: float = 5.0) -> bool:
    """Wait until the read model has folded everything the stream held when called.

    Returns whether it was behind (so a caller knows a second look may differ).
    """
    target = await ctx.bus.last_sequence()
    position = await ctx.read_model.position()
    if position >= target:
        return False
    deadline = asyncio.get_running_loop().time() + within
    while position < target and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        position = await ctx.read_model.position()
    return True


@get("/missions/{mission_id:str}", summary="A mission with its plans and tasks")
async def get_mission(
    ctx: NamedDependency[GatewayContext], mission_id: FromPath[str]
) -> MissionDetail:
    """Reads its writes: a mission whose request is on the stream but not yet folded is
    waited for (briefly) rather than reported missing."""
    mission = await ctx.read_model.mission(mission_id)
    if mission is None and await _caught_up(ctx):
        mission = await ctx.read_model.mission(mission_id)
    if mission is None:
        raise _not_found(mission_id)
    plans = await ctx.read_model.plans(mission_id)
    tasks = await ctx.read_model.tasks(mission_id)
    latest = next((p for p in plans if p.version == mission.plan_version), None)
    return MissionDetail(
        **msgspec.structs.asdict(mission),
        events_url=f"{_mission_url(ctx, mission_id)}/events",
        plan=latest,
        plans=plans,
        tasks=tasks,
    )


@post(
    "/missions/{mission_id:str}/plan/approve",
    status_code=HTTP_202_ACCEPTED,
    summary="Approve the mission's latest plan",
)
async def approve_plan(
    ctx: NamedDependency[GatewayContext],
    mission_id: FromPath[str],
    data: JSONBody[ApprovePlan | None] = None,
) -> PlanApprovalAccepted:
    """Publish ``PlanApproved`` for the latest plan version, once."""
    mission = await ctx.read_model.mission(mission_id)
    wanted = data.version if data is not None else None
    stale = (
        mission is None
        or mission.plan_version is None
        or (wanted is not None and wanted != mission.plan_version)
    )
    # The plan a client saw on the event stream may not be folded yet: catch up first.
    if stale and await _caught_up(ctx):
        mission = await ctx.read_model.mission(mission_id)
    if mission is None:
        raise _not_found(mission_id)
    if mission.status in TERMINAL_STATUSES:
        raise _conflict(f"the mission is {mission.status}", status=mission.status)
    latest = mission.plan_version
    if latest is None:
        raise _conflict("the mission has no plan to approve yet", status=mission.status)
    version = data.version if data is not None and data.version is not None else latest
    if version != latest:
        raise _conflict(
            f"plan version {version} is not the latest (the latest is {latest})",
            version=version,
            latest_version=latest,
        )
    if mission.approved_version is not None and mission.approved_version >= version:
        raise _conflict(f"plan version {version} is already approved", version=version)
    # The id names the step (this plan version's approval): an approval repeated before
    # the first is folded, or racing an automatic one, is dropped by the stream.
    event = PlanApproved(
        event_id=derived_id(mission_id, "plan_approved", version),
        mission_id=mission_id,
        occurred_at=datetime.now(UTC),
        correlation_id=mission.correlation_id,
        causation_id=None,
        version=version,
        approved_by=None,
        automatic=False,
    )
    await _publish(ctx, event)
    return PlanApprovalAccepted(mission_id=mission_id, version=version, event_id=event.event_id)


@get("/missions/{mission_id:str}/events", summary="The mission's events as Server-Sent Events")
async def mission_events(
    ctx: NamedDependency[GatewayContext],
    mission_id: FromPath[str],
    after: Annotated[int | None, QueryParameter(ge=0)] = None,
    until_terminal: FromQuery[bool] = False,
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> ServerSentEvent:
    """Replays the stored events, then streams live ones.

    Each message's ``id`` is the event's stream sequence, so a reconnecting client's
    ``Last-Event-ID`` (or ``?after=``) resumes right after what it saw. With
    ``?until_terminal=1`` the stream ends after the mission completes, fails or is
    cancelled. A comment is sent when the stream has been quiet for a while, to keep
    proxies from closing it.
    """
    resume = _parse_sequence("Last-Event-ID", last_event_id)
    start = resume if resume is not None else (after or 0)
    if not is_valid_token(mission_id):
        raise _not_found(mission_id)
    known = await ctx.read_model.mission(mission_id) is not None
    if not known and not await ctx.bus.has_history(mission_id):
        raise _not_found(mission_id)
    feed = await ctx.bus.follow(
        mission_id,
        after=start,
        idle_seconds=ctx.settings.sse_keepalive_seconds,
        closing=ctx.closing,
    )

    async def messages() -> AsyncGenerator[ServerSentEventMessage, None]:
        metrics.SSE_CLIENTS.inc()
        try:
            async for item in feed:
                if item is None:
                    yield ServerSentEventMessage(comment="keep-alive", data=None)
                    continue
                yield ServerSentEventMessage(
                    id=item.sequence, event=item.type, data=item.data.decode()
                )
                if until_terminal and item.type in TERMINAL_TAGS:
                    return
        finally:
            metrics.SSE_CLIENTS.dec()
            await feed.close()

    return ServerSentEvent(messages())


# --- errors -----------------------------------------------------------------------------


def _error_response(status: int, error: str, detail: Any = None) -> Response[ErrorBody]:
    return Response(ErrorBody(error=error, detail=detail), status_code=status)


def on_validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorBody]:
    """Name each invalid field and why, in one sentence and in detail."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    messages = [
        f"{p.get('key') or p.get('source') or 'request'}: {p.get('message')}"
        for p in problems
        if isinstance(p, dict)
    ]
    error = "invalid request" + (f" ({'; '.join(messages)})" if messages else "")
    return _error_response(exc.status_code, error, problems or exc.detail)


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    return _error_response(exc.status_code, exc.detail, exc.extra)


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return _error_response(500, "internal error", None)


def router(ctx: GatewayContext) -> Router:
    """The mission routes, with ``ctx`` injected into every handler."""
    return Router(
        path="/",
        route_handlers=[create_mission, list_missions, get_mission, approve_plan, mission_events],
        dependencies={"ctx": Provide(lambda: ctx, sync_to_thread=False, use_cache=True)},
        tags=["missions"],
    )
