"""The planner against a scripted Messages API server over HTTP, on real NATS: what only
the real model adapter does (the request's layout, no cache writes, the SDK's retries, an
unreachable endpoint). Handler behaviour on the model fake is in ``test_handlers.py``."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    UsageRecorded,
)
from aether_llm import DEFAULT_TIERS, ApiError, PromptCache

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
    nats_url: str, nc: NatsClient, repo, broker_read: str
) -> None:
    from aether.infra import free_port

    from .conftest import Planner

    service = start_planner(nats_url, f"http://127.0.0.1:{free_port()}", broker_read, max_retries=0)
    await service.start()
    try:
        p = Planner(service, nc, "m-unreachable", repo)
        await p.request()
        events = await p.wait_for(PlanFailed)
    finally:
        await service.stop()
    assert "could not be reached" in of(events, PlanFailed)[0].reason
