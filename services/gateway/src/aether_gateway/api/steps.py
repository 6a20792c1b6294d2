"""Failed steps: a service that could not handle an event of the mission at any delivery
(``StepFailed``), shown with what came of it, and run again on request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from aether_events import is_valid_token, new_event_id
from aether_gateway.api.auth import READ, WRITE
from aether_gateway.api.bodies import CommandAccepted
from aether_gateway.api.commands import IdempotencyKey
from aether_gateway.api.context import GatewayContext, principal_of
from aether_gateway.api.errors import error_responses, mission_not_found, refused
from aether_gateway.api.limits import COMMAND_RATE
from aether_gateway.domain import Mission
from aether_gateway.domain.commands import Refusal
from aether_gateway.domain.steps import STEP_TYPES, FailedStep, failed_steps, retry_step

# A mission has a handful of step events at most; more than this is not a listing.
_STEP_EVENTS_LIMIT = 10_000


class FailedSteps(msgspec.Struct, frozen=True, kw_only=True):
    mission_id: str
    steps: list[FailedStep]


async def _mission(ctx: GatewayContext, mission_id: str) -> Mission:
    mission = await ctx.queries.mission(mission_id) if is_valid_token(mission_id) else None
    if mission is None and await ctx.caught_up():
        mission = await ctx.queries.mission(mission_id)
    if mission is None:
        raise mission_not_found(mission_id)
    return mission


async def failed_steps_of(ctx: GatewayContext, mission_id: str) -> list[FailedStep]:
    """The mission's failed steps, from the step events the read model stored."""
    events = await ctx.queries.events(
        mission_id=mission_id, types=list(STEP_TYPES), limit=_STEP_EVENTS_LIMIT
    )
    return failed_steps([event.data for event in events])


@get(
    "/missions/{mission_id:str}/steps",
    summary="A mission's failed steps: events a service could not handle, and their retries",
    guards=[READ],
    responses=error_responses(400, 401, 403, 404),
    tags=["missions"],
)
async def list_failed_steps(
    ctx: NamedDependency[GatewayContext], mission_id: FromPath[str]
) -> FailedSteps:
    """Each step is ``failed`` (retry it), ``retrying`` or ``recovered``."""
    await ctx.settled()
    await _mission(ctx, mission_id)
    return FailedSteps(mission_id=mission_id, steps=await failed_steps_of(ctx, mission_id))


@post(
    "/missions/{mission_id:str}/steps/{event_id:str}/retry",
    status_code=HTTP_202_ACCEPTED,
    summary="Run a failed step again",
    guards=[WRITE, COMMAND_RATE],
    responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503),
    tags=["missions"],
    name="retry_step",
)
async def retry_failed_step(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    event_id: FromPath[str],
    service: Annotated[
        str | None,
        QueryParameter(
            max_length=64, description="The service to retry it in, when several failed on it"
        ),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[CommandAccepted]:
    """Publish ``StepRetryRequested``: the service that failed on event ``event_id``
    handles it once more, and records ``StepRecovered`` or another ``StepFailed``."""
    mission = await _mission(ctx, mission_id)
    steps = await failed_steps_of(ctx, mission_id)
    if not any(s.failed_event_id == event_id for s in steps) and await ctx.caught_up():
        steps = await failed_steps_of(ctx, mission_id)
    try:
        event = retry_step(
            steps,
            mission_id=mission_id,
            correlation_id=mission.correlation_id,
            failed_event_id=event_id,
            service=service,
            event_id=new_event_id(),
            now=datetime.now(UTC),
            requested_by=principal_of(request).name,
        )
    except Refusal as refusal:
        raise refused(refusal) from None
    await ctx.publish(event)
    url = ctx.mission_url(mission_id)
    body = CommandAccepted(mission_id=mission_id, url=url, event_id=event.event_id)
    return Response(body, status_code=HTTP_202_ACCEPTED, headers={"Location": url})


STEP_ROUTES = [list_failed_steps, retry_failed_step]
