"""The new-mission form's choice of agent runtime, in a real browser against a real
gateway: the runtimes come from the live runners' entries on the real bus (written as a
runner writes its own, see test_runtimes.py), the mission's request is read back from the
stream."""

# The browser and registry fixtures are imported, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from aether_events import MissionRequested
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, eventually
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
    await page.select_option("#nm-runtime", "codex")

    # Its runner stops before the mission is sent: the gateway's 400, by the field.
    await registry.stopped("r-2")
    await live_runtimes(http, ["builtin"])
    await page.click("#new-mission button[type=submit]")
    await expect(page.locator("#nm-runtime-error")).to_have_text(
        "no live agent runner has the runtime 'codex'; the runners have: builtin"
    )
    await page.screenshot(path=str(artefacts / "form-runtime-refused.png"))
    assert page.url.rstrip("/").endswith("/board")
    # The choice is read again: only what the live runners have now.
    await expect(page.locator("#nm-runtime option")).to_have_count(2)
    await expect(page.locator("#nm-runtime")).to_have_value("")

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
