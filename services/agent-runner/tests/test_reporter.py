"""How often an attempt reports its progress: the interval counted from its start."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aether_agent_runner.adapters.attempt import Reporter
from aether_agent_runner.adapters.model import Progress
from aether_events import AgentProgress, Event, PlannedTask, Usage, UsageRecorded, WorkspaceReady

NOW = datetime(2026, 1, 1, tzinfo=UTC)
READY = WorkspaceReady(
    event_id="m-1-ready",
    mission_id="m-1",
    occurred_at=NOW,
    correlation_id="c",
    task=PlannedTask(id="t1", title="t"),
    attempt=1,
    model="claude",
    branch="aether-tasks/m-1/t1/a1",
    worktree_path="/wt",
    base_sha="b" * 40,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reporter(interval: float, clock: Clock, emitted: list[Event]) -> Reporter:
    async def emit(event: Event) -> None:
        emitted.append(event)

    return Reporter(READY, emit, lambda: NOW, "runner-1", interval, monotonic=clock)


def step(turns: int, action: str) -> Progress:
    return Progress(
        turns=turns, tool_calls=turns, files_changed=["a.py"], usage=Usage(), last_action=action
    )


def progress(emitted: list[Event]) -> list[str]:
    return [event.last_action for event in emitted if isinstance(event, AgentProgress)]


def test_the_first_progress_comes_an_interval_after_the_start() -> None:
    clock, emitted = Clock(), []
    report = reporter(5.0, clock, emitted)

    async def attempt() -> None:
        clock.now += 1.0  # the first model call's reply
        await report.progressed(step(1, "replied"))
        await report.model_called(1, Usage(input_tokens=10))
        clock.now += 3.9  # still within the interval of the start
        await report.progressed(step(1, "called write_file"))
        clock.now += 0.2  # 5.1 s in
        await report.progressed(step(2, "replied"))
        clock.now += 4.0
        await report.progressed(step(3, "called read_file"))
        clock.now += 1.0  # 5 s after the last report
        await report.progressed(step(4, "replied"))

    asyncio.run(attempt())
    assert progress(emitted) == ["replied", "replied"]
    reported = [e for e in emitted if isinstance(e, AgentProgress)]
    assert [e.turns for e in reported] == [2, 4]
    # Usage is never held back: every model call's cost is recorded at once.
    assert [type(e) for e in emitted].count(UsageRecorded) == 1


def test_an_attempt_shorter_than_the_interval_reports_no_progress() -> None:
    clock, emitted = Clock(), []
    report = reporter(5.0, clock, emitted)

    async def attempt() -> None:
        for turn in range(1, 4):
            clock.now += 1.0
            await report.progressed(step(turn, "replied"))

    asyncio.run(attempt())
    assert progress(emitted) == []


def test_a_notice_is_reported_at_once_and_the_interval_counts_from_it() -> None:
    clock, emitted = Clock(), []
    report = reporter(5.0, clock, emitted)

    async def attempt() -> None:
        clock.now += 0.5
        await report.progressed(step(0, "resuming the session"), always=True)
        clock.now += 4.6  # 5.1 s after the start, 4.6 after the notice
        await report.progressed(step(1, "replied"))
        clock.now += 0.5
        await report.progressed(step(2, "replied"))

    asyncio.run(attempt())
    assert progress(emitted) == ["resuming the session", "replied"]


def test_no_interval_reports_every_step() -> None:
    clock, emitted = Clock(), []
    report = reporter(0.0, clock, emitted)

    async def attempt() -> None:
        for turn, action in enumerate(["replied", "called write_file", "replied"], 1):
            await report.progressed(step(turn, action))

    asyncio.run(attempt())
    assert progress(emitted) == ["replied", "called write_file", "replied"]
