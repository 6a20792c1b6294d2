"""The start-up replay that reads finished missions in brief gives the state a full
replay gives: live missions exactly, finished ones with how they ended and what they
spent (on a real JetStream)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentStarted,
    Event,
    EventPublisher,
    MissionCancelled,
    Usage,
    UsageRecorded,
    carried_by,
    encode,
    ensure_streams,
    subject_for,
)
from aether_runtime import Projection
from aether_runtime.attempt_auth import AttemptKey
from aether_scheduler import history
from aether_scheduler.app import attempt_stopping
from aether_scheduler.domain import State, evolve
from aether_scheduler.history import replay_history

from .scenario import T0, Scenario, task


def missions() -> list[Scenario]:
    done = Scenario("m-done", _ids=itertools.count(1000))
    done.start(task("a"), task("b", "a"), budget_usd=10.0)
    done.finish("a")
    done.used("b", 0.5)
    done.finish("b")
    done.used(None, 0.25)  # spending reported after the end still counts

    live = Scenario("m-live", _ids=itertools.count(2000))
    live.start(task("a"), task("b"), task("c", "a", "b"), max_concurrency=2)
    live.started("a")
    live.used("a", 0.3)
    live.finish("a")
    live.started("b")

    cancelled = Scenario("m-cancelled", _ids=itertools.count(3000))
    cancelled.start(task("a"))
    cancelled.used("a", 0.1)
    cancelled.when(MissionCancelled(**cancelled.meta(), reason="no"))
    return [done, live, cancelled]


async def publish_interleaved(nc: NatsClient, scenarios: list[Scenario]) -> None:
    await publish_logs(nc, [s.log for s in scenarios])


async def publish_logs(nc: NatsClient, logs: list[list[Event]]) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    for events in itertools.zip_longest(*logs):
        for event in events:
            if event is not None:
                await publisher.publish(event)


def carried(log: list[Event], repeated: bool = False) -> list[Event]:
    """``log`` as runners that send each attempt's start and usage inside its result
    would store it (``carried_by``); ``repeated``: each sent alone before as well (a
    resumed attempt's repeats)."""
    ended = {(e.task_id, e.attempt) for e in log if isinstance(e, AgentCompleted | AgentFailed)}
    held: dict[tuple[str | None, int | None], list[AgentStarted | UsageRecorded]] = {}
    out: list[Event] = []
    for event in log:
        if isinstance(event, AgentStarted | UsageRecorded):
            attempt = (event.task_id, event.attempt)
            if attempt in ended:
                held.setdefault(attempt, []).append(event)
                if not repeated:
                    continue
        elif isinstance(event, AgentCompleted | AgentFailed):
            inside = held.pop((event.task_id, event.attempt), [])
            event = msgspec.structs.replace(event, carried=inside)
        out.append(event)
    return out


async def both(nc: NatsClient) -> tuple[Projection[State], Projection[State]]:
    js = nc.jetstream()
    full: Projection[State] = Projection(State(), evolve)
    await full.rebuild(js, "scheduler", unfold=carried_by)
    brief: Projection[State] = Projection(State(), evolve)
    await replay_history(brief, js, "scheduler")
    return full, brief


async def test_finished_missions_are_read_in_brief_and_live_ones_in_full(
    nc: NatsClient,
) -> None:
    scenarios = missions()
    await publish_interleaved(nc, scenarios)
    full, brief = await both(nc)

    assert brief.state.missions["m-live"] == full.state.missions["m-live"]
    assert brief.state.missions["m-live"] == scenarios[1].state.missions["m-live"]
    assert list(brief.state.live) == list(full.state.live) == ["m-live"]
    assert brief.state.daily_spent == full.state.daily_spent
    assert brief.state.monthly_spent == full.state.monthly_spent
    assert sum(brief.state.daily_spent.values()) == pytest.approx(0.5 + 0.25 + 0.3 + 0.1)
    for mission_id in ("m-done", "m-cancelled"):
        ended, whole = brief.state.missions[mission_id], full.state.missions[mission_id]
        assert ended.progress.status == whole.progress.status
        assert ended.terminal and ended.usage == whole.usage
        assert ended.request == whole.request
        assert not ended.tasks and whole.tasks  # the point: their tasks were not read
    assert brief.position == full.position == brief.last_sequence == full.last_sequence


async def test_with_many_live_missions_the_whole_stream_is_read(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "PER_MISSION_READS", 0)
    await publish_interleaved(nc, missions())
    full, brief = await both(nc)
    assert brief.state == full.state
    assert brief.position == full.position


async def test_usage_stored_before_attempt_subjects_counts_and_forged_usage_does_not(
    nc: NatsClient,
) -> None:
    """A task's usage on the four-token subject (stored before subjects named the
    attempt) is read by both replays; usage published with one attempt's credential
    about another task (its own subject, the other's payload) by neither."""
    scenarios = missions()
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    forged_from = ""
    for events in itertools.zip_longest(*(s.log for s in scenarios)):
        for event in events:
            if isinstance(event, UsageRecorded) and event.task_id == "b":
                # m-done's task b: stored as an older build did.
                await js.publish(f"aether.mission.{event.mission_id}.usage_recorded", encode(event))
                forged_from = subject_for(event)
            elif event is not None:
                await publisher.publish(event)
    live_a = next(e for e in scenarios[1].log if isinstance(e, UsageRecorded) and e.task_id == "a")
    forged = msgspec.structs.replace(
        live_a, event_id="forged", usage=Usage(input_tokens=1, output_tokens=1, cost_usd=100.0)
    )
    # On the subject of another attempt (m-done's task b): the server would allow it
    # to that attempt's credential, the payload names m-live's task a.
    await js.publish(forged_from, encode(forged))
    full, brief = await both(nc)
    for state in (full.state, brief.state):
        assert sum(state.daily_spent.values()) == pytest.approx(0.5 + 0.25 + 0.3 + 0.1)
    assert brief.state.missions["m-live"] == full.state.missions["m-live"]


@pytest.mark.parametrize("repeated", [False, True])
@pytest.mark.parametrize("per_mission_reads", [history.PER_MISSION_READS, 0])
async def test_spending_carried_in_results_counts_once_after_a_restart(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch, per_mission_reads: int, repeated: bool
) -> None:
    """Usage stored inside the results of a finished mission (and alone as well, when
    ``repeated``) counts in today's and this month's spend, once, whether the replay
    reads it in brief or the whole stream; a live mission's carried events rebuild it
    as when sent alone."""
    monkeypatch.setattr(history, "PER_MISSION_READS", per_mission_reads)
    done, live, cancelled = missions()
    logs = [carried(done.log, repeated), carried(live.log, repeated), cancelled.log]
    inside = [e for log in logs for e in log if isinstance(e, AgentCompleted) and e.carried]
    assert {e.mission_id for e in inside} == {"m-done", "m-live"}
    await publish_logs(nc, logs)
    full, brief = await both(nc)

    for state in (full.state, brief.state):
        assert state.daily_spent == {"2026-01-01": pytest.approx(0.5 + 0.25 + 0.3 + 0.1)}
        assert state.monthly_spent == {"2026-01": pytest.approx(0.5 + 0.25 + 0.3 + 0.1)}
        assert state.missions["m-done"].usage == done.state.missions["m-done"].usage
    assert brief.state.missions["m-live"] == full.state.missions["m-live"]
    assert brief.state.missions["m-live"] == live.state.missions["m-live"]
    assert list(brief.state.live) == ["m-live"]


async def test_a_mission_that_ended_within_the_grace_is_read_in_full(nc: NatsClient) -> None:
    """A mission cancelled a moment before the scheduler's start: its attempt that was
    running may still report its stop (the grace after the cancel), so the replay keeps
    its tasks, as a full replay has them; those that ended before are read in brief."""
    scenarios = missions()
    recent = Scenario("m-just-cancelled", now=T0 + timedelta(days=1), _ids=itertools.count(4000))
    recent.start(task("a"))
    recent.started("a")
    recent.when(MissionCancelled(**recent.meta(), reason="no"))
    await publish_interleaved(nc, [*scenarios, recent])
    full, _ = await both(nc)
    brief: Projection[State] = Projection(State(), evolve)
    grace = timedelta(seconds=15)
    await replay_history(brief, nc.jetstream(), "scheduler", full_since=recent.now - grace)

    kept = brief.state.missions["m-just-cancelled"]
    assert kept == full.state.missions["m-just-cancelled"]
    assert kept.terminal and kept.ended_at == recent.now and kept.tasks["a"].status == "running"
    running = AttemptKey("m-just-cancelled", "a", recent.attempt("a"))
    assert attempt_stopping(brief.state, running, recent.now + grace / 2, grace.total_seconds())
    assert not attempt_stopping(brief.state, running, recent.now + grace, grace.total_seconds())
    assert not brief.state.missions["m-cancelled"].tasks
    assert list(brief.state.live) == ["m-live"]
