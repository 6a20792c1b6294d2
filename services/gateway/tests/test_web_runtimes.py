"""The new-mission form's choice of agent runtime, for the mission and per model tier, in
a real browser against a real gateway: the runtimes come from the live runners' entries on
the real bus (written as a runner writes its own, see test_runtimes.py), the mission's
request is read back from the stream, and its tasks are made ready by the scheduler's own
rules (its ``evolve`` and ``decide``) from what was stored."""

# The browser and registry fixtures are imported, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from aether_events import (
    Event,
    EventPublisher,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    TaskReady,
)
from aether_scheduler.domain import Config, State, decide, evolve
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script, eventually
from .test_runtimes import Registry, registry  # noqa: F401 (fixture)
from .test_web import first_stored, sample_repository, signed_in


async def live_runtimes(http: httpx.AsyncClient, expected: list[str]) -> None:
    """Wait until the gateway's copy of the registry (kept a moment) lists ``expected``."""

    async def listed() -> bool:
        answer = (await http.get("/runtimes")).json()
        return [offer["name"] for offer in answer["runtimes"]] == expected

    await eventually(listed, timeout=30, what=f"the gateway to list {expected}")


async def options(page: Any) -> list[tuple[str, str]]:
    return [
        tuple(option)
        for option in await page.evaluate(
            "() => [...document.querySelectorAll('#nm-runtime option')]"
            ".map((o) => [o.value, o.textContent])"
        )
    ]


async def fill_mission(page: Any, repo: Path) -> None:
    await page.fill("#nm-repository", str(repo))
    await page.fill("#nm-requirement", "Add a greeting")


async def test_the_form_offers_the_live_runners_runtimes_and_sends_the_one_picked(
    gateway_server: GatewayServer,
    http: httpx.AsyncClient,
    nc: Any,
    registry: Registry,
    browser: Any,
    artefacts: Path,
    tmp_path: Path,
) -> None:
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "builtin", "codex")
    await live_runtimes(http, ["builtin", "codex"])
    repo = tmp_path / "repo"
    sample_repository(repo)
    page = await signed_in(browser, gateway_server)
    await expect(page.locator("#nm-runtime option")).to_have_count(3)
    assert await options(page) == [
        ("", "The runners' default (builtin)"),
        ("builtin", "builtin (2 of 2 live runners)"),
        ("codex", "codex (1 of 2 live runners)"),
    ]
    await expect(page.locator("#nm-runtime")).to_have_value("")
    await expect(page.locator("#nm-runtime-note")).to_be_hidden()
    await expect(page.get_by_label("Agent runtime")).to_have_count(1)

    await fill_mission(page, repo)
    await page.select_option("#nm-runtime", "codex")
    await page.screenshot(path=str(artefacts / "form-runtime.png"))
    async with page.expect_request(
        lambda r: r.url.endswith("/missions") and r.method == "POST"
    ) as sent:
        await page.click("#new-mission button[type=submit]")
    assert json.loads((await sent.value).post_data)["runtime"] == "codex"
    await expect(page.locator("#mission-head")).to_be_visible()
    mission_id = page.url.rstrip("/").rsplit("/", 1)[1]
    requested = await first_stored(nc, mission_id, MissionRequested)
    assert requested.runtime == "codex"


