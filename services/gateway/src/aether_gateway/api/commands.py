"""Commands: each turns a request into one event (two for plan feedback), published
with an id named by its step, and answers 202 with the mission's URL.

A command is checked against the read model first. When the check fails, the read model
may simply be behind what the client saw on the event stream, so the route waits for it
to catch up and checks again before refusing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Response, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED

from aether_events import (
    Event,
    is_valid_token,
    new_event_id,
    new_mission_id,
    step_event_id,
    step_ids,
)
from aether_gateway.api.auth import WRITE
from aether_gateway.api.bodies import (
    ApprovePlan,
    CancelMission,
    CommandAccepted,
    CreateMission,
    MessageAccepted,
    MissionAccepted,
    PauseMission,
    PlanApprovalAccepted,
    PostMessage,
    RaiseBudget,
    SkipTask,
)
from aether_gateway.api.context import GatewayContext, principal_of
from aether_gateway.api.errors import error_responses, mission_not_found, refused
from aether_gateway.api.idempotency import IDEMPOTENCY_KEY_PATTERN
from aether_gateway.api.limits import COMMAND_RATE, within_limit
from aether_gateway.api.runtimes import check_runtimes
from aether_gateway.domain import Mission, Task
from aether_gateway.domain import commands as decide
from aether_gateway.domain.commands import Refusal

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=(
            "Any unique string (a UUID): 1 to 255 visible ASCII characters. Repeating a "
            "request with the same key answers with the first answer instead of acting "
            "again, for 24 hours."
        ),
    ),
]

_LOCATION = [
    ResponseHeader(
        name="Location",
        value="https://aether.example/missions/m-0123456789abcdef",
        description="The mission's URL",
        documentation_only=True,
    )
]
_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429, 503)


def _now() -> datetime:
    return datetime.now(UTC)


async def _mission(
    ctx: GatewayContext, mission_id: str, check: Callable[[Mission], object] | None = None
) -> Mission:
    """The mission, read after the read model caught up if it looked missing or the
    ``check`` (a domain decision) refused it."""

    async def look() -> Mission | None:
        return await ctx.queries.mission(mission_id) if is_valid_token(mission_id) else None

    mission = await look()
    stale = mission is None
    if mission is not None and check is not None:
        try:
            check(mission)
        except Refusal:
            stale = True
    if stale:
        # Look again even if the read model was not behind when asked: it may have folded
        # the awaited event between the first look and the question.
        await ctx.caught_up()
        mission = await look()
    if mission is None:
        raise mission_not_found(mission_id)
    return mission


def _accepted(ctx: GatewayContext, event: Event) -> Response[CommandAccepted]:
    url = ctx.mission_url(event.mission_id)
    body = CommandAccepted(mission_id=event.mission_id, url=url, event_id=event.event_id)
    return Response(body, status_code=HTTP_202_ACCEPTED, headers={"Location": url})


async def _decide_and_publish(ctx: GatewayContext, decision: Callable[[], Event]) -> Event:
    try:
        event = decision()
    except Refusal as refusal:
        raise refused(refusal) from None
    await ctx.publish(event)
    return event


async def _decided(
    ctx: GatewayContext, mission_id: str, decision: Callable[[Mission], Event]
) -> Event:
    """The command's event, published: the mission is read (again, once the read model
    caught up, when the decision refuses what it first read), then decided on."""
    mission = await _mission(ctx, mission_id, decision)
    return await _decide_and_publish(ctx, lambda: decision(mission))


@post(
    "/missions",
    status_code=HTTP_202_ACCEPTED,
    summary="Request a mission",
    guards=[WRITE],
    response_headers=_LOCATION,
    responses=error_responses(400, 401, 403, 409, 422, 429, 503),
    tags=["missions"],
)
async def create_mission(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    data: JSONBody[CreateMission],
    idempotency_key: IdempotencyKey = None,
) -> Response[MissionAccepted]:
    """Publish ``MissionRequested``; the mission appears in the read model shortly after.

    With an ``Idempotency-Key``, the mission's id is derived from the key and the
    caller, so even two copies of the request racing each other create one mission.
    Mission requests are rate-limited per caller (429 with ``Retry-After``).
    """
    # Before the rate limit: a request refused here is not counted as a mission.
    warning = await check_runtimes(ctx, decide.runtimes_asked(data))
    principal = principal_of(request)
    await within_limit(ctx.mission_rate, principal.id, "missions")
    event = decide.request_mission(
        data,
        caller_id=principal.id,
        caller_name=principal.name,
        idempotency_key=idempotency_key,
        now=_now(),
        fresh_ids=(new_mission_id(), new_event_id()),
        default_budget_usd=ctx.settings.default_mission_budget_usd,
    )
    await ctx.publish(event)
    url = ctx.mission_url(event.mission_id)
    body = MissionAccepted(
        mission_id=event.mission_id,
        url=url,
        events_url=f"{url}/events",
        budget_usd=event.budget_usd,
        warning=warning,
    )
    return Response(body, status_code=HTTP_202_ACCEPTED, headers={"Location": url})


@post(
    "/missions/{mission_id:str}/plan/approve",
    status_code=HTTP_202_ACCEPTED,
    summary="Approve the mission's latest plan",
    guards=[WRITE, COMMAND_RATE],
    response_headers=_LOCATION,
    responses=_ERRORS,
    tags=["missions"],
)
async def approve_plan(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    data: JSONBody[ApprovePlan | None] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[PlanApprovalAccepted]:
    """Publish ``PlanApproved`` for the latest plan version, once per version."""
    by = principal_of(request).name
    version = data.version if data is not None else None
    event = await _decided(ctx, mission_id, lambda m: decide.approve(m, version, _now(), by))
    url = ctx.mission_url(mission_id)
    body = PlanApprovalAccepted(
        mission_id=mission_id,
        url=url,
        version=getattr(event, "version", 0),
        event_id=event.event_id,
    )
    return Response(body, status_code=HTTP_202_ACCEPTED, headers={"Location": url})


@post(
    "/missions/{mission_id:str}/messages",
    status_code=HTTP_202_ACCEPTED,
    summary="Write to a mission: answers to the planner's questions, or plan feedback",
    guards=[WRITE, COMMAND_RATE],
    response_headers=_LOCATION,
    responses=_ERRORS,
    tags=["missions"],
)
async def post_message(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    data: JSONBody[PostMessage],
    idempotency_key: IdempotencyKey = None,
) -> Response[MessageAccepted]:
    """Publish ``MissionMessagePosted``. While a plan awaits approval the message is
    feedback on it, and ``PlanRevisionRequested`` asks the planner for a new version
    (once per plan version; later messages are still recorded)."""
    principal = principal_of(request)
    mission = await _mission(ctx, mission_id)
    event_id = (
        step_event_id(mission_id, step_ids.mission_message(principal.id, idempotency_key))
        if idempotency_key
        else new_event_id()
    )
    try:
        message, revision = decide.post_message(
            mission, data.text, _now(), principal.name, event_id
        )
    except Refusal as refusal:
        raise refused(refusal) from None
    await ctx.publish(message)
    if revision is not None:
        await ctx.publish(revision)
    url = ctx.mission_url(mission_id)
    body = MessageAccepted(
        mission_id=mission_id,
        url=url,
        event_id=message.event_id,
        revision_requested=revision is not None,
    )
    return Response(body, status_code=HTTP_202_ACCEPTED, headers={"Location": url})


def _command(path: str, summary: str, name: str) -> post:
    return post(
        path,
        status_code=HTTP_202_ACCEPTED,
        summary=summary,
        guards=[WRITE, COMMAND_RATE],
        response_headers=_LOCATION,
        responses=_ERRORS,
        tags=["missions"],
        name=name,
    )


@_command("/missions/{mission_id:str}/pause", "Pause a mission: no new task starts", "pause")
async def pause_mission(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    data: JSONBody[PauseMission | None] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``MissionPaused``; tasks already running finish, no new one starts."""
    by, reason = principal_of(request).name, data.reason if data else ""
    event = await _decided(ctx, mission_id, lambda m: decide.pause(m, reason, _now(), by))
    return _accepted(ctx, event)


