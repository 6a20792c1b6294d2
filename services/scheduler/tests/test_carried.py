"""An attempt's result that carries its start and usage (``carried_by``) is handled as
those events delivered alone right before it: the same state, the same decisions with
the same ids, each event counted once however often and in whatever form it comes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest
from nats.js.api import PubAck

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    BranchMerged,
    BudgetExceeded,
    BudgetWarning,
    Event,
    MissionCompleted,
    MissionRequested,
    PlanApproved,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    TaskRetried,
    Usage,
    UsageRecorded,
    WaveCompleted,
    WaveStarted,
    alone,
    carried_by,
    tag_of,
)
from aether_events.testing import InMemoryPublisher
from aether_runtime import Delivery, Projection
from aether_scheduler.domain import State, evolve
from aether_scheduler.handlers import Handlers, packed

from .scenario import CONFIG, T0, Scenario, task

M = "m-carried"


def meta(event_id: str, seconds: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "mission_id": M,
        "occurred_at": T0 + timedelta(seconds=seconds),
        "correlation_id": "req",
    }


def started(tid: str, seconds: float) -> AgentStarted:
    return AgentStarted(
        **meta(f"started-{tid}", seconds), task_id=tid, attempt=1, runner_id="r", model="m"
    )


def used(tid: str, turn: int, cost: float, seconds: float) -> UsageRecorded:
    return UsageRecorded(
        **meta(f"used-{tid}-{turn}", seconds),
        service="agent-runner",
        model="m",
        step=f"agent:{tid}:a1:turn{turn}",
        usage=Usage(input_tokens=100, output_tokens=10, cost_usd=cost),
        task_id=tid,
        attempt=1,
    )


def mission() -> list[Event]:
    """A mission with a budget of 2.0, as its events would come alone: task a's usage
    passes 80 % of the budget (a warning), task b's the budget (exceeded), and b fails
    (a retry)."""
    return [
        MissionRequested(**meta("req", 0), repository="/r", requirement="do", budget_usd=2.0),
        RepositoryPrepared(
            **meta("prepared", 0),
            repository_path="/r",
            base_branch="main",
            base_sha="base",
            integration_branch=f"aether/{M}",
        ),
        PlanProduced(
            **meta("plan", 0), version=1, tasks=[task("a"), task("b", tier="small"), task("c", "a")]
        ),
        PlanApproved(**meta("approved", 0), version=1),
        started("a", 1),
        used("a", 1, 0.9, 2),
        used("a", 2, 0.8, 3),
        AgentCompleted(
            **meta("completed-a", 4), task_id="a", attempt=1, commit_sha="c", branch="b"
        ),
        BranchMerged(
            **meta("merged-a", 5),
            task_id="a",
            attempt=1,
            merge_sha="sha-a",
            integration_branch=f"aether/{M}",
        ),
        started("b", 6),
        used("b", 1, 0.4, 7),
        AgentFailed(**meta("failed-b", 8), task_id="b", attempt=1, reason="boom"),
    ]


def delivered(events: list[Event], how: str) -> list[Event]:
    """``events`` as the bus would deliver them when the runner sends an attempt's start
    and usage ``how``: alone; carried in the result; the start alone and the usage
    carried; alone, then carried again (a resumed attempt); or carried, then alone again."""
    out: list[Event] = []
    held: list[AgentStarted | UsageRecorded] = []
    for event in events:
        if isinstance(event, AgentStarted | UsageRecorded) and how != "alone":
            if how == "usage carried" and isinstance(event, AgentStarted):
                out.append(event)
                continue
            if how == "alone, then carried":
                out.append(event)
            held.append(event)
        elif isinstance(event, AgentCompleted | AgentFailed) and held:
            out.append(msgspec.structs.replace(event, carried=held))
            if how == "carried, then alone":
                out.extend(held)
            held = []
        else:
            out.append(event)
    return out


class Scheduler:
    """The scheduler's handler over an in-memory stream: each event is stored, then
    delivered with its sequence, and the projection's position follows, as the bound
    moves it to every message handled (so an event is known by its id only until the
    next delivery)."""

    def __init__(self) -> None:
        self.stream = InMemoryPublisher()
        self.sent: list[Event] = []  # every decision published, stored or not
        self.projection: Projection[State] = Projection(State(), evolve)
        self.handlers = Handlers(self.projection, lambda: self, CONFIG, clock=lambda: T0)

    async def publish(self, event: Event) -> PubAck:
        self.sent.append(event)
        return await self.stream.publish(event)

    async def deliver(self, event: Event) -> int:
        self.projection.advance(len(self.stream.stored()))
        sequence = (await self.stream.publish(event)).seq
        await self.handlers.handle(event, Delivery(sequence=sequence, num_delivered=1, pending=0))
        return sequence

    @property
    def mission(self) -> Any:
        return self.projection.state.missions[M]


async def run(how: str) -> Scheduler:
    scheduler = Scheduler()
    for event in delivered(mission(), how):
        await scheduler.deliver(event)
    return scheduler


WAYS = ["carried", "usage carried", "alone, then carried", "carried, then alone"]


@pytest.mark.parametrize("how", WAYS)
async def test_carried_events_give_the_state_and_decisions_they_give_alone(how: str) -> None:
    alone, carried = await run("alone"), await run(how)
    assert carried.projection.state == alone.projection.state
    assert carried.sent == alone.sent
    # What those decisions were: the mission's spend is each usage once.
    assert carried.mission.spent_usd == pytest.approx(0.9 + 0.8 + 0.4)
    assert carried.projection.state.daily_spent == {"2026-01-01": pytest.approx(2.1)}
    assert carried.projection.state.monthly_spent == {"2026-01": pytest.approx(2.1)}
    tasks = carried.mission.tasks
    assert (tasks["a"].status, tasks["b"].status) == ("merged", "retry_wait")
    assert [type(e) for e in carried.sent].count(TaskRetried) == 1


@pytest.mark.parametrize("how", WAYS)
async def test_carried_usage_past_the_budget_is_warned_and_stopped_once_under_the_same_ids(
    how: str,
) -> None:
    alone, carried = await run("alone"), await run(how)
    for cls in (BudgetWarning, BudgetExceeded):
        (theirs,) = [e for e in alone.sent if isinstance(e, cls)]
        (ours,) = [e for e in carried.sent if isinstance(e, cls)]
        assert ours.event_id == theirs.event_id
        # Answered to the usage that crossed the line, as when it came alone.
        assert ours.causation_id == theirs.causation_id
    assert carried.stream.of(BudgetWarning)[0].spent_usd == pytest.approx(1.7)
    assert carried.stream.of(BudgetExceeded)[0].spent_usd == pytest.approx(2.1)


async def test_a_result_delivered_again_folds_and_decides_nothing_more() -> None:
    scheduler = Scheduler()
    for event in delivered(mission(), "carried")[:-1]:
        await scheduler.deliver(event)
    result = delivered(mission(), "carried")[-1]
    assert isinstance(result, AgentFailed) and len(result.carried) == 2
    # The carried usage crosses the budget: the result is answered with the budget
    # stopped and the task retried.
    sequence = await scheduler.deliver(result)
    decided = [type(e) for e in scheduler.sent]
    assert decided.count(BudgetExceeded) == 1 and decided.count(TaskRetried) == 1
    state, sent = scheduler.projection.state, len(scheduler.sent)
    # Again before its message is settled (known by the ids), then after the position
    # passed it (known by its sequence), then the usage alone once more (a resumed
    # attempt's repeat): nothing is folded or published again.
    handle = scheduler.handlers.handle
    await handle(result, Delivery(sequence=sequence, num_delivered=2, pending=0))
    scheduler.projection.advance(sequence)
    await handle(result, Delivery(sequence=sequence, num_delivered=3, pending=0))
    await scheduler.deliver(result.carried[1])
    assert scheduler.projection.state == state
    assert len(scheduler.sent) == sent


@pytest.mark.parametrize("usage_first", [True, False])
def test_usage_counted_for_an_attempt_is_not_counted_again(usage_first: bool) -> None:
    """In ``evolve`` itself: a repeat can come after the projection forgot the first."""
    s = Scenario()
    s.start(task("a"), budget_usd=5.0)
    usage = UsageRecorded(
        **s.meta(),
        service="agent-runner",
        model="m",
        step="agent:a:a1:turn1",
        usage=Usage(input_tokens=1, output_tokens=1, cost_usd=0.5),
        task_id="a",
        attempt=1,
    )
    result = AgentCompleted(
        **s.meta(), task_id="a", attempt=1, commit_sha="c", branch="b", carried=[usage]
    )
    # Alone and inside the result, in either order.
    alone, inside = [usage], carried_by(result)
    state = s.state
    for event in alone + inside if usage_first else inside + alone:
        state = evolve(state, event)
    mission = state.missions["m-test"]
    assert mission.spent_usd == pytest.approx(0.5)
    assert mission.tasks["a"].attempt_spent_usd == pytest.approx(0.5)
    assert sum(state.daily_spent.values()) == pytest.approx(0.5)
    # Another of the attempt's model calls counts.
    other = msgspec.structs.replace(usage, event_id="another")
    assert evolve(state, other).missions["m-test"].spent_usd == pytest.approx(1.0)


def wave(kind: type[WaveCompleted | WaveStarted], number: int, mission_id: str = M) -> Event:
    return kind(**{**meta(f"{tag_of(kind)}-{number}", 1), "mission_id": mission_id}, wave=number)


def ready(task_id: str, mission_id: str = M) -> TaskReady:
    return TaskReady(
        **{**meta(f"ready-{task_id}", 2), "mission_id": mission_id},
        task=task(task_id),
        attempt=1,
        model="m",
    )


def test_the_waves_decided_right_before_a_task_ready_go_inside_it() -> None:
    ended, begun = wave(WaveCompleted, 1), wave(WaveStarted, 2)
    first, second = ready("a"), ready("b")
    done = MissionCompleted(
        **meta("done", 3), final_sha="f", integration_branch="b", tasks_merged=2
    )
    messages = packed([ended, begun, first, second])
    assert [type(m) for m in messages] == [TaskReady, TaskReady]
    assert carried_by(messages[0]) == [ended, begun, messages[0]]
    assert messages[1] == second
    # Nothing after them to carry them: they go alone, in order.
    assert packed([ended, done]) == [ended, done]
    assert packed([begun]) == [begun]
    # Only a TaskReady of their mission carries them.
    other = ready("c", mission_id="m-other")
    assert packed([ended, other]) == [ended, other]
    # Whatever the grouping, the events are those decided, in order.
    for decided in ([ended, begun, first, second], [first, ended, done], [ended, other, begun]):
        assert [alone(e) for m in packed(decided) for e in carried_by(m)] == decided


async def test_a_mission_stores_its_waves_inside_the_task_ready_they_came_with() -> None:
    scheduler = await run("alone")
    stored = scheduler.stream.stored()
    assert not [e for e in stored if isinstance(e, WaveStarted | WaveCompleted)]
    (carrying,) = [e for e in stored if isinstance(e, TaskReady) and e.carried]
    assert [type(e) for e in carried_by(carrying)] == [WaveStarted, TaskReady]
    # Folded as if stored alone: the scheduler knows the wave began.
    assert 0 in scheduler.mission.waves_started
    assert [type(e) for e in scheduler.stream.of(WaveStarted)] == [WaveStarted]
