"""The planner's handlers on real NATS, the model the scripted fake of ``PlanningModel``.

What a model reply becomes (corrections, questions, answers, revisions), redelivery after
a crash, the start-up race and missions planned side by side: none of it is about the
model adapter, whose contract ``test_model_contract.py`` checks on both. What only the
real adapter does (the request's layout, prompt caching, the SDK's retries, an
unreachable endpoint) is in ``test_service.py``.
"""

from __future__ import annotations

import asyncio

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
from aether_llm import Reply, tool_use_block
from aether_planner.testing import Asked, ScriptedPlannerModel

from .conftest import Planner, good_tasks, plan_reply, start_planner_on
from .test_service import of


async def test_an_invalid_plan_gets_one_correction_with_the_exact_errors(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
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
    fake.replies += [plan_reply(cyclic), plan_reply(good_tasks())]
    await fake_planner.request()
    events = await fake_planner.wait_for(PlanProduced)
    assert len(of(events, UsageRecorded)) == 2
    correction = fake.asked[1].correction
    assert correction is not None and fake.asked[0].correction is None
    assert "dependency cycle: a -> b -> a" in correction
    assert "'../b.py' is outside the repository" in correction


async def test_a_plan_invalid_twice_fails_with_a_reason_a_person_can_act_on(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    empty = plan_reply([])
    fake.replies += [empty, empty]
    await fake_planner.request()
    events = await fake_planner.wait_for(PlanFailed)
    assert (
        "rejected twice" in of(events, PlanFailed)[0].reason
        and "no tasks" in of(events, PlanFailed)[0].reason
    )


async def test_a_question_is_answered_directly(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    fake.replies.append(
        Reply(
            [tool_use_block("answer_question", {"answer": "export() lives in src/export.py"})],
            "tool_use",
            500,
            40,
        )
    )
    await fake_planner.request("Where is the export function?")
    events = await fake_planner.wait_for(MissionAnswered)
    assert of(events, MissionAnswered)[0].answer == "export() lives in src/export.py"
    assert of(events, PlanProduced) == []


async def test_clarifying_questions_wait_for_the_answer_then_plan(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    fake.replies.append(
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
    await fake_planner.request()
    await fake_planner.wait_for(PlanClarificationRequested)
    fake.replies.append(plan_reply(good_tasks()))
    await fake_planner.publisher.publish(
        MissionMessagePosted(
            **fake_planner.meta("answer"), text="One array, please.", author="alice"
        )
    )
    events = await fake_planner.wait_for(PlanProduced)
    conversation = fake.asked[1].mission
    assert "You asked:\n- JSON lines or one array?" in conversation
    assert "The user answered:\nOne array, please." in conversation
    assert of(events, PlanProduced)[0].version == 1


async def test_feedback_produces_the_next_version_and_keeps_the_first(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    fake.replies.append(plan_reply(good_tasks()))
    await fake_planner.request()
    await fake_planner.wait_for(PlanProduced)
    fake.replies.append(plan_reply(good_tasks()[:1], rationale="one task is enough"))
    await fake_planner.publisher.publish(
        PlanRevisionRequested(
            **fake_planner.meta("revise"),
            feedback="Merge the CLI into the parser task",
            base_version=1,
        )
    )
    events = await fake_planner.wait_for(PlanProduced, count=2)
    versions = {p.version: p for p in of(events, PlanProduced)}
    assert set(versions) == {1, 2} and len(versions[2].tasks) == 1
    first, revision = fake.asked
    assert revision.plan_only and not first.plan_only
    assert "The user's feedback on it:\nMerge the CLI into the parser task" in revision.mission
    # The repository context is the same text as the first call's (a prefix a cache keeps).
    assert revision.context == first.context


async def test_a_trigger_redelivered_after_a_crash_does_not_call_the_model_again(
    nats_url: str, nc: NatsClient, fake: ScriptedPlannerModel, repo, broker_read: str
) -> None:
    """The planner dies after the model answered and before it published (its publisher
    fails, so the message is handed back): the restarted planner takes the reply from the
    journal."""
    fake.replies.append(plan_reply(good_tasks()))
    crashing = start_planner_on(nats_url, fake, broker_read)

    class Crash(Exception):
        pass

    async def die(*args: object, **kwargs: object) -> None:
        raise Crash

    await crashing.start()
    p = Planner(crashing, nc, "m-crash-fake", repo)
    original = type(crashing.publisher).publish
    type(crashing.publisher).publish = die  # type: ignore[method-assign]
    try:
        await p.request()
        for _ in range(100):
            if fake.asked:
                break
            await asyncio.sleep(0.05)
    finally:
        type(crashing.publisher).publish = original  # type: ignore[method-assign]
        await crashing.stop()
    assert len(fake.asked) == 1
    restarted = start_planner_on(nats_url, fake, broker_read)
    await restarted.start()
    try:
        events = await Planner(restarted, nc, "m-crash-fake", repo).wait_for(PlanProduced)
    finally:
        await restarted.stop()
    assert len(fake.asked) == 1, "the model was asked twice for the same step"
    assert len(of(events, PlanProduced)) == 1 and len(of(events, UsageRecorded)) == 1


async def test_a_message_about_a_plan_is_revised_once_through_its_revision_request(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    """The gateway publishes both the message and a revision request for feedback on a
    plan; only the revision request asks the model."""
    fake.replies.append(plan_reply(good_tasks()))
    await fake_planner.request()
    await fake_planner.wait_for(PlanProduced)
    fake.replies.append(plan_reply(good_tasks()[:1]))
    await fake_planner.publisher.publish_all(
        [
            MissionMessagePosted(
                **fake_planner.meta("note"), text="One task please", author="alice"
            ),
            PlanRevisionRequested(
                **fake_planner.meta("rev"), feedback="One task please", base_version=1
            ),
        ]
    )
    events = await fake_planner.wait_for(PlanProduced, count=2)
    assert len(fake.asked) == 2
    assert fake.asked[1].mission.count("One task please") == 1
    assert sorted(p.version for p in of(events, PlanProduced)) == [1, 2]


async def test_a_repository_prepared_before_the_planner_first_started_is_planned(
    nats_url: str, nc: NatsClient, fake: ScriptedPlannerModel, repo, broker_read: str
) -> None:
    """The start-up race: the mission is requested and its repository prepared while no
    planner has ever run (so no durable consumer exists yet). The planner's replay folds
    the trigger; it must still answer it, once."""
    fake.replies.append(plan_reply(good_tasks()))
    service = start_planner_on(nats_url, fake, broker_read)
    early = Planner(service, nc, "m-before-start-fake", repo)
    await ensure_streams(nc.jetstream())  # as the gateway and the broker would have
    await early.request()
    await service.start()
    try:
        events = await early.wait_for(PlanProduced)
    finally:
        await service.stop()
    assert len(of(events, PlanProduced)) == 1 and len(fake.asked) == 1
    # A second start (the durable exists now) answers nothing again.
    again = start_planner_on(nats_url, fake, broker_read)
    await again.start()
    try:
        fake.replies.append(plan_reply(good_tasks()))
        await early.publisher.publish(
            MissionMessagePosted(**early.meta("after"), text="thanks", author="alice")
        )
        await early.wait_for(MissionMessagePosted)
    finally:
        await again.stop()
    assert len(fake.asked) == 1


async def test_a_slow_model_call_for_one_mission_does_not_hold_up_another(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    """Mission A's model call waits until mission B has its plan: B, requested after A,
    is planned while A's call is still in flight, and A is planned once it returns."""
    a_asked, b_planned = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def answer(asked: Asked) -> Reply:
        slow = "slow mission" in asked.mission
        calls.append("a" if slow else "b")
        if slow:
            a_asked.set()
            await b_planned.wait()
        return plan_reply(good_tasks())

    fake.replies.extend([answer, answer])
    a = Planner(
        fake_planner.service, fake_planner.nc, fake_planner.mission_id + "a", fake_planner.repo
    )
    b = Planner(
        fake_planner.service, fake_planner.nc, fake_planner.mission_id + "b", fake_planner.repo
    )
    await a.request("the slow mission")
    await asyncio.wait_for(a_asked.wait(), 20)  # A's call has started before B is requested
    assert calls == ["a"]
    await b.request("the quick mission")
    b_events = await b.wait_for(PlanProduced)
    assert not of(await a.events(), PlanProduced), "A was planned before its call returned"
    b_planned.set()
    a_events = await a.wait_for(PlanProduced)
    assert len(of(a_events, PlanProduced)) == 1 and len(of(b_events, PlanProduced)) == 1
