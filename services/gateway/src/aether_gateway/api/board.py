"""The queries the web board needs beyond the rest of the API: where the read model
stands (so a page can load a snapshot and then stream from exactly that point), the
progress of a page of missions in one call, a task branch's diff against the integration
head it started from and a repository's default branch (these two asked of the git
broker, which holds every mission's repository)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Router, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.params import FromPath, QueryParameter

from aether_events import is_valid_token
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.diffs import BrokerReader, BrokerUnavailable, MissionDiff, TaskDiff
from aether_gateway.adapters.progress import Progress, progress_of
from aether_gateway.api.auth import READ, WRITE
from aether_gateway.api.context import GatewayContext, request_context
from aether_gateway.api.errors import bad_request, error_responses, not_found, unavailable
from aether_gateway.api.queries import _mission_or_wait


class Position(msgspec.Struct, kw_only=True):
    """The last mission-stream sequence the read model has folded: a snapshot read now
    holds every event up to it, so an event stream resumed after it misses nothing."""

    sequence: int


@get(
    "/events/position",
    summary="How far the read model has folded the mission stream",
    guards=[READ],
    responses=error_responses(401, 403),
    tags=["events"],
)
async def read_model_position(ctx: NamedDependency[GatewayContext]) -> Position:
    return Position(sequence=await ctx.read_model.position())


class MissionProgress(msgspec.Struct, kw_only=True):
    """Task counts per mission asked for; a mission without tasks (yet) is left out."""

    missions: dict[str, Progress]


@get(
    "/tasks/progress",
    summary="Task counts (total, merged, running, failed) of several missions at once",
    guards=[READ],
    responses=error_responses(400, 401, 403),
    tags=["tasks"],
)
async def tasks_progress(
    ctx: NamedDependency[GatewayContext],
    db: NamedDependency[Database],
    mission_id: Annotated[
        list[str], QueryParameter(description="A mission id (repeat, up to 200)")
    ],
) -> MissionProgress:
    ids = [i for v in mission_id for i in v.split(",") if i]
    if len(ids) > 200:
        raise bad_request("at most 200 missions at once", key="mission_id")
    await ctx.settled()
    return MissionProgress(missions=await progress_of(db, [i for i in ids if is_valid_token(i)]))


def _broker_failed(what: str, failed: BrokerUnavailable) -> HTTPException:
    if failed.status == 404:
        return not_found(what, reason=failed.reason)
    if failed.status == 400:
        return bad_request(f"{what}: {failed.reason}", reason=failed.reason)
    return unavailable(
        failed.status, f"{what}: {failed.reason}", failed.retry_after, reason=failed.reason
    )


@get(
    "/missions/{mission_id:str}/tasks/{task_id:str}/diff",
    summary="A task's commit as a diff against the integration head it started from",
    guards=[READ],
    responses=error_responses(400, 401, 403, 404, 502, 503, 504),
    tags=["tasks"],
)
async def get_task_diff(
    ctx: NamedDependency[GatewayContext],
    broker: NamedDependency[BrokerReader],
    mission_id: FromPath[str],
    task_id: FromPath[str],
) -> TaskDiff:
    """Read by the git broker from its copy of the mission's repository (local or
    remote), bounded: at most 200 files and 20,000 lines, binary files marked, whatever
    is cut marked ``truncated``. 404 when the task has no commit yet or the broker does
    not hold it; 502/503/504 when the broker cannot be asked."""
    mission = await _mission_or_wait(ctx, mission_id)
    task = await ctx.queries.task(mission_id, task_id)
    if task is None:
        raise not_found(f"task {task_id!r} of mission {mission_id!r}")
    base = task.base_sha or mission.base_sha
    if task.commit_sha is None or base is None:
        raise not_found(f"a commit of task {task_id!r}", reason="the agent has not committed")
    try:
        return await broker.task_diff(
            mission.repository, mission_id, task_id, base, task.commit_sha
        )
    except BrokerUnavailable as failed:
        raise _broker_failed(f"the diff of task {task_id!r}", failed) from None


async def _integration_head(ctx: GatewayContext, mission_id: str) -> str | None:
    """The integration branch's head as the read model knows it: the last merge's."""
    head, after = None, 0
    while True:
        page = await ctx.queries.events(
            mission_id=mission_id, types=["branch_merged"], after=after, limit=500
        )
        for stored in page:
            merged = stored.data.get("merge_sha")
            head = merged if isinstance(merged, str) else head
        if len(page) < 500:
            return head
        after = page[-1].seq


@get(
    "/missions/{mission_id:str}/diff",
    summary="The mission's integration branch as a diff against the mission's base",
    guards=[READ],
    responses=error_responses(400, 401, 403, 404, 502, 503, 504),
    tags=["missions"],
)
async def get_mission_diff(
    ctx: NamedDependency[GatewayContext],
    broker: NamedDependency[BrokerReader],
    mission_id: FromPath[str],
) -> MissionDiff:
    """Every task merged so far (the result, once the mission completed) against the
    commit the mission started from, read by the git broker as a task's diff is, and
    bounded alike: at most 200 files and 20,000 lines, binary files marked, whatever is
    cut marked ``truncated``. 404 before anything was merged; 502/503/504 when the broker
    cannot be asked."""
    mission = await _mission_or_wait(ctx, mission_id)
    head = mission.final_sha or await _integration_head(ctx, mission_id)
    if mission.base_sha is None or mission.integration_branch is None or head is None:
        raise not_found(
            f"a merge into mission {mission_id!r}'s branch",
            reason="no task has been merged yet",
        )
    try:
        return await broker.mission_diff(
            mission.repository, mission_id, mission.integration_branch, mission.base_sha, head
        )
    except BrokerUnavailable as failed:
        raise _broker_failed(f"the diff of mission {mission_id!r}", failed) from None


class DefaultBranch(msgspec.Struct, kw_only=True):
    repository: str
    default_branch: str


@get(
    "/repositories/default-branch",
    summary="The default branch of a repository (a local path or a remote URL)",
    guards=[WRITE],
    responses=error_responses(400, 401, 403, 404, 502, 503, 504),
    tags=["missions"],
)
async def repository_default_branch(
    broker: NamedDependency[BrokerReader],
    repository: Annotated[str, QueryParameter(min_length=1, max_length=4096)],
) -> DefaultBranch:
    """What a new mission's base branch defaults to in the board's form, read by the git
    broker as it would read it when preparing the mission (a local ``HEAD``, a remote's
    advertised ``HEAD``). Only for those who may submit missions: it makes the broker
    read the repository. 400 for a reference the broker refuses, 404 when there is no
    default branch, 502 when a remote cannot be reached."""
    try:
        branch = await broker.default_branch(repository)
    except BrokerUnavailable as failed:
        raise _broker_failed("the repository's default branch", failed) from None
    return DefaultBranch(repository=repository, default_branch=branch)


def board_router() -> Router:
    """The board's queries, with the context of the gateway a request came to injected
    as ``ctx`` as in the rest of the API (and its database and broker reader)."""
    return Router(
        path="/",
        route_handlers=[
            read_model_position,
            tasks_progress,
            get_task_diff,
            get_mission_diff,
            repository_default_branch,
        ],
        dependencies={
            "ctx": Provide(request_context, sync_to_thread=False),
            "db": Provide(_database, sync_to_thread=False),
            "broker": Provide(_broker, sync_to_thread=False),
        },
    )


def _database(ctx: NamedDependency[GatewayContext]) -> Database:
    return ctx.db


def _broker(ctx: NamedDependency[GatewayContext]) -> BrokerReader:
    return ctx.broker
