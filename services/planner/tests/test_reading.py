"""The planner reads the files it plans from through the git broker's read API (the
broker's own, served for the session), never from a repository it opens: what the model
is given is the base commit's text; a broker that refuses, or does not answer for the
configured wait, leaves a plan made from the file list that says why; one that comes
back within the wait is read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NatsClient

from aether.infra import free_port
from aether_events import PlanProduced
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.testing import read_api_served
from aether_planner.testing import ScriptedPlannerModel
from aether_runtime import Service

from .conftest import BROKER_TOKEN, Planner, good_tasks, plan_reply, start_planner_on
from .test_service import of

README = "Converts CSV to JSON."


async def planned(service: Service, nc: NatsClient, repo: Path, mission_id: str) -> PlanProduced:
    """The plan ``service`` (started here, stopped after) makes for a new mission."""
    await service.start()
    try:
        planner = Planner(service, nc, mission_id, repo)
        await planner.request()
        return of(await planner.wait_for(PlanProduced), PlanProduced)[0]
    finally:
        await service.stop()


async def test_the_model_is_given_the_base_commits_text_read_through_the_broker(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    # An edit nobody committed is not what the mission starts from.
    (fake_planner.repo / "README.md").write_text("# Tool\n\nUNCOMMITTED EDIT\n")
    fake.replies.append(plan_reply(good_tasks()))
    await fake_planner.request("Add a --json flag to src/export.py")
    plan = of(await fake_planner.wait_for(PlanProduced), PlanProduced)[0]
    context = fake.asked[0].context
    assert README in context and "UNCOMMITTED EDIT" not in context
    assert "def export():\n    return 1" in context
    assert plan.repairs == []


async def test_a_broker_that_refuses_the_token_leaves_a_plan_that_says_so(
    nats_url: str, nc: NatsClient, fake: ScriptedPlannerModel, repo: Path, broker_read: str
) -> None:
    fake.replies.append(plan_reply(good_tasks()))
    service = start_planner_on(nats_url, fake, broker_read, broker_token="not-the-" + BROKER_TOKEN)
    plan = await planned(service, nc, repo, "m-read-refused")
    assert README not in fake.asked[0].context
    assert "README.md" in fake.asked[0].context  # the file list is still there
    assert plan.repairs == [
        "the repository's files could not be read (the git broker refused the read token "
        "(AETHER_PLANNER_BROKER_TOKEN)); planned from the file list alone"
    ]


async def test_a_broker_down_for_the_whole_wait_leaves_a_plan_that_says_so(
    nats_url: str, nc: NatsClient, fake: ScriptedPlannerModel, repo: Path
) -> None:
    fake.replies.append(plan_reply(good_tasks()))
    nowhere = f"http://127.0.0.1:{free_port()}"
    service = start_planner_on(nats_url, fake, nowhere, broker_wait_seconds=0.5)
    plan = await planned(service, nc, repo, "m-read-unreachable")
    assert README not in fake.asked[0].context
    (repair,) = plan.repairs
    assert "the git broker cannot be reached" in repair and "from the file list" in repair


async def test_a_broker_back_within_the_wait_is_read(
    nats_url: str, nc: NatsClient, fake: ScriptedPlannerModel, repo: Path, tmp_path: Path
) -> None:
    fake.replies.append(plan_reply(good_tasks()))
    port = free_port()
    service = start_planner_on(nats_url, fake, f"http://127.0.0.1:{port}")
    await service.start()
    try:
        planner = Planner(service, nc, "m-read-restarting", repo)
        await planner.request()
        # The broker is down for a while (restarting), then serves again.
        await asyncio.sleep(0.7)
        assert not fake.asked, "the planner did not wait for the broker"
        with read_api_served(BROKER_TOKEN, Remotes(str(tmp_path / "clones")), port):
            plan = of(await planner.wait_for(PlanProduced), PlanProduced)[0]
    finally:
        await service.stop()
    assert README in fake.asked[0].context
    assert plan.repairs == []


async def test_without_a_read_api_configured_the_planner_says_so_at_start_and_on_each_plan(
    nats_url: str, nc: NatsClient, fake: ScriptedPlannerModel, repo: Path, caplog
) -> None:
    fake.replies.append(plan_reply(good_tasks()))
    with caplog.at_level("WARNING", logger="aether.planner"):
        service = start_planner_on(nats_url, fake, "")
    assert "AETHER_PLANNER_BROKER_URL is not set" in caplog.text
    plan = await planned(service, nc, repo, "m-read-unconfigured")
    assert README not in fake.asked[0].context
    assert plan.repairs == [
        "the repository's files could not be read (the git broker's read API is not"
        " configured (AETHER_PLANNER_BROKER_URL)); planned from the file list alone"
    ]