async def test_a_runtime_gone_since_the_form_loaded_is_refused_and_an_unchecked_one_warned(
    gateway_server: GatewayServer,
    http: httpx.AsyncClient,
    nc: Any,
    registry: Registry,
    browser: Any,
    artefacts: Path,
    tmp_path: Path,
) -> None:
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "codex")
    await live_runtimes(http, ["builtin", "codex"])
    repo = tmp_path / "repo"
    sample_repository(repo)
    page = await signed_in(browser, gateway_server)
    await expect(page.locator("#nm-runtime option")).to_have_count(3)
    # Runners with different defaults: each is named.
    assert (await options(page))[0] == ("", "Each runner's default (builtin, codex)")
    await fill_mission(page, repo)
    await page.fill("#nm-budget_usd", "2.5")
    await page.check("#nm-auto_approve")
    await page.select_option("#nm-runtime", "codex")
    await page.click("#nm-tiers-summary")
    await page.select_option("#nm-runtime-complex", "codex")
    await page.select_option("#nm-runtime-small", "builtin")

    # Its runner stops before the mission is sent: the gateway's 400, beside each choice
    # that names the runtime gone.
    await registry.stopped("r-2")
    await live_runtimes(http, ["builtin"])
    await page.click("#new-mission button[type=submit]")
    refusal = "no live agent runner has the runtime 'codex'; the runners have: builtin"
    await expect(page.locator("#nm-runtime-error")).to_have_text(refusal)
    await expect(page.locator("#nm-runtime-complex-error")).to_have_text(refusal)
    await expect(page.locator("#nm-runtime-small-error")).to_be_hidden()
    await expect(page.locator("#nm-runtime-complex")).to_have_attribute("aria-invalid", "true")
    await page.screenshot(path=str(artefacts / "form-runtime-refused.png"))
    assert page.url.rstrip("/").endswith("/board")
    # Nothing typed or chosen is lost; the choices are read again, and the runtime gone
    # stays chosen, marked as unavailable, not silently swapped for another.
    await expect(page.locator("#nm-repository")).to_have_value(str(repo))
    await expect(page.locator("#nm-requirement")).to_have_value("Add a greeting")
    await expect(page.locator("#nm-budget_usd")).to_have_value("2.5")
    await expect(page.locator("#nm-auto_approve")).to_be_checked()
    await expect(page.locator("#nm-runtime")).to_have_value("codex")
    await expect(page.locator("#nm-runtime-complex")).to_have_value("codex")
    await expect(page.locator("#nm-runtime-small")).to_have_value("builtin")
    await expect(page.locator("#nm-runtime option")).to_have_text(
        [
            "The runners' default (builtin)",
            "builtin (1 of 1 live runner)",
            "codex (unavailable)",
        ]
    )
    await expect(page.locator("#nm-runtime-gone")).to_contain_text("codex is unavailable")
    await expect(page.locator("#nm-runtime-complex-gone")).to_contain_text("codex is unavailable")
    # Another choice answers the refusal beside it.
    await page.select_option("#nm-runtime-complex", "")
    await expect(page.locator("#nm-runtime-complex-error")).to_be_hidden()
    await expect(page.locator("#nm-runtime-complex-gone")).to_be_hidden()
    await expect(page.locator("#nm-runtime-error")).to_have_text(refusal)
    await page.select_option("#nm-runtime-small", "")

    # Every runner gone before the next try: nobody can check the runtime, so the mission
    # is kept and the answer's warning is shown, with the way to the mission.
    await page.select_option("#nm-runtime", "builtin")
    await registry.stopped("r-1")
    await live_runtimes(http, [])
    await page.click("#new-mission button[type=submit]")
    warning = page.locator("#nm-warning")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text(
        "Mission submitted, but no agent runner has announced itself, so the runtimes asked "
        "for (builtin) were not checked"
    )
    await expect(page.locator("#nm-error")).to_be_hidden()
    # No runner is live now: the form says so, and offers only the runners' default.
    await expect(page.locator("#nm-runtime-note")).to_contain_text("No agent runner is live")
    await expect(page.locator("#nm-runtime option")).to_have_count(1)
    # The form starts afresh (the repository's hint too), and the list shows the mission.
    await expect(page.locator("#nm-base-hint")).to_have_text(
        "Left empty: the repository's default branch"
    )
    href = await page.locator("#nm-warning-mission").get_attribute("href")
    mission_id = href.rstrip("/").rsplit("/", 1)[1]
    await expect(page.locator(f'tr[data-mission="{mission_id}"]')).to_have_count(1)
    await page.screenshot(path=str(artefacts / "form-runtime-warning.png"))
    await page.click("#nm-warning-mission")
    await expect(page.locator("#mission-head")).to_be_visible()
    assert page.url.rstrip("/").rsplit("/", 1)[1] == mission_id
    requested = await first_stored(nc, mission_id, MissionRequested)
    assert requested.runtime == "builtin"


def scheduled(events: list[Event]) -> list[TaskReady]:
    """The tasks the scheduler makes ready after ``events``: its own ``evolve`` and
    ``decide``, as its handler runs them, so the runtime each task gets is its rule's."""
    config = Config(tier_models={"small": "s", "standard": "m", "complex": "l"})
    state = State()
    ready: list[TaskReady] = []
    for event in events:
        state = evolve(state, event)
        for decided in decide(state, event, datetime.now(UTC), config):
            state = evolve(state, decided)
            if isinstance(decided, TaskReady):
                ready.append(decided)
    return ready


