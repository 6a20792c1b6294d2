"""Load → decide → act on the repository → publish.

Events arrive one at a time (the consumer has a single worker), which is what makes the
broker the one writer of every repository. Each event is folded into the projection,
``decide`` picks the action, the repository work runs in a thread (dulwich is blocking),
and the resulting events are published and folded straight away so the next delivery
already sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from dulwich.objects import ObjectID

from aether_events import (
    AgentCompleted,
    Event,
    MissionCancelled,
    MissionRequested,
    Publisher,
    TaskReady,
    WorkspaceReady,
    is_terminal,
    tag_of,
)
from aether_git_broker import metrics
from aether_git_broker.adapters.checkout import UnsafePath
from aether_git_broker.adapters.defaultbranch import local_default_branch, remote_default_branch
from aether_git_broker.adapters.git import Handle, RepositoryError
from aether_git_broker.adapters.locks import STALE_AFTER, FileLocked, lock_age, remove_if_stale
from aether_git_broker.adapters.remote import RemoteError, Remotes
from aether_git_broker.adapters.repository import Verifier as MergeCheck
from aether_git_broker.adapters.smarthttp import PushTokens
from aether_git_broker.adapters.verify import Verifier
from aether_git_broker.adapters.worktrees import sweep_directory
from aether_git_broker.domain import (
    Action,
    BrokerState,
    DiskFailed,
    Failure,
    FailWorkspace,
    FinishMission,
    Ignore,
    MergeOutcome,
    MergeTask,
    Policy,
    PrepareRepository,
    PrepareWorkspace,
    Push,
    Refused,
    RejectMission,
    Sweep,
    after_push_failure,
    cancel_reason,
    delivered_event,
    delivery_failed_event,
    failure_event,
    merge_event,
    mission_failed_event,
    repository_prepared_event,
    sweep,
    withheld_reason,
    workspace_failed_event,
    workspace_ready_event,
)
from aether_git_broker.domain import decide as decide_action
from aether_git_broker.naming import Naming
from aether_git_broker.ports import Repositories
from aether_git_broker.sources import LocalSource, RemoteSource, redact
from aether_runtime import Delivery, Projection, note, stored_sequence
from aether_sandbox import StopOrder

log = logging.getLogger("aether.git_broker")
# Merge outcomes that leave the integration branch (and the task's worktree) as they were.
_REFUSED = ("conflict", "verify_failed", "withheld")

T = TypeVar("T")

# Stale locks one step may clear before it gives up (and the message is retried later).
MAX_LOCKS_CLEARED = 16


def utc_now() -> datetime:
    return datetime.now(UTC)


class Handlers:
    """The broker's event handler, holding the projection and the adapters."""

    def __init__(
        self,
        projection: Projection[BrokerState],
        git: Repositories,
        naming: Naming,
        publisher: Callable[[], Publisher],
        clock: Callable[[], datetime] = utc_now,
        keepalive_seconds: float = 10.0,
        *,
        lock_stale_seconds: float = STALE_AFTER,
        policy: Policy | None = None,
        remotes: Remotes | None = None,
        verifier: Verifier | None = None,
        push_tokens: PushTokens | None = None,
    ) -> None:
        self.projection = projection
        self._push_tokens = push_tokens
        self._git = git
        self._naming = naming
        self._publisher = publisher
        self._clock = clock
        self._keepalive = keepalive_seconds
        self._policy = policy or Policy()
        self._remotes = remotes
        self._verifier = verifier or Verifier()
        self._lock_stale_seconds = lock_stale_seconds
        # Workspaces whose WorkspaceReady is being published, by (mission, task, attempt):
        # whoever holds the event's push token may fetch the moment it reaches them, before
        # the publish's acknowledgement is back and the projection has folded it.
        self.announcing: dict[tuple[str, str, int], WorkspaceReady] = {}
        # Branches of merged tasks not deleted yet: (repository path, branch).
        self._merged_branches: list[tuple[str, str]] = []
        # Missions whose cancel was heard ahead of the ordered consumer (``hear_cancel``),
        # with why, until the consumer folds it: a few at a time, read by ``decide`` and by
        # the merge under way (from its thread) just before the branch moves.
        self.cancels: dict[str, str] = {}
        # The merge under way: its mission, and the stop order of its verification.
        self._merging: tuple[str, StopOrder] | None = None

    async def handle(self, event: Event, delivery: Delivery) -> None:
        """Handle one delivery; raising makes the runtime retry it later."""
        self.projection.apply(event, delivery.sequence)
        if is_terminal(event):
            self.cancels.pop(event.mission_id, None)  # folded: the projection knows now
        action = decide_action(
            self.projection.state, event, self._naming, self._policy, self.cancels
        )
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
            case FailWorkspace():
                assert isinstance(event, TaskReady)
                event_out = workspace_failed_event(
                    event, self._clock(), action.reason, retryable=False
                )
                await self._publish(event_out)
                log.warning("workspace refused", extra={"reason": action.reason})
            case MergeTask():
                assert isinstance(event, AgentCompleted)
                await self._merge(event, action, delivery)
            case FinishMission():
                await self._finish(event, action, delivery)

    def hear_cancel(self, event: MissionCancelled) -> None:
        """A cancel heard as it is stored, ahead of the ordered consumer: no merge of its
        mission lands from now on, and a verification of one running now is stopped."""
        view = self.projection.state.mission(event.mission_id)
        if view is not None and view.terminal:
            return  # the consumer has folded the mission's end already
        reason = cancel_reason(event)
        self.cancels[event.mission_id] = reason
        merging = self._merging
        if merging is not None and merging[0] == event.mission_id:
            merging[1].stop(reason)
        log.info("cancel heard", extra={"mission_id": event.mission_id, "reason": reason})

    async def start_up(self) -> None:
        """Remove what a crash left behind, judged from the replayed projection: lock
        files in the repositories (see ``adapters.locks``: this process is their one
        writer and has not written yet, so none is live), worktrees nobody works in any
        more, registrations of vanished ones, task branches of merged attempts and
        finished missions. Runs before the first delivery."""
        plan = sweep(self.projection.state, self._naming)
        await asyncio.to_thread(self._sweep_blocking, plan)

    def _sweep_blocking(self, plan: Sweep) -> None:
        locks = self._clear_locks(plan)
        metrics.CLEANED.labels("lock", "start").inc(len(locks))
        if locks:
            log.warning("lock files left by a killed writer removed", extra={"locks": locks})
        removed = sweep_directory(self._naming.worktrees_dir, plan.live_worktrees)
        for path in plan.repositories:
            removed += self._git.prune_worktrees(
                path, self._naming.worktrees_dir, plan.live_worktrees
            )
        # A branch whose ref a live writer may hold (a shared lock not yet stale, see
        # ``_clear_locks``) is left for a later start or step: failing the start on it
        # had the service exit at every start until the lock was stale.
        locked: list[str] = []
        branches = [
            branch
            for path, prefix in plan.finished
            for branch in self._git.delete_branches(path, prefix, locked)
        ]
        for path, branch in plan.merged_branches:
            try:
                if self._git.delete_branch(path, branch):
                    branches.append(branch)
            except FileLocked as held:
                locked.append(os.fsdecode(held.lockfilename))
        if locked:
            log.warning("branches behind a live lock left for later", extra={"locks": locked})
        removed += self._git.drop_idle_pools(plan.active_repositories)
        removed += self._git.clear_pool_leftovers()
        metrics.CLEANED.labels("worktree", "start").inc(len(removed))
        metrics.CLEANED.labels("branch", "start").inc(len(branches))
        if removed or branches:
            log.info(
                "leftovers removed at start-up",
                extra={"worktrees": sorted(set(removed)), "branches": branches},
            )

    def _clear_locks(self, plan: Sweep) -> list[str]:
        # Locally an agent runner commits in its linked worktree (its index, its task
        # branch, loose objects): locks there are removed only once stale.
        shared = (
            f"refs/heads/{self._naming.branch_prefix}-tasks/",
            "worktrees/",
            "objects/",
        )
        removed = [
            lock for path in plan.repositories for lock in self._git.clear_locks(path, shared)
        ]
        if self._remotes is not None:
            removed += self._remotes.clear_locks()
        return removed

    async def _run(
        self, delivery: Delivery, work: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """Run blocking repository work in a thread, keeping the message alive meanwhile.

        A lock file in the way (``FileLocked``) is waited out and, once stale, removed;
        then the work runs again (every operation looks before it writes). Failing the
        message instead would hold up every later one behind it, for good, since the
        redelivery meets the same lock.
        """
        async with delivery.keep_alive(self._keepalive):
            cleared = 0
            while True:
                try:
                    return await asyncio.to_thread(work, *args, **kwargs)
                except FileLocked as locked:
                    if cleared >= MAX_LOCKS_CLEARED:
                        raise
                    await self._wait_out(os.fsdecode(locked.lockfilename))
                    cleared += 1

    async def _wait_out(self, lock: str) -> None:
        """Return once ``lock`` is gone: released by its writer, or removed as stale
        (untouched for ``lock_stale_seconds``: no live writer holds a lock that long)."""
        while True:
            age = await asyncio.to_thread(lock_age, lock)
            if age is None:
                return
            if age >= self._lock_stale_seconds:
                if await asyncio.to_thread(remove_if_stale, lock, self._lock_stale_seconds):
                    metrics.CLEANED.labels("lock", "step").inc()
                return
            await asyncio.sleep(min(self._lock_stale_seconds - age, 0.5) + 0.01)

    async def _publish(self, event: Event) -> None:
        ack = await self._publisher().publish(event)
        self.projection.apply(event, stored_sequence(ack))

    async def _failed(self, cause: Event, action: Action, failure: Failure, what: str) -> None:
        """Publish what the domain says a failed step becomes (or raise, so the runtime
        retries the delivery, when it says nothing was decided)."""
        answer = failure_event(cause, action, failure, self._clock())
        if answer is None:
            raise RuntimeError(f"{what}: {failure}")
        await self._publish(answer)
        log.warning(what, extra={"reason": answer.reason})

    # --- repositories -------------------------------------------------------------

    async def _prepare_repository(
        self, event: MissionRequested, action: PrepareRepository, delivery: Delivery
    ) -> None:
        try:
            if not action.base_branch:
                branch = await self._default_branch(action.source, delivery)
                action = dataclasses.replace(action, base_branch=branch)
            path = await self._local_copy(action, delivery)
            outcome = await self._run(
                delivery,
                self._git.prepare_repository,
                path,
                action.base_branch,
                action.integration_branch,
            )
        except (RepositoryError, RemoteError) as error:
            await self._failed(event, action, Refused(str(error)), "repository rejected")
            return
        prepared = repository_prepared_event(event, self._clock(), outcome, action.delivery_remote)
        await self._publish(prepared)
        # Worktrees for the first tasks are checked out while the mission is planned.
        await asyncio.to_thread(
            self._git.prewarm, outcome.path, outcome.base_sha, event.max_concurrency
        )
        log.info(
            "repository prepared",
            extra={
                "repository": outcome.path,
                "integration_branch": outcome.integration_branch,
                "base_sha": outcome.base_sha,
            },
        )

    async def _default_branch(self, source: LocalSource | RemoteSource, delivery: Delivery) -> str:
        """The branch a mission requested without a base starts from: the repository's
        default (``RepositoryError`` or ``RemoteError`` when it has none)."""
        if isinstance(source, LocalSource):
            return await self._run(delivery, local_default_branch, source.path)
        if self._remotes is None:
            raise RemoteError("this broker has no data directory for remote repositories")
        return await self._run(
            delivery, remote_default_branch, source, self._remotes.timeout, self._remotes.ssh
        )

    async def _local_copy(self, action: PrepareRepository, delivery: Delivery) -> str:
        """The local path of the mission's repository, cloning or fetching a remote one."""
        source = action.source
        if isinstance(source, LocalSource):
            return source.path
        if self._remotes is None:
            raise RemoteError("this broker has no data directory for remote repositories")
        began = time.perf_counter()
        try:
            path, cloned = await self._run(
                delivery, self._remotes.fetch, source, action.base_branch
            )
        except RemoteError:
            metrics.FETCHES.labels("failed").inc()
            raise
        metrics.FETCH_SECONDS.observe(time.perf_counter() - began)
        metrics.FETCHES.labels("cloned" if cloned else "fetched").inc()
        return path

    # --- workspaces ---------------------------------------------------------------

    async def _prepare_workspace(
        self, event: TaskReady, action: PrepareWorkspace, delivery: Delivery
    ) -> None:
        began = time.perf_counter()
        try:
            outcome = await self._run(
                delivery,
                self._git.prepare_workspace,
                action.repository_path,
                action.integration_branch,
                action.branch,
                action.worktree_path,
                event.resolve_sha,
            )
        except (RepositoryError, UnsafePath) as error:
            await self._failed(event, action, Refused(str(error)), "workspace impossible")
            return
        except OSError as error:
            await self._failed(event, action, DiskFailed(str(error)), "workspace failed")
            return
        if outcome.created:
            metrics.WORKTREES_CREATED.inc()
            metrics.WORKTREE_SECONDS.observe(time.perf_counter() - began)
        if self._push_tokens is not None:
            token = self._push_tokens.mint(event.mission_id, event.task.id, event.attempt)
            outcome = dataclasses.replace(outcome, push_token=token)
        ready = workspace_ready_event(event, self._clock(), outcome)
        key = (event.mission_id, event.task.id, event.attempt)
        self.announcing[key] = ready
        try:
            await self._publish(ready)
        finally:
            del self.announcing[key]
        made = {
            "branch": outcome.branch,
            "worktree": outcome.worktree_path,
            "base_sha": outcome.base_sha,
            "reused": not outcome.created,
        }
        if not note(**made):
            log.info("workspace ready", extra=made)
        await self._delete_merged_branches(delivery)

    # --- merges -------------------------------------------------------------------

    async def _merge(self, event: AgentCompleted, action: MergeTask, delivery: Delivery) -> None:
        began = time.perf_counter()
        mission_id = event.mission_id
        stop = StopOrder()
        verify = None
        if action.verify_command and action.withheld is None:
            verify = functools.partial(
                self._verify,
                command=action.verify_command,
                scratch=self._naming.verify_path(mission_id, action.task_id, action.attempt),
                stop=stop,
            )
        self._merging = (mission_id, stop)
        try:
            outcome, merged_at, recycled = await self._run(
                delivery,
                self._merge_and_recycle,
                action,
                mission_id,
                self._clock(),
                verify,
                lambda: (
                    action.withheld
                    or withheld_reason(self.projection.state, mission_id, self.cancels)
                ),
            )
        except RepositoryError as error:
            await self._failed(event, action, Refused(str(error)), "merge impossible")
            return
        finally:
            self._merging = None
        metrics.MERGE_SECONDS.observe(merged_at - began)
        metrics.MERGES.labels(outcome.kind).inc()
        extra = {"result": outcome.kind, "sha": outcome.sha, "files": list(outcome.files)}
        if outcome.kind == "withheld":
            log.info("merge withheld", extra={**extra, "reason": outcome.detail})
        elif outcome.kind in _REFUSED:
            log.warning("merge refused", extra={**extra, "detail": outcome.detail[:2000]})
        else:
            # Before publishing, so whoever sees BranchMerged never finds the worktree.
            if recycled is None:
                # A lock was in the way: waited out (and the worktree recycled) here.
                await self._recycle_after_merge(action, delivery)
            else:
                self._recycled(action, recycled)
            if not note(**extra):
                log.info("merged", extra=extra)
        await self._publish(
            merge_event(
                event,
                self._clock(),
                action.integration_branch,
                outcome,
                resolution=action.resolution,
            )
        )
        if outcome.kind not in _REFUSED:
            # Deleted once the next workspace is announced, while its agent works and this
            # consumer has nothing to do, rather than between the merge and its event or
            # before the next workspace (both on a chained mission's critical path). A stop
            # before then leaves a merged task's branch, which start-up removes, as the
            # mission's end removes every task branch.
            self._merged_branches.append((action.repository_path, action.task_branch))

    def _verify(
        self, handle: Handle, commit: ObjectID, *, command: str, scratch: str, stop: StopOrder
    ) -> str | None:
        began = time.perf_counter()
        failure = self._verifier.verify(self._git, handle, commit, command, scratch, stop)
        metrics.VERIFY_SECONDS.observe(time.perf_counter() - began)
        last = self._verifier.last
        metrics.VERIFICATIONS.labels(last.result if last else "failed").inc()
        return failure

    def _merge_and_recycle(
        self,
        action: MergeTask,
        mission_id: str,
        now: datetime,
        verify: MergeCheck | None,
        withhold: Callable[[], str | None],
    ) -> tuple[MergeOutcome, float, bool | OSError | RepositoryError | None]:
        """The merge, then, unless it was refused, the task's worktree pooled for the next
        task of the repository (or removed): both in one hand-off to a worker thread, on
        a chained mission's critical path. Returns the outcome, when the merge ended
        (``perf_counter``), and what recycling answered: whether a worktree went, the
        error that kept it, or ``None`` when it was not tried or a lock was in its way
        (the merge is not made again for that: the caller recycles on its own)."""
        outcome = self._git.merge(
            action.repository_path,
            action.integration_branch,
            since_sha=action.since_sha,
            mission_id=mission_id,
            task_id=action.task_id,
            attempt=action.attempt,
            commit_sha=action.commit_sha,
            now=now,
            verify=verify,
            withhold=withhold,
        )
        merged_at = time.perf_counter()
        if outcome.kind in _REFUSED:
            return outcome, merged_at, None
        try:
            recycled = self._git.recycle_worktree(action.repository_path, action.worktree_path)
        except FileLocked:
            return outcome, merged_at, None
        except (OSError, RepositoryError) as error:
            return outcome, merged_at, error
        return outcome, merged_at, recycled

    async def _recycle_after_merge(self, action: MergeTask, delivery: Delivery) -> None:
        try:
            # Pooled for the next task of this repository rather than deleted.
            removed: bool | OSError | RepositoryError = await self._run(
                delivery, self._git.recycle_worktree, action.repository_path, action.worktree_path
            )
        except (OSError, RepositoryError) as error:
            removed = error
        self._recycled(action, removed)

    def _recycled(self, action: MergeTask, removed: bool | OSError | RepositoryError) -> None:
        if isinstance(removed, Exception):
            # The merge stands; the mission's end (or the next start) removes what is left.
            log.warning(
                "worktree not removed",
                extra={"worktree": action.worktree_path, "error": str(removed)},
            )
            return
        metrics.CLEANED.labels("worktree", "step").inc(int(removed))

    async def _delete_merged_branches(self, delivery: Delivery) -> None:
        """Delete the branches of the tasks merged since the last call."""
        while self._merged_branches:
            repository_path, branch = self._merged_branches.pop()
            try:
                deleted = await self._run(
                    delivery, self._git.delete_branch, repository_path, branch
                )
            except (OSError, RepositoryError) as error:
                log.warning(
                    "task branch not removed", extra={"branch": branch, "error": str(error)}
                )
                continue
            metrics.CLEANED.labels("branch", "step").inc(int(deleted))

    # --- the end of a mission -----------------------------------------------------

    async def _finish(self, event: Event, action: FinishMission, delivery: Delivery) -> None:
        await self._delete_merged_branches(delivery)
        removed = await self._run(
            delivery,
            self._git.remove_worktrees_under,
            action.repository_path,
            action.worktrees_directory,
        )
        branches = await self._run(
            delivery, self._git.delete_branches, action.repository_path, action.task_branches
        )
        if action.drop_pool:
            await self._run(delivery, self._git.drop_pool, action.repository_path)
        metrics.CLEANED.labels("worktree", "step").inc(len(removed))
        metrics.CLEANED.labels("branch", "step").inc(len(branches))
        log.info("mission cleaned up", extra={"worktrees": removed, "branches": branches})
        if action.push is not None:
            await self._push(event, action.repository_path, action.push, delivery)

    async def _push(
        self, completed: Event, repository_path: str, push: Push, delivery: Delivery
    ) -> None:
        """Deliver the result once: the remote branch is looked at before pushing, so a
        redelivered MissionCompleted (after a crash, a restart) finds it there. The
        delivery is recorded (BranchPushed), and so is giving it up (BranchPushFailed)."""
        if self._remotes is None:
            log.error("no remotes adapter; the result was not pushed")
            return
        began = time.perf_counter()
        try:
            outcome = await self._run(
                delivery,
                self._remotes.push,
                repository_path,
                push.target,
                push.integration_branch,
                push.sha,
            )
        except RemoteError as error:
            metrics.PUSHES.labels("failed").inc()
            if after_push_failure(delivery.num_delivered) == "retry":
                log.warning("push failed; will retry", extra={"error": str(error)})
                raise
            log.error("push failed; giving up", extra={"error": str(error)})
            metrics.PUSHES.labels("given_up").inc()
            await self._publish(
                delivery_failed_event(
                    completed,
                    self._clock(),
                    push.integration_branch,
                    push.sha,
                    redact(push.target),
                    str(error),
                )
            )
            return
        metrics.PUSH_SECONDS.observe(time.perf_counter() - began)
        metrics.PUSHES.labels(outcome.kind).inc()
        await self._publish(
            delivered_event(
                completed,
                self._clock(),
                push.integration_branch,
                push.sha,
                redact(outcome.remote),
                already_there=outcome.kind == "already_pushed",
            )
        )
        log.info(
            "integration branch delivered" if outcome.kind == "pushed" else "already delivered",
            extra={
                "remote": redact(outcome.remote),
                "branch": push.integration_branch,
                "sha": push.sha,
            },
        )


_ACTED_ON: frozenset[type[Event]] = frozenset({MissionRequested, TaskReady, AgentCompleted})