@_command("/missions/{mission_id:str}/resume", "Resume a paused mission", "resume")
async def resume_mission(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``MissionResumed``."""
    by = principal_of(request).name
    event = await _decided(ctx, mission_id, lambda m: decide.resume(m, _now(), by))
    return _accepted(ctx, event)


@_command("/missions/{mission_id:str}/cancel", "Cancel a mission", "cancel")
async def cancel_mission(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    data: JSONBody[CancelMission | None] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``MissionCancelled``; nothing merged so far is undone."""
    by, reason = principal_of(request).name, data.reason if data else ""
    event = await _decided(ctx, mission_id, lambda m: decide.cancel(m, reason, _now(), by))
    return _accepted(ctx, event)


@_command("/missions/{mission_id:str}/budget", "Raise a mission's budget", "raise_budget")
async def raise_budget(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    data: JSONBody[RaiseBudget],
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``BudgetRaised`` with the new budget (more than the current one)."""
    by, amount = principal_of(request).name, data.budget_usd
    event = await _decided(ctx, mission_id, lambda m: decide.raise_budget(m, amount, _now(), by))
    return _accepted(ctx, event)


@_command(
    "/missions/{mission_id:str}/delivery/retry",
    "Push a completed mission's result again after the git broker gave up",
    "retry_delivery",
)
async def retry_delivery(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``DeliveryRetryRequested`` for a completed mission whose delivery failed."""
    by = principal_of(request).name
    event = await _decided(ctx, mission_id, lambda m: decide.retry_delivery(m, _now(), by))
    return _accepted(ctx, event)


async def _task(ctx: GatewayContext, mission_id: str, task_id: str) -> Task | None:
    return await ctx.queries.task(mission_id, task_id) if is_valid_token(task_id) else None


@_command(
    "/missions/{mission_id:str}/tasks/{task_id:str}/retry",
    "Run an escalated task again",
    "retry_task",
)
async def retry_task(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    task_id: FromPath[str],
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``TaskRetryRequested`` for a task whose retries ran out (or that failed)."""
    by = principal_of(request).name
    mission = await _mission(ctx, mission_id)
    task = await _task(ctx, mission_id, task_id)
    if task is None or task.status not in decide.RETRYABLE_TASK_STATUSES:
        await ctx.caught_up()
        mission = await _mission(ctx, mission_id)
        task = await _task(ctx, mission_id, task_id)
    event = await _decide_and_publish(
        ctx, lambda: decide.retry_task(mission, task, task_id, _now(), by)
    )
    return _accepted(ctx, event)


@_command(
    "/missions/{mission_id:str}/tasks/{task_id:str}/skip",
    "Skip an escalated task so its dependents may go on",
    "skip_task",
)
async def skip_task(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    task_id: FromPath[str],
    data: JSONBody[SkipTask | None] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``TaskSkipped`` for a task whose retries ran out (or that failed)."""
    by, reason = principal_of(request).name, data.reason if data else ""
    mission = await _mission(ctx, mission_id)
    task = await _task(ctx, mission_id, task_id)
    if task is None or task.status not in decide.RETRYABLE_TASK_STATUSES:
        await ctx.caught_up()
        mission = await _mission(ctx, mission_id)
        task = await _task(ctx, mission_id, task_id)
    event = await _decide_and_publish(
        ctx, lambda: decide.skip_task(mission, task, task_id, reason, _now(), by)
    )
    return _accepted(ctx, event)


COMMAND_ROUTES = [
    create_mission,
    approve_plan,
    post_message,
    pause_mission,
    resume_mission,
    cancel_mission,
    raise_budget,
    retry_task,
    skip_task,
    retry_delivery,
]