async def test_a_runtime_chosen_per_tier_is_sent_as_an_override_and_its_tasks_show_it(
    gateway_server: GatewayServer,
    http: httpx.AsyncClient,
    nc: Any,
    registry: Registry,
    browser: Any,
    artefacts: Path,
    tmp_path: Path,
) -> None:
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "builtin", "codex")
    await live_runtimes(http, ["builtin", "codex"])
    repo = tmp_path / "repo"
    sample_repository(repo)
    page = await signed_in(browser, gateway_server)
    # One choice per tier the gateway knows, cheapest first, named for a screen reader;
    # folded away until asked for, and reached with the keyboard alone.
    tiers = page.locator("#nm-tiers select")
    await expect(tiers).to_have_count(3)
    assert await tiers.evaluate_all("(els) => els.map((el) => el.dataset.tier)") == [
        "small",
        "standard",
        "complex",
    ]
    for name in ("Small tasks", "Standard tasks", "Complex tasks"):
        await expect(page.get_by_label(name)).to_have_count(1)
    await expect(page.get_by_label("Complex tasks")).to_be_hidden()
    await expect(page.locator("#nm-runtime-complex option")).to_have_text(
        ["As the mission's runtime", "builtin (2 of 2 live runners)", "codex (1 of 2 live runners)"]
    )
    await fill_mission(page, repo)
    await page.focus("#nm-tiers-summary")
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Complex tasks")).to_be_visible()
    for _ in range(3):
        await page.keyboard.press("Tab")
    await expect(page.get_by_label("Complex tasks")).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    await expect(page.get_by_label("Complex tasks")).to_have_value("codex")
    await page.screenshot(path=str(artefacts / "form-runtime-per-tier.png"))
    async with page.expect_request(
        lambda r: r.url.endswith("/missions") and r.method == "POST"
    ) as sent:
        await page.click("#new-mission button[type=submit]")
    body = json.loads((await sent.value).post_data)
    assert body["runtime_overrides"] == {"complex": "codex"}
    assert "runtime" not in body
    await expect(page.locator("#mission-head")).to_be_visible()
    mission_id = page.url.rstrip("/").rsplit("/", 1)[1]
    requested = await first_stored(nc, mission_id, MissionRequested)
    assert requested.runtime is None
    assert requested.runtime_overrides == {"complex": "codex"}
    await expect(page.locator("#mission-runtime")).to_have_text("default (complex: codex)")

    # Planned, approved and made ready as the scheduler does it: the complex task with
    # the runtime chosen for its tier, the small one with its runner's default.
    script = Script(mission_id)
    plan = PlanProduced(
        **script.meta(),  # type: ignore[arg-type]
        version=1,
        tasks=[
            PlannedTask(id="t1", title="Small change", files=["a.py"], tier="small"),
            PlannedTask(id="t2", title="Hard change", files=["b.py"], tier="complex"),
        ],
        model="offline-planner",
        offline=True,
    )
    approved = PlanApproved(**script.meta(), version=1)  # type: ignore[arg-type]
    prepared = script.prepared()
    ready = scheduled([requested, prepared, plan, approved])
    assert {r.task.id: r.runtime for r in ready} == {"t1": None, "t2": "codex"}
    await EventPublisher(nc.jetstream()).publish_all([prepared, plan, approved, *ready])
    card = page.locator("#task-board article")
    await expect(card.locator(".pill")).to_have_text(["ready", "ready"])
    await expect(page.locator('article[data-task="t2"] .tag.runtime')).to_have_text("codex")
    await expect(page.locator('article[data-task="t1"] .tag.runtime')).to_have_text("default")
    await page.screenshot(path=str(artefacts / "mission-task-runtimes.png"), full_page=True)
    await page.locator('article[data-task="t2"] a.task-title').click()
    await expect(page.locator("#task-runtime")).to_have_text("codex")


async def test_runtimes_are_read_again_while_the_form_stays_open(
    gateway_server: GatewayServer,
    http: httpx.AsyncClient,
    registry: Registry,
    browser: Any,
    artefacts: Path,
) -> None:
    await registry.runner("r-1", "builtin")
    await registry.runner("r-2", "codex")
    await live_runtimes(http, ["builtin", "codex"])
    page = browser.pages[0] if browser.pages else await browser.new_page()
    # The page's timers on a clock the test can move on: the form's next reading is
    # brought forward rather than waited for.
    await page.clock.install()
    page = await signed_in(browser, gateway_server)
    await expect(page.locator("#nm-runtime option")).to_have_count(3)
    await page.select_option("#nm-runtime", "codex")
    await page.evaluate("() => { window.sameDocument = true; }")
    reads: list[str] = []
    page.on("request", lambda r: reads.append(r.url) if r.url.endswith("/runtimes") else None)

    # A runner with a new runtime announces itself: at the form's next reading it is
    # offered, for the mission and each tier, without a reload.
    await registry.runner("r-3", "aider")
    await live_runtimes(http, ["aider", "builtin", "codex"])
    await page.clock.run_for(16_000)
    await expect(page.locator("#nm-runtime option[value=aider]")).to_have_text(
        "aider (1 of 3 live runners)"
    )
    await expect(page.locator("#nm-runtime-complex option[value=aider]")).to_have_count(1)
    await expect(page.locator("#nm-runtime")).to_have_value("codex")
    assert await page.evaluate("() => window.sameDocument") is True

    # The runner of the runtime chosen stops: when the window gets the focus back the
    # list is read again, and the choice stays, marked as unavailable.
    await registry.stopped("r-2")
    await live_runtimes(http, ["aider", "builtin"])
    read_before = len(reads)
    await page.evaluate("() => window.dispatchEvent(new Event('focus'))")
    # Well before the next reading the clock brings (15 s after the last one).
    await expect(page.locator("#nm-runtime option[value=codex]")).to_have_text(
        "codex (unavailable)", timeout=5_000
    )
    await expect(page.locator("#nm-runtime")).to_have_value("codex")
    await expect(page.locator("#nm-runtime-gone")).to_contain_text("codex is unavailable")
    await page.screenshot(path=str(artefacts / "form-runtime-unavailable.png"))
    # One reading for the focus, and no storm of them: a burst of focus and visibility
    # changes is at most one more.
    assert len(reads) == read_before + 1
    for _ in range(20):
        await page.evaluate(
            "() => { window.dispatchEvent(new Event('focus'));"
            " document.dispatchEvent(new Event('visibilitychange')); }"
        )
    await page.clock.run_for(2_500)
    await expect(page.locator("#nm-runtime")).to_have_value("codex")
    assert len(reads) <= read_before + 2, reads
