"""The web board over the whole system: five services, each its own process, on real
NATS and PostgreSQL and the offline model, driven from a real browser only.

Sign in, submit a mission with the form, see the plan graph, approve it, pause and
resume, watch the tasks move across the board to merged, open a task's transcript and
diff, and see the mission complete with its branch. Screenshots of each page are
written to ``$AETHER_TEST_ARTEFACTS`` (default: the test's temporary directory).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dulwich.repo import Repo

from aether import prestart
from aether.gitview import create_sample_repository
from aether.stack import Stack
from tests.e2e.test_mission_flow import fresh_database
from tests.web.browser import artefacts, browser, chromium, expect

__all__ = ["artefacts", "browser", "chromium", "fresh_database"]

pytestmark = pytest.mark.e2e

REQUIREMENT = """\
- Add src/greeting.py with a greet(name) function that returns a friendly greeting
- Add src/farewell.py with a farewell(name) function that says goodbye
- Write docs/usage.md explaining how to use greet and farewell together (after 1, 2)
"""


@pytest.fixture
async def offline_stack(tmp_path: Path, fresh_database: str) -> AsyncIterator[Stack]:
    stack = Stack(
        home=tmp_path / "stack",
        random_ports=True,
        prestart=prestart.shared(),
        # No key: the planner and the agents use the offline model.
        env={"ANTHROPIC_API_KEY": "", "DATABASE_URL": fresh_database},
    )
    try:
        await asyncio.to_thread(stack.start)
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def test_a_mission_from_the_form_to_its_merged_branch_in_the_browser(
    offline_stack: Stack, browser: Any, artefacts: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(offline_stack.gateway_url + "/board/")
    await page.fill("#token", offline_stack.admin_token)
    await page.click("#signin button[type=submit]")

    await page.fill("#nm-repository", str(repo))
    await page.fill("#nm-requirement", REQUIREMENT)
    await page.fill("#nm-budget_usd", "5")
    await page.click("#new-mission button[type=submit]")
    await expect(page.locator("#mission-head")).to_be_visible()
    mission_id = page.url.rstrip("/").rsplit("/", 1)[1]

    # The plan arrives live, drawn as a graph whose last task waits for the other two.
    approve = page.locator("#approve")
    await expect(approve).to_be_visible(timeout=90_000)
    nodes = page.locator("#plan-graph .node")
    await expect(nodes).to_have_count(3)
    await expect(page.locator("#plan-graph [data-edge]")).to_have_count(2)
    await page.screenshot(path=str(artefacts / "e2e-1-plan.png"), full_page=True)

    # Paused and resumed before the approval: on the offline model the three tasks can
    # all merge before a pause clicked after it lands, and the test must not race them.
    await page.click("#pause")
    await expect(page.locator("#mission-status .pill")).to_have_text("paused")
    await page.click("#resume")
    await expect(page.locator("#mission-status .pill")).to_have_text("awaiting approval")
    await approve.click()
    await expect(page.locator("#mission-status .pill")).not_to_have_text("awaiting approval")

    merged = page.locator('[data-column="merged"] article')
    await expect(merged).to_have_count(3, timeout=180_000)
    await expect(page.locator("#mission-status .pill")).to_have_text("completed", timeout=60_000)
    await expect(page.locator("#plan-graph .node[data-status=merged]")).to_have_count(3)
    final = await page.locator("#final-sha").inner_text()
    branch = await page.locator("#integration-branch").inner_text()
    with Repo(str(repo)) as r:
        assert r.refs[f"refs/heads/{branch}".encode()].decode().startswith(final)
    await page.screenshot(path=str(artefacts / "e2e-2-mission.png"), full_page=True)

    first = merged.first
    task_id = await first.get_attribute("data-task")
    await first.locator("a.task-title").click()
    await expect(page.locator("#transcript")).to_contain_text("agent started")
    await expect(page.locator("#transcript")).to_contain_text("merged as")
    # The agent's own transcript: its model turns and the tool calls it made.
    await expect(page.locator('#agent-transcript li[data-kind="turn"]')).not_to_have_count(0)
    await expect(page.locator('#agent-transcript li[data-kind="tool_call"]')).not_to_have_count(0)
    await expect(page.locator("#attempts tbody tr")).to_have_count(1)
    await expect(page.locator(".diff-file")).not_to_have_count(0)
    await expect(page.locator("table.diff tr.add").first).to_be_visible()
    await page.screenshot(path=str(artefacts / "e2e-3-task.png"), full_page=True)
    assert page.url.endswith(f"/board/missions/{mission_id}/tasks/{task_id}")
