"""The planner against a scripted Messages API server over HTTP, on real NATS."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    MissionAnswered,
    MissionMessagePosted,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    UsageRecorded,
    ensure_streams,
)
from aether_llm import DEFAULT_TIERS, ApiError, PromptCache, Reply, tool_use_block

from .conftest import Planner, good_tasks, plan_reply, start_planner


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


async def test_a_good_plan_is_produced_with_exact_usage_and_no_cache_write(
    planner: Planner, script
) -> None:
    s, _ = script
    s.replies.append(
        plan_reply(
            good_tasks(),
            input_tokens=1000,
            output_tokens=200,
            cache_creation_input_tokens=300,
            cache_read_input_tokens=400,
        )
    )
    await planner.request(model_overrides={"complex": "claude-opus-5-5"})
    events = await planner.wait_for(PlanProduced)
    plan = of(events, PlanProduced)[0]
    assert plan.version == 1 and [t.id for t in plan.tasks] == ["t1", "t2"]
    assert (
        plan.tasks[1].depends_on == ["t1"] and plan.model == "claude-opus-5-5" and not plan.offline
    )
    usage = of(events, UsageRecorded)[0]
    assert usage.usage.input_tokens == 1000 and usage.usage.cache_read_input_tokens == 400
    # 1000×$4 + 200×$20 + 300×$5 + 400×$0.20 per million tokens
    assert usage.usage.cost_usd == pytest.approx(0.00958)
    request = s.requests[0]
    # No breakpoint anywhere: nothing is written to a cache no later call is known to read.
    assert "cache_control" not in json.dumps(request)
    context = request["messages"][0]["content"][0]
    assert "Converts CSV to JSON." in context["text"]  # the README was read
    assert "src/export.py" in context["text"] and "Python" in context["text"]
    assert request["tool_choice"] == {"type": "any"}
    assert "Add a --json flag" in request["messages"][0]["content"][1]["text"]


async def test_an_invalid_plan_gets_one_correction_with_the_exact_errors(
    planner: Planner, script
) -> None:
    s, _ = script
    cyclic = [
        {
            "id": "a",
            "title": "A",
            "description": "a",
            "files": ["a.py"],
            "depends_on": ["b"],
            "tier": "small",
        },
        {
            "id": "b",
            "title": "B",
            "description": "b",
            "files": ["../b.py"],
            "depends_on": ["a"],
            "tier": "small",
        },
    ]
    s.replies += [plan_reply(cyclic), plan_reply(good_tasks())]
    await planner.request()
    events = await planner.wait_for(PlanProduced)
    assert len(of(events, UsageRecorded)) == 2
    correction = s.requests[1]["messages"][-1]["content"][0]
    assert correction["type"] == "tool_result" and correction["is_error"]
    assert "dependency cycle: a -> b -> a" in correction["content"]
    assert "'../b.py' is outside the repository" in correction["content"]


async def test_a_plan_invalid_twice_fails_with_a_reason_a_person_can_act_on(
    planner: Planner, script
) -> None:
    s, _ = script
    empty = plan_reply([])
    s.replies += [empty, empty]
    await planner.request()
    events = await planner.wait_for(PlanFailed)
    assert (
        "rejected twice" in of(events, PlanFailed)[0].reason
        and "no tasks" in of(events, PlanFailed)[0].reason
    )


async def test_a_question_is_answered_directly(planner: Planner, script) -> None:
    s, _ = script
    s.replies.append(
        Reply(
            [tool_use_block("answer_question", {"answer": "export() lives in src/export.py"})],
            "tool_use",
            500,
            40,
        )
    )
    await planner.request("Where is the export function?")
    events = await planner.wait_for(MissionAnswered)
    assert of(events, MissionAnswered)[0].answer == "export() lives in src/export.py"
    assert of(events, PlanProduced) == []


async def test_clarifying_questions_wait_for_the_answer_then_plan(planner: Planner, script) -> None:
    s, _ = script
    s.replies.append(
        Reply(
            [
                tool_use_block(
                    "ask_clarifying_questions", {"questions": ["JSON lines or one array?"]}
                )
            ],
            "tool_use",
            500,
            40,
        )
    )
    await planner.request()
    await planner.wait_for(PlanClarificationRequested)
    s.replies.append(plan_reply(good_tasks()))
    await planner.publisher.publish(
        MissionMessagePosted(**planner.meta("answer"), text="One array, please.", author="alice")
    )
    events = await planner.wait_for(PlanProduced)
    conversation = s.requests[1]["messages"][0]["content"][1]["text"]
    assert "You asked:\n- JSON lines or one array?" in conversation
    assert "The user answered:\nOne array, please." in conversation
    assert of(events, PlanProduced)[0].version == 1


async def test_feedback_produces_the_next_version_and_keeps_the_first(
    planner: Planner, script
) -> None:
    s, _ = script
    s.replies.append(plan_reply(good_tasks()))
    await planner.request()
    await planner.wait_for(PlanProduced)
    s.replies.append(plan_reply(good_tasks()[:1], rationale="one task is enough"))
    await planner.publisher.publish(
        PlanRevisionRequested(
            **planner.meta("revise"), feedback="Merge the CLI into the parser task", base_version=1
        )
    )
    events = await planner.wait_for(PlanProduced, count=2)
    versions = {p.version: p for p in of(events, PlanProduced)}
    assert set(versions) == {1, 2} and len(versions[2].tasks) == 1
    revision = s.requests[1]
    assert revision["tool_choice"] == {"type": "tool", "name": "submit_plan"}
    assert (
        "The user's feedback on it:\nMerge the CLI into the parser task"
        in revision["messages"][0]["content"][1]["text"]
    )
    # The prefix is byte-for-byte the same as the first call's.
    assert revision["messages"][0]["content"][0] == s.requests[0]["messages"][0]["content"][0]
    assert (
        revision["system"] == s.requests[0]["system"]
        and revision["tools"] == s.requests[0]["tools"]
    )


async def test_a_plan_and_its_revision_write_nothing_to_the_prompt_cache(
    planner: Planner, script
) -> None:
    """Against a server that accounts prompt caching as the API does, neither the first
    plan nor its revision pays for a cache write: no later call would read it (the
    revision forces submit_plan, which a first call's message entry would not match)."""
    s, server = script
    # The test repository is small: let any prefix be cacheable, so a marker would show.
    server.cache = PromptCache(minimum_tokens={DEFAULT_TIERS["complex"]: 1})
    s.replies += [plan_reply(good_tasks()), plan_reply(good_tasks()[:1])]
    await planner.request()
    await planner.wait_for(PlanProduced)
    await planner.publisher.publish(
        PlanRevisionRequested(**planner.meta("revise"), feedback="One task", base_version=1)
    )
    events = await planner.wait_for(PlanProduced, count=2)
    usages = [u.usage for u in of(events, UsageRecorded)]
    assert len(usages) == 2
    assert all(u.cache_creation_input_tokens == 0 for u in usages)
    assert all(u.cache_read_input_tokens == 0 and u.input_tokens > 0 for u in usages)
    assert server.cache.writes() == (0, 0)


@pytest.mark.parametrize("planner", [2], indirect=True)
async def test_rate_limited_then_succeeds(planner: Planner, script) -> None:
    s, _ = script
    s.replies += [
        ApiError(429, "rate_limit_error", "slow down", retry_after=0.1),
        ApiError(529, "overloaded_error", "busy", retry_after=0.1),
        plan_reply(good_tasks()),
    ]
    await planner.request()
    events = await planner.wait_for(PlanProduced)
    assert len(s.requests) == 3 and len(of(events, UsageRecorded)) == 1


async def test_an_unreachable_model_fails_the_plan_clearly(
    nats_url: str, nc: NatsClient, repo
) -> None:
    from aether.infra import free_port

    from .conftest import Planner

    service = start_planner(nats_url, f"http://127.0.0.1:{free_port()}", max_retries=0)
    await service.start()
    try:
        p = Planner(service, nc, "m-unreachable", repo)
        await p.request()
        events = await p.wait_for(PlanFailed)
    finally:
        await service.stop()
    assert "could not be reached" in of(events, PlanFailed)[0].reason


async def test_a_trigger_redelivered_after_a_crash_does_not_call_the_model_again(
    nats_url: str, nc: NatsClient, script, repo
) -> None:
    """The planner dies after the model answered and before it published (its publisher
    fails, so the message is handed back): the restarted planner takes the reply from the
    journal."""
    from .conftest import Planner

    s, server = script
    s.replies.append(plan_reply(good_tasks()))
    crashing = start_planner(nats_url, server.url)

    class Crash(Exception):
        pass

    async def die(*args: object, **kwargs: object) -> None:
        raise Crash

    await crashing.start()
    p = Planner(crashing, nc, "m-crash", repo)
    original = type(crashing.publisher).publish
    type(crashing.publisher).publish = die  # type: ignore[method-assign]
    try:
        await p.request()
        for _ in range(100):
            if s.requests:
                break
            await asyncio.sleep(0.05)
    finally:
        type(crashing.publisher).publish = original  # type: ignore[method-assign]
        await crashing.stop()
    assert len(s.requests) == 1
    restarted = start_planner(nats_url, server.url)
    await restarted.start()
    try:
        events = await Planner(restarted, nc, "m-crash", repo).wait_for(PlanProduced)
    finally:
        await restarted.stop()
    assert len(s.requests) == 1, "the model was asked twice for the same step"
    assert len(of(events, PlanProduced)) == 1 and len(of(events, UsageRecorded)) == 1


async def test_a_message_about_a_plan_is_revised_once_through_its_revision_request(
    planner: Planner, script
) -> None:
    """The gateway publishes both the message and a revision request for feedback on a
    plan; only the revision request asks the model."""
    s, _ = script
    s.replies.append(plan_reply(good_tasks()))
    await planner.request()
    await planner.wait_for(PlanProduced)
    s.replies.append(plan_reply(good_tasks()[:1]))
    await planner.publisher.publish_all(
        [
            MissionMessagePosted(**planner.meta("note"), text="One task please", author="alice"),
            PlanRevisionRequested(
                **planner.meta("rev"), feedback="One task please", base_version=1
            ),
        ]
    )
    events = await planner.wait_for(PlanProduced, count=2)
    assert len(s.requests) == 2
    text = s.requests[1]["messages"][0]["content"][1]["text"]
    assert text.count("One task please") == 1
    assert sorted(p.version for p in of(events, PlanProduced)) == [1, 2]


async def test_a_repository_prepared_before_the_planner_first_started_is_planned(
    nats_url: str, nc: NatsClient, script, repo
) -> None:
    """The start-up race: the mission is requested and its repository prepared while no
    planner has ever run (so no durable consumer exists yet). The planner's replay folds
    the trigger; it must still answer it, once."""
    s, server = script
    s.replies.append(plan_reply(good_tasks()))
    service = start_planner(nats_url, server.url)
    early = Planner(service, nc, "m-before-start", repo)
    await ensure_streams(nc.jetstream())  # as the gateway and the broker would have
    await early.request()
    await service.start()
    try:
        events = await early.wait_for(PlanProduced)
    finally:
        await service.stop()
    assert len(of(events, PlanProduced)) == 1 and len(s.requests) == 1
    # A second start (the durable exists now) answers nothing again.
    again = start_planner(nats_url, server.url)
    await again.start()
    try:
        s.replies.append(plan_reply(good_tasks()))
        await early.publisher.publish(
            MissionMessagePosted(**early.meta("after"), text="thanks", author="alice")
        )
        await early.wait_for(MissionMessagePosted)
    finally:
        await again.stop()
    assert len(s.requests) == 1


async def test_a_slow_model_call_for_one_mission_does_not_hold_up_another(
    planner: Planner, script
) -> None:
    """Mission A's model call waits until mission B has its plan: B, requested after A,
    is planned while A's call is still in flight, and A is planned once it returns."""
    from .conftest import Planner

    s, _ = script
    b_planned = threading.Event()
    calls_in_flight: list[str] = []

    def answer(request: dict[str, Any]) -> Reply:
        slow = "slow mission" in json.dumps(request)
        calls_in_flight.append("a" if slow else "b")
        if slow:
            b_planned.wait(timeout=30)
        return plan_reply(good_tasks())

    s.replies.extend([answer, answer])
    a = Planner(planner.service, planner.nc, planner.mission_id + "a", planner.repo)
    b = Planner(planner.service, planner.nc, planner.mission_id + "b", planner.repo)
    await a.request("the slow mission")
    for _ in range(200):  # A's call has started before B is requested
        if calls_in_flight:
            break
        await asyncio.sleep(0.05)
    assert calls_in_flight == ["a"]
    await b.request("the quick mission")
    b_events = await b.wait_for(PlanProduced)
    assert not of(await a.events(), PlanProduced), "A was planned before its call returned"
    b_planned.set()
    a_events = await a.wait_for(PlanProduced)
    assert len(of(a_events, PlanProduced)) == 1 and len(of(b_events, PlanProduced)) == 1
