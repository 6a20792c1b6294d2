"""Live events as Server-Sent Events: one mission's, or everything.

Each event's SSE ``id`` is its stream sequence, so a client that reconnects with
``Last-Event-ID`` (or ``?after=``) resumes right after the last event it saw. Stored
events are replayed from the hub's ring of recent events or from the read model, then
live ones follow from the hub's single subscription. Telemetry (agent progress,
heartbeats and transcript entries, on request) is sent without an ``id``: it is not
replayed, and leaving the id out keeps the client's resume point on the last mission
event. So are the events another carried (an attempt's result, a TaskReady), which share
its sequence: they come right before it, and it (or the last of them a client's types
let through) is sent with the id, so a resume gets them all again or none (see
``hub.identified``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from aether_events import TERMINAL_TYPES, TYPES_BY_TAG, decode, encode, is_valid_token, tag_of
from aether_gateway import metrics
from aether_gateway.adapters.hub import CLOSED, IDLE, WAKE, Filter, StreamedEvent, identified
from aether_gateway.api.auth import QUERY_TOKEN_OPT, READ
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import (
    BUS_RETRY_SECONDS,
    bad_request,
    error_responses,
    mission_not_found,
    service_unavailable,
)
from aether_gateway.api.limits import too_many
from aether_gateway.domain.auth import Principal

log = logging.getLogger("aether.gateway.live")

TERMINAL_TAGS = frozenset(tag_of(cls) for cls in TERMINAL_TYPES)
_PAGE = 500
# How long a replay waits for the read model to reach events the ring no longer holds.
_CATCH_UP_SECONDS = 30.0
# When a caller with every stream slot taken is told to try again.
STREAM_RETRY_SECONDS = 5.0
# How soon a stream asked to check its token (``adapters.revocations``) asks again when
# the check could not be answered (the database just back, say).
_RECHECK_RETRY_SECONDS = 1.0

LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        required=False,
        description="The id of the last event received: the stream resumes after it",
    ),
]
After = Annotated[int | None, QueryParameter(ge=0, description="Resume after this stream sequence")]
AccessToken = Annotated[
    str | None,
    QueryParameter(
        description="The bearer token, for clients that cannot send headers (EventSource)"
    ),
]
Telemetry = Annotated[
    bool,
    QueryParameter(
        description="Also send agent progress, heartbeats and transcript entries (no id)"
    ),
]


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    if last_event_id:
        try:
            value = int(last_event_id)
        except ValueError:
            value = -1
        if value < 0:
            raise bad_request(
                "Last-Event-ID must be a stream sequence (a non-negative integer)",
                key="Last-Event-ID",
                value=last_event_id,
            )
        return value
    return after or 0


async def _replay(
    ctx: GatewayContext, after: int, upto: int, wanted: Filter
) -> AsyncIterator[StreamedEvent]:
    """The stored events in ``(after, upto]`` that ``wanted`` matches, in order: from the
    read model as far as it has folded, then from the hub's ring."""
    position = min(await ctx.read_model.position(), upto)
    recent: list[StreamedEvent] | None = []
    if position < upto:
        recent = ctx.hub.recent(max(after, position), upto, wanted)
        if recent is None:
            # The ring has moved past what the read model has folded: wait for it.
            position = await _wait_for_position(ctx, upto)
            recent = ctx.hub.recent(max(after, position), upto, wanted) if position < upto else []
            if recent is None:
                raise RuntimeError("the read model is too far behind the stream to replay")
    cursor = after
    while cursor < position:
        # A page holds whole messages (``Queries.events``): its carried events are marked.
        page = await ctx.queries.events(
            mission_id=wanted.mission_id,
            types=sorted(wanted.types) if wanted.types else None,
            after=cursor,
            upto=position,
            limit=_PAGE,
        )
        streamed = [
            StreamedEvent(
                sequence=stored.seq,
                mission_id=stored.mission_id,
                type=stored.type,
                task_id=stored.task_id,
                # The same bytes the hub sends live: stored JSON, decoded and encoded again.
                data=encode(decode(msgspec.json.encode(stored.data))),
            )
            for stored in page
        ]
        for event in identified(streamed):
            yield event
        if len(page) < _PAGE:
            break
        cursor = page[-1].seq
    for event in recent or []:
        yield event


async def _wait_for_position(ctx: GatewayContext, target: int) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CATCH_UP_SECONDS
    position = await ctx.read_model.position()
    while position < target and loop.time() < deadline:
        await asyncio.sleep(0.1)
        position = await ctx.read_model.position()
    return min(position, target)


