"""The queries the web board needs beyond the rest of the API: where the read model
stands (so a page can load a snapshot and then stream from exactly that point), the
progress of a page of missions in one call, and a task branch's diff against the
integration head it started from."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from litestar import Router, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from aether_events import is_valid_token
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.diffs import DiffUnavailable, TaskDiff, default_branch, task_diff
from aether_gateway.adapters.progress import Progress, progress_of
from aether_gateway.api.auth import READ, WRITE
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import bad_request, error_responses, not_found
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


@get(
    "/missions/{mission_id:str}/tasks/{task_id:str}/diff",
    summary="A task's commit as a diff against the integration head it started from",
    guards=[READ],
    responses=error_responses(400, 401, 403, 404),
    tags=["tasks"],
)
async def get_task_diff(
    ctx: NamedDependency[GatewayContext], mission_id: FromPath[str], task_id: FromPath[str]
) -> TaskDiff:
    """Read from the mission's repository when the gateway can reach it (a local
    directory); 404 when the task has no commit yet or the repository is elsewhere."""
    mission = await _mission_or_wait(ctx, mission_id)
    task = await ctx.queries.task(mission_id, task_id)
    if task is None:
        raise not_found(f"task {task_id!r} of mission {mission_id!r}")
    base = task.base_sha or mission.base_sha
    if task.commit_sha is None or base is None:
        raise not_found(f"a commit of task {task_id!r}", reason="the agent has not committed")
    try:
        return await asyncio.to_thread(
            task_diff, mission.repository, mission_id, task_id, base, task.commit_sha
        )
    except DiffUnavailable as error:
        raise not_found(f"the diff of task {task_id!r}", reason=str(error)) from None


class DefaultBranch(msgspec.Struct, kw_only=True):
    repository: str
    default_branch: str


@get(
    "/repositories/default-branch",
    summary="The default branch of a repository the gateway can read (a local directory)",
    guards=[WRITE],
    responses=error_responses(400, 401, 403, 404),
    tags=["missions"],
)
async def repository_default_branch(
    repository: Annotated[str, QueryParameter(min_length=1, max_length=4096)],
) -> DefaultBranch:
    """What a new mission's base branch defaults to in the board's form. Only for those
    who may submit missions (it tells whether a path is a repository); a repository the
    gateway cannot read (a URL, another machine's path) is a 404."""
    try:
        branch = await asyncio.to_thread(default_branch, repository)
    except DiffUnavailable as error:
        raise not_found("the repository's default branch", reason=str(error)) from None
    return DefaultBranch(repository=repository, default_branch=branch)


def board_router(ctx: GatewayContext, db: Database) -> Router:
    """The board's queries, with ``ctx`` injected as in the rest of the API."""
    return Router(
        path="/",
        route_handlers=[
            read_model_position,
            tasks_progress,
            get_task_diff,
            repository_default_branch,
        ],
        dependencies={
            "ctx": Provide(lambda: ctx, sync_to_thread=False, use_cache=True),
            "db": Provide(lambda: db, sync_to_thread=False, use_cache=True),
        },
    )
