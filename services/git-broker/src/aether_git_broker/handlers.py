"""Load → decide → act on the repository → publish.

Events arrive one at a time (the consumer has a single worker), which is what makes the
broker the one writer of every repository. Each event is folded into the projection,
``decide`` picks the action, the repository work runs in a thread (dulwich is blocking),
and the resulting events are published and folded straight away so the next delivery
already sees them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aether_events import AgentCompleted, Event, MissionRequested, TaskReady, tag_of
from aether_git_broker import metrics
from aether_git_broker.adapters.git import GitRepositories, RepositoryError
from aether_git_broker.domain import (
    BrokerState,
    Ignore,
    MergeTask,
    PrepareRepository,
    PrepareWorkspace,
    RejectMission,
    RemoveWorktrees,
    decide,
    merge_event,
    mission_failed_event,
    repository_prepared_event,
    workspace_ready_event,
)
from aether_git_broker.naming import Naming
from aether_runtime import Delivery, Projection

log = logging.getLogger("aether.git_broker")

T = TypeVar("T")


class Publisher(Protocol):
    async def publish(self, event: Event) -> Any: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class Handlers:
    """The broker's event handler, holding the projection and the repository adapter."""

    def __init__(
        self,
        projection: Projection[BrokerState],
        git: GitRepositories,
        naming: Naming,
        publisher: Callable[[], Publisher],
        clock: Callable[[], datetime] = utc_now,
        keepalive_seconds: float = 10.0,
    ) -> None:
        self.projection = projection
        self._git = git
        self._naming = naming
        self._publisher = publisher
        self._clock = clock
        self._keepalive = keepalive_seconds

    async def handle(self, event: Event, delivery: Delivery) -> None:
        """Handle one delivery; raising makes the runtime retry it later."""
        self.projection.apply(event)
        action = decide(self.projection.state, event, self._naming)
        match action:
            case Ignore(reason=reason):
                level = logging.INFO if type(event) in _ACTED_ON else logging.DEBUG
                log.log(level, "nothing to do", extra={"type": tag_of(type(event)), "why": reason})
            case RejectMission():
                await self._publish(mission_failed_event(event, self._clock(), action.reason))
                log.warning("mission rejected", extra={"reason": action.reason})
            case PrepareRepository():
                assert isinstance(event, MissionRequested)
                await self._prepare_repository(event, action, delivery)
            case PrepareWorkspace():
                assert isinstance(event, TaskReady)
                await self._prepare_workspace(event, action, delivery)
            case MergeTask():
                assert isinstance(event, AgentCompleted)
                await self._merge(event, action, delivery)
            case RemoveWorktrees():
                removed = await self._run(
                    delivery,
                    self._git.remove_worktrees_under,
                    action.repository_path,
                    action.directory,
                )
                log.info("mission worktrees removed", extra={"worktrees": removed})

    async def _run(
        self, delivery: Delivery, work: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """Run blocking repository work in a thread, keeping the message alive meanwhile."""
        async with delivery.keep_alive(self._keepalive):
            return await asyncio.to_thread(work, *args, **kwargs)

    async def _publish(self, event: Event) -> None:
        await self._publisher().publish(event)
        self.projection.apply(event)

    async def _prepare_repository(
        self, event: MissionRequested, action: PrepareRepository, delivery: Delivery
    ) -> None:
        try:
            outcome = await self._run(
                delivery,
                self._git.prepare_repository,
                action.repository,
                action.base_branch,
                action.integration_branch,
            )
        except RepositoryError as error:
            await self._publish(mission_failed_event(event, self._clock(), str(error)))
            log.warning("repository rejected", extra={"reason": str(error)})
            return
        await self._publish(repository_prepared_event(event, self._clock(), outcome))
        log.info(
            "repository prepared",
            extra={
                "repository": outcome.path,
                "integration_branch": outcome.integration_branch,
                "base_sha": outcome.base_sha,
            },
        )

    async def _prepare_workspace(
        self, event: TaskReady, action: PrepareWorkspace, delivery: Delivery
    ) -> None:
        try:
            outcome = await self._run(
                delivery,
                self._git.prepare_workspace,
                action.repository_path,
                action.integration_branch,
                action.branch,
                action.worktree_path,
            )
        except RepositoryError as error:
            await self._publish(mission_failed_event(event, self._clock(), str(error)))
            log.warning("workspace impossible", extra={"reason": str(error)})
            return
        if outcome.created:
            metrics.WORKTREES_CREATED.inc()
        await self._publish(workspace_ready_event(event, self._clock(), outcome))
        log.info(
            "workspace ready",
            extra={
                "branch": outcome.branch,
                "worktree": outcome.worktree_path,
                "base_sha": outcome.base_sha,
                "reused": not outcome.created,
            },
        )

    async def _merge(self, event: AgentCompleted, action: MergeTask, delivery: Delivery) -> None:
        began = time.perf_counter()
        try:
            outcome = await self._run(
                delivery,
                self._git.merge,
                action.repository_path,
                action.integration_branch,
                since_sha=action.since_sha,
                mission_id=event.mission_id,
                task_id=action.task_id,
                attempt=action.attempt,
                commit_sha=action.commit_sha,
                now=self._clock(),
            )
        except RepositoryError as error:
            await self._publish(mission_failed_event(event, self._clock(), str(error)))
            log.warning("merge impossible", extra={"reason": str(error)})
            return
        metrics.MERGE_SECONDS.observe(time.perf_counter() - began)
        metrics.MERGES.labels(outcome.kind).inc()
        extra = {"result": outcome.kind, "sha": outcome.sha, "files": list(outcome.files)}
        if outcome.kind == "conflict":
            log.warning("merge conflicted", extra={**extra, "detail": outcome.detail})
        else:
            # Before publishing, so whoever sees BranchMerged never finds the worktree.
            await self._remove_worktree(action, delivery)
            log.info("merged", extra=extra)
        await self._publish(merge_event(event, self._clock(), action.integration_branch, outcome))

    async def _remove_worktree(self, action: MergeTask, delivery: Delivery) -> None:
        try:
            await self._run(
                delivery, self._git.remove_worktree, action.repository_path, action.worktree_path
            )
        except (OSError, RepositoryError) as error:
            # The merge stands; the mission's end removes what is left.
            log.warning(
                "worktree not removed",
                extra={"worktree": action.worktree_path, "error": str(error)},
            )


_ACTED_ON: frozenset[type[Event]] = frozenset({MissionRequested, TaskReady, AgentCompleted})
