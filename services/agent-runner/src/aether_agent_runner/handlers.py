"""On WorkspaceReady: run the agent in the worktree, commit, publish the result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anthropic

from aether_agent_runner.adapters.git import commit_all, commit_message_trailers, head_sha
from aether_agent_runner.agent import Limits, Outcome, run_agent
from aether_agent_runner.domain import State, should_run
from aether_agent_runner.workspace import Workspace
from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentStarted,
    Event,
    EventPublisher,
    Usage,
    UsageRecorded,
    WorkspaceReady,
    caused_by,
    new_event_id,
)
from aether_llm import OFFLINE_MODEL
from aether_runtime import Delivery, Projection

log = logging.getLogger("aether.agent-runner")

RUNNER_ID = f"{socket.gethostname()}-{new_event_id()[:6]}"


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], EventPublisher],
        client: anthropic.AsyncAnthropic,
        limits: Limits | None = None,
        heartbeat_seconds: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self._client = client
        self._limits = limits or Limits()
        self._heartbeat_seconds = heartbeat_seconds
        self._clock = clock

    async def handle(self, event: Event, delivery: Delivery) -> None:
        self.projection.apply(event)
        if not isinstance(event, WorkspaceReady):
            return
        state = self.projection.state
        if not should_run(state, event.mission_id, event.task.id, event.attempt):
            log.info("attempt already settled or mission over; skipping")
            return
        async with delivery.keep_alive(), self._heartbeat(event):
            result = await self._work(event)
        await self._publish(result)

    async def _publish(self, event: Event) -> None:
        await self._publisher().publish(event)
        self.projection.apply(event)

    async def _work(self, ready: WorkspaceReady) -> Event:
        task_id, attempt = ready.task.id, ready.attempt
        worktree = Path(ready.worktree_path)
        if not await asyncio.to_thread(worktree.is_dir):
            return self._failed(ready, f"worktree {worktree} does not exist", retryable=True)
        resumed = await asyncio.to_thread(self._already_committed, ready, worktree)
        if resumed is not None:
            log.info("found this attempt's commit from before a restart; not running again")
            return resumed
        await self._publisher().publish(
            AgentStarted(
                **caused_by(ready, self._clock(), "agent_started", task_id, attempt),
                task_id=task_id,
                attempt=attempt,
                runner_id=RUNNER_ID,
                model=ready.model,
            )
        )
        workspace = Workspace(worktree)

        async def on_call(turn: int, usage: Usage) -> None:
            await self._publisher().publish(
                UsageRecorded(
                    **caused_by(ready, self._clock(), "usage", "agent", task_id, attempt, turn),
                    service="agent-runner",
                    model=ready.model,
                    usage=usage,
                    step=f"agent:{task_id}:a{attempt}:turn{turn}",
                    offline=ready.model == OFFLINE_MODEL,
                    task_id=task_id,
                    attempt=attempt,
                )
            )

        try:
            outcome = await run_agent(self._client, ready, workspace, on_call, self._limits)
        except anthropic.APIError as error:
            return self._failed(ready, f"model call failed: {error}", retryable=True)
        if not outcome.finished:
            return self._failed(ready, outcome.reason, retryable=True)
        return await asyncio.to_thread(self._commit, ready, worktree, outcome)

    def _commit(self, ready: WorkspaceReady, worktree: Path, outcome: Outcome) -> Event:
        task = ready.task
        cost = "unknown" if outcome.usage.cost_usd is None else f"{outcome.usage.cost_usd:.6f}"
        message = (
            f"{task.title}\n\n{outcome.summary}\n\n"
            f"Aether-Mission: {ready.mission_id}\n"
            f"Aether-Task: {task.id}\n"
            f"Aether-Attempt: {ready.attempt}\n"
            f"Aether-Model: {ready.model}\n"
            f"Aether-Cost-USD: {cost}\n"
        )
        sha, changed = commit_all(worktree, message)
        if sha is None:
            return self._failed(ready, "the agent finished without changing any file", True)
        return AgentCompleted(
            **caused_by(ready, self._clock(), "agent_completed", task.id, ready.attempt),
            task_id=task.id,
            attempt=ready.attempt,
            commit_sha=sha,
            branch=ready.branch,
            summary=outcome.summary,
            files_changed=changed,
            usage=outcome.usage,
        )

    def _already_committed(self, ready: WorkspaceReady, worktree: Path) -> AgentCompleted | None:
        head = head_sha(worktree)
        if head == ready.base_sha:
            return None
        trailers = commit_message_trailers(head, worktree)
        if trailers.get("Aether-Task") != ready.task.id or trailers.get("Aether-Attempt") != str(
            ready.attempt
        ):
            return None
        return AgentCompleted(
            **caused_by(ready, self._clock(), "agent_completed", ready.task.id, ready.attempt),
            task_id=ready.task.id,
            attempt=ready.attempt,
            commit_sha=head,
            branch=ready.branch,
            summary="(recovered after a restart)",
        )

    def _failed(self, ready: WorkspaceReady, reason: str, retryable: bool) -> AgentFailed:
        return AgentFailed(
            **caused_by(ready, self._clock(), "agent_failed", ready.task.id, ready.attempt),
            task_id=ready.task.id,
            attempt=ready.attempt,
            reason=reason,
            retryable=retryable,
        )

    @contextlib.asynccontextmanager
    async def _heartbeat(self, ready: WorkspaceReady):  # type: ignore[no-untyped-def]
        """Publish AgentHeartbeat on the telemetry stream while the agent works."""

        async def beat() -> None:
            beat_number = 0
            while True:
                beat_number += 1
                with contextlib.suppress(Exception):
                    await self._publisher().publish(
                        AgentHeartbeat(
                            **caused_by(
                                ready,
                                self._clock(),
                                "heartbeat",
                                ready.task.id,
                                ready.attempt,
                                RUNNER_ID,
                                beat_number,
                            ),
                            task_id=ready.task.id,
                            attempt=ready.attempt,
                            runner_id=RUNNER_ID,
                        )
                    )
                await asyncio.sleep(self._heartbeat_seconds)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
