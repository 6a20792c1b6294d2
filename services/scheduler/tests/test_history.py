"""The start-up replay that reads finished missions in brief gives the state a full
replay gives: live missions exactly, finished ones with how they ended and what they
spent (on a real JetStream)."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    EventPublisher,
    MissionCancelled,
    Usage,
    UsageRecorded,
    encode,
    ensure_streams,
    subject_for,
)
from aether_runtime import Projection
from aether_scheduler import history
from aether_scheduler.domain import State, evolve
from aether_scheduler.history import replay_history

from .scenario import Scenario, task


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
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    for events in itertools.zip_longest(*(s.log for s in scenarios)):
        for event in events:
            if event is not None:
                await publisher.publish(event)


async def both(nc: NatsClient) -> tuple[Projection[State], Projection[State]]:
    js = nc.jetstream()
    full: Projection[State] = Projection(State(), evolve)
    await full.rebuild(js, "scheduler")
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
