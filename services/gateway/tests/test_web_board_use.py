"""The web board as a person uses it, in a real browser against a real gateway: on a
phone's screen, with the keyboard and a screen reader's names, through a plan whose task
titles are long, a filter that finds nothing, a link to a mission that does not exist,
and a cancel clicked by mistake.
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from aether_events import EventPublisher, MissionCancelled, TaskEscalated
from tests.eventlog import EventLog
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import ADMIN_TOKEN, GatewayServer, Script
from .test_web import signed_in

LONG = "Write the migration that moves every customer's invoices to the new ledger schema"


def long_titled_plan(script: Script) -> Any:
    plan = script.plan(task_ids=("t1", "t2", "t3"))
    titles = {"t1": LONG, "t2": "Ajouter café.py « bonjour » — 日本語のテキスト", "t3": "Docs"}
    return msgspec.structs.replace(
        plan,
        tasks=[msgspec.structs.replace(t, title=titles[t.id]) for t in plan.tasks],
    )


async def running_mission(nc: Any, script: Script) -> None:
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(requirement=f"- {LONG}\n- and its documentation"),
            script.prepared(),
            long_titled_plan(script),
            script.approved(),
            script.task_ready("t1"),
            TaskEscalated(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                reason="verification failed: `pytest -q` exited with 1 after 4 attempts",
            ),
        ]
    )


async def test_signed_out_the_top_bar_shows_no_live_indicator(
    gateway_server: GatewayServer, browser: Any
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(gateway_server.base_url + "/board/")
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#live")).to_be_hidden()
    page = await signed_in(browser, gateway_server)
    await expect(page.locator("#live")).to_be_visible()
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#live")).to_be_hidden()


async def test_on_a_phone_no_page_is_wider_than_the_screen(
    gateway_server: GatewayServer, nc: Any, script: Script, chromium: Any, artefacts: Path
) -> None:
    await running_mission(nc, script)
    context = await chromium.new_context(viewport={"width": 390, "height": 844})
    try:
        page = await signed_in(context, gateway_server)
        await expect(page.locator(f'tr[data-mission="{script.mission_id}"]')).to_have_count(1)
        pages = {
            "list": "/board/",
            "mission": f"/board/missions/{script.mission_id}",
            "task": f"/board/missions/{script.mission_id}/tasks/t1",
        }
        ready = {"list": "#missions", "mission": "#plan-graph", "task": "#attempts"}
        for name, path in pages.items():
            await page.goto(gateway_server.base_url + path)
            await expect(page.locator(ready[name])).to_be_visible()
            await page.screenshot(path=str(artefacts / f"phone-{name}.png"), full_page=True)
            wide = await page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 390, f"the {name} page is {wide}px wide on a 390px screen"
    finally:
        await context.close()


async def test_plan_nodes_keep_long_titles_and_costs_inside_their_boxes(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, artefacts: Path
) -> None:
    await running_mission(nc, script)
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.locator("#plan-graph .node")).to_have_count(3)
    await page.locator("#plan-graph").screenshot(path=str(artefacts / "plan-long-titles.png"))
    boxes = await page.evaluate(
        """() => [...document.querySelectorAll('#plan-graph .node')].map((node) => {
          const box = node.querySelector('rect').getBBox();
          const at = (cls) => {
            const b = node.querySelector(cls).getBBox();
            return { x: b.x, width: b.width };
          };
          return { id: node.dataset.task, width: box.width, title: at('.node-title'),
                   meta: at('.node-meta'), cost: at('.node-cost'),
                   text: node.querySelector('.node-title').textContent,
                   name: node.getAttribute('aria-label') };
        })"""
    )
    for node in boxes:
        assert node["title"]["x"] + node["title"]["width"] <= node["width"], node
        cost = node["cost"]
        if cost["width"]:
            assert node["meta"]["x"] + node["meta"]["width"] < cost["x"], node
        else:
            assert node["meta"]["x"] + node["meta"]["width"] <= node["width"], node
    first = next(n for n in boxes if n["id"] == "t1")
    assert first["text"].endswith("…")
    # Cut on the page, never for a screen reader: the node's name is the whole title.
    assert first["name"] == f"{LONG} (t1), escalated"
    await expect(page.get_by_role("link", name=f"{LONG} (t1), escalated")).to_have_count(1)


async def test_every_field_has_a_name_a_screen_reader_can_say(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    await running_mission(nc, script)
    page = await signed_in(browser, gateway_server)
    await expect(page.get_by_label("Filter by status")).to_have_count(1)
    await expect(page.get_by_label("Filter by repository")).to_have_count(1)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.get_by_label("Message to the planner")).to_have_count(1)
    unnamed = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
          .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
          .map((el) => el.id)"""
    )
    assert unnamed == []