async def _ended_by(ctx: GatewayContext, mission_id: str | None, sequence: int) -> bool:
    """Whether the mission's terminal event is at or before ``sequence``. A client that
    resumes after it has had it, and neither the replay nor the live events would send
    it again to end the stream: the read model is asked, once it has folded that far
    (the hub may have sent the event before the read model folded it)."""
    if mission_id is None:
        return False

    async def ended(upto: int) -> bool:
        terminal = sorted(TERMINAL_TAGS)
        return bool(
            await ctx.queries.events(mission_id=mission_id, types=terminal, upto=upto, limit=1)
        )

    position = await ctx.read_model.position()
    if await ended(min(position, sequence)):
        return True
    return position < sequence and await ended(await _wait_for_position(ctx, sequence))


async def _check_resume_point(ctx: GatewayContext, after: int) -> None:
    """Refuse a resume point past the stream's newest event: no id a client was sent is
    there, and the stream would skip every event up to it, for ever. Ahead of this
    gateway's hub is not enough (another gateway's clients may have seen a later event
    first): the stream itself is asked, then only."""
    if after <= ctx.hub.last_sequence:
        return
    try:
        newest = await ctx.bus.last_sequence()
    except Exception as error:  # the bus out of reach: the hub's subscription says so next
        log.info("resume point not checked", extra={"error": repr(error)})
        return
    if after > newest:
        raise bad_request(
            f"the resume point {after} is past the stream's newest event ({newest}): "
            "resume after an id this stream sent, or from the start (no Last-Event-ID)",
            key="Last-Event-ID",
            value=after,
            newest=newest,
        )


def _message(event: StreamedEvent) -> ServerSentEventMessage:
    metrics.SSE_EVENTS_SENT.inc()
    sequence = event.sequence if event.ends_message else None
    return ServerSentEventMessage(id=sequence, event=event.type, data=event.data.decode())


async def _still_good(ctx: GatewayContext, token: object) -> bool | None:
    """Whether the token a stream was opened with would still be let in; None when that
    cannot be told now (the database or the provider out of reach: asked again later)."""
    if not isinstance(token, str):
        return True  # a stream no token opened (none is served so)
    try:
        await ctx.authenticator.principal(token)
    except (NotAuthorizedException, PermissionDeniedException):
        return False
    except Exception as error:
        log.info("event stream's token not checked again", extra={"error": repr(error)})
        return None
    return True


def _ended(reason: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        event="stream_ended", data=msgspec.json.encode({"reason": reason}).decode()
    )


async def _stream(
    ctx: GatewayContext,
    wanted: Filter,
    after: int,
    token: object,
    principal: object,
    *,
    until_terminal: bool = False,
) -> ServerSentEvent:
    await _check_resume_point(ctx, after)
    caller = principal.id if isinstance(principal, Principal) else ""
    give_back = ctx.streams.take(caller)
    if give_back is None:
        raise too_many(
            f"at most {ctx.streams.limit} event streams open at once per caller on this"
            " replica; close one, or try again later",
            STREAM_RETRY_SECONDS,
        )
    # Registered before anything is replayed: every event after ``start`` reaches the
    # queue, every event up to it comes from the replay.
    try:
        subscriber = await ctx.hub.subscribe(wanted)
    except Exception as error:  # the bus out of reach as the hub starts following it
        give_back()
        log.warning("event stream not opened", extra={"error": repr(error)})
        raise service_unavailable(
            "the event bus cannot be followed right now; try again",
            BUS_RETRY_SECONDS,
            reason=type(error).__name__,
        ) from error
    start = subscriber.start
    reauth = ctx.settings.sse_reauth_seconds
    idle = ctx.settings.sse_keepalive_seconds
    known = principal if isinstance(principal, Principal) else None
    # The API token's id, so its revocation (``adapters.revocations``) finds the stream.
    token_id = known.id if known is not None and known.kind == "token" else None
    # When a request with the token would first be refused (``domain.auth.refused_from``).
    refused_at = known.refused_from if known is not None else None

    async def messages() -> AsyncGenerator[ServerSentEventMessage, None]:
        metrics.SSE_CLIENTS.inc()
        last = after
        loop = asyncio.get_running_loop()
        check_at = loop.time() + reauth
        # The token's end on this loop's clock: the stream ends then, not at a check.
        ends_at = None if refused_at is None else loop.time() + (refused_at - time.time())
        watched = ctx.open_streams.watch(token_id, subscriber.wake)
        quiet_since = loop.time()

        async def over() -> str | None:
            """Why the stream must end now, if it must."""
            nonlocal check_at
            if watched.revoked:
                return "token revoked"
            if ends_at is not None and loop.time() >= ends_at:
                return "token expired"
            asked, watched.recheck = watched.recheck, False
            if asked or loop.time() >= check_at:
                good = await _still_good(ctx, token)
                if good is False:
                    return "token no longer valid"
                # Asked for (revocations may have been missed) but not answered: soon again.
                again = min(reauth, _RECHECK_RETRY_SECONDS) if good is None and asked else reauth
                check_at = loop.time() + again
            return None

        try:
            if until_terminal and after > 0 and await _ended_by(ctx, wanted.mission_id, after):
                return
            if after < start:
                async for event in _replay(ctx, after, start, wanted):
                    if watched.revoked or (ends_at is not None and loop.time() >= ends_at):
                        break  # said why below, before anything live
                    yield _message(event)
                    quiet_since = loop.time()
                    if event.ends_message:
                        last = event.sequence or last
                    if until_terminal and event.type in TERMINAL_TAGS:
                        return
            while not ctx.closing.is_set():
                why = await over()
                if why is not None:
                    log.info("event stream ended", extra={"reason": why})
                    yield _ended(why)
                    return
                # Woken for a keep-alive, the next check or the token's end, whichever
                # comes first (or by ``wake``).
                wake_at = min(quiet_since + idle, check_at, ends_at or check_at)
                item = await subscriber.next(max(wake_at - loop.time(), 0.0))
                if item is WAKE:
                    continue
                if item is IDLE:
                    if loop.time() - quiet_since >= idle:
                        yield ServerSentEventMessage(comment="keep-alive", data=None)
                        quiet_since = loop.time()
                    continue
                if item is CLOSED or not isinstance(item, StreamedEvent):
                    if subscriber.overflowed:
                        log.warning("event-stream client fell behind; letting it go")
                    return
                if item.sequence is not None:
                    if item.sequence <= last:
                        continue  # replayed already
                    if item.ends_message:
                        last = item.sequence  # not before: the rest of its message follows
                yield _message(item)
                quiet_since = loop.time()
                if until_terminal and item.type in TERMINAL_TAGS:
                    return
        finally:
            ctx.open_streams.forget(watched)
            subscriber.close()
            give_back()
            metrics.SSE_CLIENTS.dec()

    stream = messages()
    # A stream whose answer never began (its client gone before the headers went out)
    # never runs its ``finally``: its slot and subscription go back when it is dropped.
    weakref.finalize(stream, give_back)
    weakref.finalize(stream, subscriber.close)
    return ServerSentEvent(stream)


