"""The scheduler's own CPU cost, in one process, with no bus and no other service.

Missions are played through the scheduler's pure core exactly as its handler does
(fold the event, ``decide``, fold each decision), with the events the other services
would send (workspace ready, agent started, usage, agent completed, branch merged)
built here. Two figures:

1. **Start-up replay**: ``--missions`` finished chains of ``--template-tasks`` tasks are
   folded into a fresh projection the way the start-up replay folds the stream
   (``Projection.apply`` with each event's sequence), without reading them from a bus:
   the time is the fold alone. ``--profile FILE`` saves a cProfile of that fold.
2. **Per-task cost against mission size**: for each N in ``--sizes`` a chained mission of
   N tasks runs through fold + ``decide`` (as ``Handlers.handle`` does); the CPU time per
   task, median of ``--repeats`` runs, and its ratio against the first size. With
   ``--history`` finished missions already in the state, as after a start-up replay.

    uv run python bench/scheduler_fold.py [--missions 1000] [--template-tasks 3]
        [--sizes 10,50,200] [--repeats 5] [--history 0] [--profile FILE]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aether_events import (
    AgentCompleted,
    AgentStarted,
    BranchMerged,
    Event,
    MissionRequested,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    Usage,
    UsageRecorded,
    WorkspaceReady,
)
from aether_runtime import Projection
from aether_scheduler.domain import Config, State, decide, evolve

CONFIG = Config(tier_models={"small": "s", "standard": "m", "complex": "l"})
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


class Mission:
    """One chained mission played through the scheduler's core, as its handler runs it."""

    def __init__(self, mission_id: str, n: int, state: State, ids: Iterator[int]) -> None:
        self.mission_id = mission_id
        self.n = n
        self.state = state
        self.ids = ids
        self.now = T0
        self.log: list[Event] = []

    def meta(self) -> dict[str, Any]:
        self.now += timedelta(milliseconds=50)
        return {
            "event_id": f"e{next(self.ids)}",
            "mission_id": self.mission_id,
            "occurred_at": self.now,
            "correlation_id": self.mission_id,
        }

    def when(self, event: Event) -> list[Event]:
        self.state = evolve(self.state, event)
        self.log.append(event)
        decided = decide(self.state, event, self.now, CONFIG)
        for out in decided:
            self.state = evolve(self.state, out)
        self.log.extend(decided)
        return decided

    def run(self) -> None:
        tasks = [
            PlannedTask(
                id=f"t{i}",
                title=f"task {i}",
                files=[f"f{i}.txt"],
                depends_on=[f"t{i - 1}"] if i else [],
            )
            for i in range(self.n)
        ]
        pending = self.when(
            MissionRequested(**self.meta(), repository="/r", requirement="chain", auto_approve=True)
        )
        pending += self.when(
            RepositoryPrepared(
                **self.meta(),
                repository_path="/r",
                base_branch="main",
                base_sha="base",
                integration_branch=f"aether/{self.mission_id}",
            )
        )
        pending += self.when(PlanProduced(**self.meta(), version=1, tasks=tasks))
        while pending:
            event = pending.pop(0)
            if isinstance(event, TaskReady):
                pending += self.attempt(event)

    def attempt(self, ready: TaskReady) -> list[Event]:
        tid, attempt = ready.task.id, ready.attempt
        out = self.when(
            WorkspaceReady(
                **self.meta(),
                task=ready.task,
                attempt=attempt,
                model=ready.model,
                branch=f"aether/{self.mission_id}/{tid}",
                worktree_path=f"/w/{tid}",
                base_sha="base",
            )
        )
        out += self.when(
            AgentStarted(**self.meta(), task_id=tid, attempt=attempt, runner_id="r", model="m")
        )
        out += self.when(
            UsageRecorded(
                **self.meta(),
                service="agent-runner",
                model="m",
                step="agent",
                usage=Usage(input_tokens=10, output_tokens=10, cost_usd=0.0),
                task_id=tid,
                attempt=attempt,
            )
        )
        out += self.when(
            AgentCompleted(
                **self.meta(), task_id=tid, attempt=attempt, commit_sha=f"c{tid}", branch="b"
            )
        )
        out += self.when(
            BranchMerged(
                **self.meta(),
                task_id=tid,
                attempt=attempt,
                merge_sha=f"m{tid}",
                integration_branch=f"aether/{self.mission_id}",
                files_changed=list(ready.task.files),
            )
        )
        return out


def finished_missions(count: int, tasks: int) -> tuple[State, list[Event]]:
    """``count`` finished chains, played one after another; their events in order."""
    ids = itertools.count(1)
    state = State()
    events: list[Event] = []
    for i in range(count):
        mission = Mission(f"m{i:05d}", tasks, state, ids)
        mission.run()
        state = mission.state
        events.extend(mission.log)
    return state, events


def replay(events: list[Event], profile: str | None = None) -> float:
    """CPU seconds to fold ``events`` into a fresh projection, as the start-up replay does."""
    projection: Projection[State] = Projection(State(), evolve)
    profiler = cProfile.Profile() if profile else None
    began = time.process_time()
    if profiler:
        profiler.enable()
    for seq, event in enumerate(events, 1):
        projection.apply(event, seq)
    projection.advance(len(events))
    if profiler and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    return time.process_time() - began


def per_task(n: int, history: State) -> float:
    """CPU seconds per task of one chained mission of ``n`` tasks (fold and decide)."""
    mission = Mission("m-measured", n, history, itertools.count(10**9))
    began = time.process_time()
    mission.run()
    took = time.process_time() - began
    merged = sum(1 for e in mission.log if isinstance(e, BranchMerged))
    assert merged == n, f"the mission merged {merged} of {n} tasks"
    return took / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--missions", type=int, default=1000)
    parser.add_argument("--template-tasks", type=int, default=3)
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-sizes", action="store_true")
    args = parser.parse_args()
    print(f"bench/scheduler_fold: {os.cpu_count()} cores, {load()}")
    if not args.skip_replay:
        _, events = finished_missions(args.missions, args.template_tasks)
        took = statistics.median(replay(events) for _ in range(args.repeats))
        if args.profile:
            replay(events, args.profile)
        print(
            f"replay: {args.missions} finished {args.template_tasks}-task chains,"
            f" {len(events)} events, folded in {took:.2f} s CPU, median of {args.repeats}"
            f" ({took / len(events) * 1e6:.0f} µs/event, {load()})"
        )
    if not args.skip_sizes:
        history, _ = finished_missions(args.history, args.template_tasks)
        sizes = [int(n) for n in args.sizes.split(",")]
        found: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(args.repeats):
            for n in sizes:  # interleaved, so a change of load hits every size
                found[n].append(per_task(n, history))
        base = statistics.median(found[sizes[0]])
        print(
            f"per task, fold + decide, chained, {args.history} finished missions in the"
            f" state, median of {args.repeats} ({load()}):"
        )
        for n in sizes:
            median = statistics.median(found[n])
            print(f"  N={n:<4} {median * 1e6:8.0f} µs/task ({median / base:.2f}x N={sizes[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