async def test_a_filter_that_finds_nothing_says_so_and_offers_every_mission(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    await running_mission(nc, script)
    page = await signed_in(browser, gateway_server)
    await page.goto(gateway_server.base_url + "/board/?status=cancelled")
    await expect(page.locator("#missions-empty")).to_contain_text("No missions match")
    await page.click("#clear-filters")
    await expect(page.locator(f'tr[data-mission="{script.mission_id}"]')).to_have_count(1)
    assert page.url.endswith("/board/")


async def test_a_link_to_a_mission_or_task_that_does_not_exist_shows_only_that(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    await running_mission(nc, script)
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/m-0000000000000000")
    await expect(page.locator("#mission-head h1")).to_have_text("Mission not found")
    for empty in ("#commands", "#plan", "#board", "#conversation"):
        await expect(page.locator(empty)).to_be_hidden()
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t9")
    await expect(page.locator("#task-head h1")).to_have_text("Task not found")
    await expect(page.locator("#transcript-card")).to_be_hidden()
    await expect(page.locator("#attempts")).to_be_hidden()
    await page.click("#task-head a")
    await expect(page.locator("#plan-graph .node")).to_have_count(3)


async def test_cancel_asks_again_before_it_cancels(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    await running_mission(nc, script)
    page = await signed_in(browser, gateway_server, ADMIN_TOKEN)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    cancel = page.locator("#cancel")
    await cancel.click()
    await expect(cancel).to_have_text("Click again to cancel")
    await expect(page.locator("#mission-status .pill")).to_have_text("running")
    await cancel.click()
    async with EventLog(nc, script.mission_id) as log:
        cancelled = await log.first(MissionCancelled)
    assert cancelled.mission_id == script.mission_id
    await expect(page.locator("#mission-status .pill")).to_have_text("cancelled")


async def test_each_tab_is_titled_by_what_it_shows(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    await running_mission(nc, script)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(gateway_server.base_url + "/board/")
    await expect(page).to_have_title("Sign in · Aether")
    page = await signed_in(browser, gateway_server)
    await expect(page).to_have_title("Missions · Aether")
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page).to_have_title(f"{LONG[:59]}… · Aether")
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    await expect(page).to_have_title(f"{LONG} · {script.mission_id} · Aether")
    await page.click('#nav a[data-page="usage"]')
    await expect(page).to_have_title("Usage · Aether")


async def test_the_plan_card_shows_what_the_planner_changed_or_could_not_do(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, artefacts: Path
) -> None:
    # Without its notes a repaired plan reads as if it were what was asked.
    notes = [
        "the repository has no command '/no-such-cmd': the requirement is planned as text",
        "t2's files were given as a list of directories: narrowed to src/t2.py",
    ]
    plan = msgspec.structs.replace(script.plan(task_ids=("t1", "t2")), repairs=notes)
    await EventPublisher(nc.jetstream()).publish_all([script.requested(), script.prepared(), plan])
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.locator("#plan-notes li")).to_have_text(notes)
    await page.screenshot(path=str(artefacts / "plan-notes.png"))
