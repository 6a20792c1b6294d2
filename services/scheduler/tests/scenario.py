"""Given/when helpers for scheduler tests: build events, fold them, decide."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentStarted,
    BranchMerged,
    Event,
    MergeConflicted,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    Usage,
    UsageRecorded,
)
from aether_scheduler.domain import Config, State, decide, evolve, tick

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
CONFIG = Config(
    tier_models={"small": "s", "standard": "m", "complex": "l"},
    max_attempts=2,
    estimate_usd={"small": 0.1, "standard": 1.0, "complex": 3.0},
    retry_base_seconds=10.0,
    heartbeat_timeout_seconds=60.0,
)


def task(tid: str, *deps: str, files: list[str] | None = None, **kw: Any) -> PlannedTask:
    return PlannedTask(
        id=tid, title=tid.upper(), files=files or [f"{tid}.txt"], depends_on=list(deps), **kw
    )


@dataclass
class Scenario:
    """A mission under test: events go in, decisions come out, the clock is explicit."""

    mission_id: str = "m-test"
    config: Config = CONFIG
    state: State = field(default_factory=State)
    now: datetime = T0
    log: list[Event] = field(default_factory=list)
    # The state the latest decisions were made in (after their trigger was folded).
    basis: State = field(default_factory=State)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def meta(self, mission_id: str | None = None) -> dict[str, Any]:
        return {
            "event_id": f"e{next(self._ids)}",
            "mission_id": mission_id or self.mission_id,
            "occurred_at": self.now,
            "correlation_id": "e0",
        }

    def when(self, event: Event) -> list[Event]:
        """Fold ``event``, decide, fold the decisions (as the handler does)."""
        self.state = evolve(self.state, event)
        self.log.append(event)
        self.basis = self.state
        decided = decide(self.state, event, self.now, self.config)
        for out in decided:
            self.state = evolve(self.state, out)
        self.log.extend(decided)
        return decided

    def given(self, *events: Event) -> None:
        for event in events:
            self.when(event)

    def tick(self, seconds: float = 0.0) -> list[Event]:
        self.now += timedelta(seconds=seconds)
        self.basis = self.state
        decided = tick(self.state, self.now, self.config)
        for out in decided:
            self.state = evolve(self.state, out)
        self.log.extend(decided)
        return decided

    # --- event builders -------------------------------------------------------------

    def start(self, *tasks: PlannedTask, approve: bool = True, **request: Any) -> list[Event]:
        self.given(
            MissionRequested(**self.meta(), repository="/r", requirement="do it", **request),
            RepositoryPrepared(
                **self.meta(),
                repository_path="/r",
                base_branch="main",
                base_sha="base",
                integration_branch=f"aether/{self.mission_id}",
            ),
            PlanProduced(**self.meta(), version=1, tasks=list(tasks)),
        )
        return self.when(PlanApproved(**self.meta(), version=1)) if approve else []

    def attempt(self, tid: str) -> int:
        return self.state.missions[self.mission_id].tasks[tid].attempt

    def status(self, tid: str) -> str:
        return self.state.missions[self.mission_id].tasks[tid].status

    def started(self, tid: str) -> list[Event]:
        return self.when(
            AgentStarted(
                **self.meta(), task_id=tid, attempt=self.attempt(tid), runner_id="r", model="m"
            )
        )

    def heartbeat(self, tid: str) -> list[Event]:
        return self.when(
            AgentHeartbeat(**self.meta(), task_id=tid, attempt=self.attempt(tid), runner_id="r")
        )

    def used(self, tid: str | None, cost: float | None) -> list[Event]:
        return self.when(
            UsageRecorded(
                **self.meta(),
                service="agent-runner",
                model="m",
                step="s",
                usage=Usage(input_tokens=100, output_tokens=10, cost_usd=cost),
                task_id=tid,
                attempt=self.attempt(tid) if tid else None,
            )
        )

    def completed(self, tid: str, outside_scope: list[str] | None = None) -> list[Event]:
        return self.when(
            AgentCompleted(
                **self.meta(),
                task_id=tid,
                attempt=self.attempt(tid),
                commit_sha=f"c-{tid}",
                branch="b",
                files_outside_scope=outside_scope or [],
            )
        )

    def merged(self, tid: str, files: list[str] | None = None) -> list[Event]:
        return self.when(
            BranchMerged(
                **self.meta(),
                task_id=tid,
                attempt=self.attempt(tid),
                merge_sha=f"sha-{tid}-{self.attempt(tid)}",
                integration_branch=f"aether/{self.mission_id}",
                files_changed=files or [],
            )
        )

    def finish(self, tid: str) -> list[Event]:
        """Start, complete and merge the current attempt; every decision along the way."""
        return self.started(tid) + self.completed(tid) + self.merged(tid)

    def failed(self, tid: str, retryable: bool = True, reason: str = "boom") -> list[Event]:
        return self.when(
            AgentFailed(
                **self.meta(),
                task_id=tid,
                attempt=self.attempt(tid),
                reason=reason,
                retryable=retryable,
            )
        )

    def conflicted(self, tid: str, files: list[str]) -> list[Event]:
        return self.when(
            MergeConflicted(
                **self.meta(),
                task_id=tid,
                attempt=self.attempt(tid),
                files=files,
                integration_sha="h",
            )
        )


def of(events: list[Event], cls: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def ready(events: list[Event]) -> list[str]:
    return [e.task.id for e in events if isinstance(e, TaskReady)]