_STREAM = ResponseSpec(
    data_container=str,
    media_type="text/event-stream",
    generate_examples=False,
    description=(
        "Server-Sent Events: `id` is the stream sequence, `event` the event type, `data` "
        "the event as JSON; a `: keep-alive` comment when quiet. Telemetry has no `id`, "
        "nor have the events another carried (an attempt's result, a task_ready), sent "
        "right before it"
    ),
)
_SSE_ERRORS = {200: _STREAM, **error_responses(400, 401, 403, 404)}


@get(
    "/missions/{mission_id:str}/events",
    summary="One mission's events as Server-Sent Events",
    guards=[READ],
    responses=_SSE_ERRORS,
    opt={QUERY_TOKEN_OPT: True},
    tags=["events"],
)
async def mission_events(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    mission_id: FromPath[str],
    after: After = None,
    until_terminal: Annotated[
        bool, QueryParameter(description="End the stream once the mission has finished")
    ] = False,
    telemetry: Telemetry = False,
    last_event_id: LastEventId = None,
    access_token: AccessToken = None,
) -> ServerSentEvent:
    """Replays the mission's stored events, then streams live ones, with a comment as a
    keep-alive whenever the stream has been quiet for a while."""
    start = _resume_point(last_event_id, after)
    if not is_valid_token(mission_id):
        raise mission_not_found(mission_id)
    if (
        await ctx.queries.mission(mission_id) is None
        and not await ctx.queries.has_events(mission_id)
        and not await ctx.bus.has_history(mission_id)
    ):
        raise mission_not_found(mission_id)
    wanted = Filter(mission_id=mission_id, telemetry=telemetry)
    return await _stream(
        ctx,
        wanted,
        start,
        request.scope.get("auth"),
        request.scope.get("user"),
        until_terminal=until_terminal,
    )


@get(
    "/events/stream",
    summary="Every mission's events as Server-Sent Events",
    guards=[READ],
    responses={200: _STREAM, **error_responses(400, 401, 403)},
    opt={QUERY_TOKEN_OPT: True},
    tags=["events"],
)
async def all_events(
    ctx: NamedDependency[GatewayContext],
    request: Request[Any, Any, Any],
    type: Annotated[
        list[str] | None, QueryParameter(description="Only these event types (repeat)")
    ] = None,
    after: After = None,
    telemetry: Telemetry = False,
    last_event_id: LastEventId = None,
    access_token: AccessToken = None,
) -> ServerSentEvent:
    """Every event of every mission, replayed after the resume point, then live."""
    start = _resume_point(last_event_id, after)
    types = frozenset(t for v in type or [] for t in v.split(",") if t) or None
    unknown = sorted((types or frozenset()) - TYPES_BY_TAG.keys())
    if unknown:
        raise bad_request(f"unknown event type {unknown[0]!r}", allowed=sorted(TYPES_BY_TAG))
    wanted = Filter(types=types, telemetry=telemetry)
    return await _stream(ctx, wanted, start, request.scope.get("auth"), request.scope.get("user"))


LIVE_ROUTES = [mission_events, all_events]
