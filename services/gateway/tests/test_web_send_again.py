"""A write that failed, sent again from the board in a real browser (Debian's chromium,
driven by Playwright) against a real gateway on real NATS and PostgreSQL: every write
carries an Idempotency-Key; one that got no answer, a 5xx or a "try again" offers *Send
again*, which sends the same request with the same key, so a write that did reach the
gateway is done once; a refusal that would come again (a 400) offers nothing, and
nothing is ever sent again by itself.
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nats.js.api import DiscardPolicy

from aether_events import MISSIONS_STREAM, EventPublisher, MissionPaused, MissionRequested
from aether_events.replay import replay
from aether_events.subjects import type_subjects
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script
from .test_web import sample_repository, signed_in


def posts_to(page: Any, path: str) -> list[Any]:
    """The POST requests ``page`` makes to ``path``, as they are made."""
    seen: list[Any] = []

    def made(request: Any) -> None:
        if request.method == "POST" and request.url.split("?")[0].endswith(path):
            seen.append(request)

    page.on("request", made)
    return seen


async def stored(nc: Any, kind: type[Any]) -> list[Any]:
    """Every event of ``kind`` the mission stream holds, of any mission, in order."""

    def collect(events: list[Any], event: Any, _: int) -> list[Any]:
        return [*events, event] if isinstance(event, kind) else events

    initial: list[Any] = []
    found, _ = await replay(nc.jetstream(), MISSIONS_STREAM, type_subjects(kind), initial, collect)
    return found


@contextlib.asynccontextmanager
async def bus_refusing(nc: Any) -> AsyncIterator[None]:
    """The mission stream full, and refusing what more is published to it (its limit set
    to what it holds, new messages discarded): the gateway's publish fails, as with a
    stream out of space, until the limit is put back."""
    js = nc.jetstream()
    info = await js.stream_info(MISSIONS_STREAM)
    config = info.config
    before = (config.max_msgs, config.discard)
    config.max_msgs = max(info.state.messages, 1)
    config.discard = DiscardPolicy.NEW
    await js.update_stream(config)
    try:
        yield
    finally:
        config.max_msgs, config.discard = before
        await js.update_stream(config)


async def fill_mission_form(page: Any, repo: Path, budget: str) -> None:
    await page.fill("#nm-repository", str(repo))
    await page.fill("#nm-requirement", "Add a greeting")
    await page.fill("#nm-budget_usd", budget)


async def test_a_mission_the_bus_refused_is_sent_again_with_its_key_and_made_once(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    sample_repository(repo)
    # Something in the stream, so that a limit of what it holds refuses the next.
    await EventPublisher(nc.jetstream()).publish(script.requested())
    page = await signed_in(browser, gateway_server)
    sent = posts_to(page, "/missions")
    again = page.locator("#nm-send-again")

    # A refusal that would come again (400: the budget) offers nothing to send again.
    await fill_mission_form(page, repo, "-3")
    await page.click("#new-mission button[type=submit]")
    await expect(page.locator("#nm-budget_usd-error")).to_contain_text("0")
    await expect(again).to_have_count(0)

    await page.fill("#nm-budget_usd", "3")
    async with bus_refusing(nc):
        await page.click("#new-mission button[type=submit]")
        await expect(page.locator("#nm-error")).to_contain_text("event bus")
        await expect(again).to_be_visible()
        assert [(await r.response()).status for r in sent] == [400, 503]
    # Not sent again by itself, the bus back or not: only when asked.
    assert len(sent) == 2
    await again.click()
    await expect(page.locator("#mission-head")).to_be_visible()
    mission_id = page.url.rstrip("/").rsplit("/", 1)[1]

    first, second = sent[1:]
    assert (await second.response()).status == 202
    keys = [await r.header_value("idempotency-key") for r in sent]
    assert all(keys) and len(set(keys)) == 2, keys  # a key each write, its copy the same
    assert keys[1] == keys[2]
    assert first.post_data == second.post_data
    made = [e for e in await stored(nc, MissionRequested) if e.mission_id != script.mission_id]
    assert [e.mission_id for e in made] == [mission_id]


async def test_a_mission_whose_answer_was_lost_is_sent_again_and_made_once(
    gateway_server: GatewayServer, nc: Any, browser: Any, tmp_path: Path
) -> None:
    """The request reached the gateway, which made the mission, but its answer never
    reached the browser (the connection cut as it came back)."""
    repo = tmp_path / "repo"
    sample_repository(repo)
    page = await signed_in(browser, gateway_server)
    sent = posts_to(page, "/missions")
    cut: list[int] = []

    async def answer_lost(route: Any) -> None:
        if route.request.method != "POST" or cut:
            await route.continue_()
            return
        answer = await route.fetch()  # to the gateway, which acts on it
        cut.append(answer.status)
        await route.abort("connectionreset")

    await page.route(lambda url: url.split("?")[0].endswith("/missions"), answer_lost)
    await fill_mission_form(page, repo, "3")
    await page.click("#new-mission button[type=submit]")
    await expect(page.locator("#nm-error")).to_contain_text("no answer from the gateway")
    again = page.locator("#nm-send-again")
    await expect(again).to_be_visible()
    assert cut == [202]
    made = await stored(nc, MissionRequested)
    assert len(made) == 1  # it did reach the gateway

    await again.click()
    await expect(page.locator("#mission-head")).to_be_visible()
    assert page.url.rstrip("/").endswith(f"/board/missions/{made[0].mission_id}")
    assert len(sent) == 2
    replayed = await sent[1].response()
    assert replayed.status == 202
    # The gateway's first answer, not a second mission.
    assert await replayed.header_value("idempotent-replayed") == "true"
    keys = {await r.header_value("idempotency-key") for r in sent}
    assert len(keys) == 1 and None not in keys
    assert [e.mission_id for e in await stored(nc, MissionRequested)] == [made[0].mission_id]


async def test_a_command_the_bus_refused_is_sent_again_and_done_once(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [script.requested(), script.prepared(), script.plan(), script.approved()]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.locator("#mission-status .pill")).to_have_text("running")
    pauses = posts_to(page, "/pause")
    again = page.locator("#command-send-again")
    async with bus_refusing(nc):
        await page.click("#pause")
        await expect(page.locator("#command-error")).to_contain_text("event bus")
        await expect(again).to_be_visible()
    assert len(pauses) == 1
    await again.click()
    await expect(page.locator("#mission-status .pill")).to_have_text("paused")
    await expect(again).to_have_count(0)
    await expect(page.locator("#command-error")).to_have_text("")
    assert [(await r.response()).status for r in pauses] == [503, 202]
    keys = {await r.header_value("idempotency-key") for r in pauses}
    assert len(keys) == 1 and None not in keys
    assert len(await stored(nc, MissionPaused)) == 1


async def test_the_pure_rules_of_sending_again_and_of_waiting_to_reconnect(
    gateway_server: GatewayServer, browser: Any
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(gateway_server.base_url + "/board/")
    found = await page.evaluate(
        """async () => {
        const api = await import('/board/static/js/api.js');
        const live = await import('/board/static/js/live.js');
        const refused = (status, retryAfter = null) => new api.ApiError(status, {}, retryAfter);
        return {
          resend: [
            new api.NetworkError(new TypeError('Failed to fetch'), true),
            refused(408), refused(429, 5), refused(503, 1), refused(500), refused(502),
            refused(409, 1),
          ].map(api.Write.mayResend),
          never: [
            refused(400), refused(401), refused(403), refused(404), refused(409),
            refused(422), new Error('a bug'),
          ].map(api.Write.mayResend),
          keys: [api.newKey(), api.newKey()],
          delays: [
            live.reconnectDelay(5, 500, 0), live.reconnectDelay(5, 500, 0.999),
            live.reconnectDelay(0, 500, 0), live.reconnectDelay(86400, 500, 0),
            live.reconnectDelay(86400, 500, 0.999),
            live.reconnectDelay(null, 4000, 0), live.reconnectDelay(null, 4000, 0.999),
          ],
        };
    }"""
    )
    assert found["resend"] == [True] * 7
    assert found["never"] == [False] * 7
    assert all(k.startswith("board-") and len(k) == 38 for k in found["keys"])
    assert found["keys"][0] != found["keys"][1]
    said, jittered, floor, cut, cut_jittered, backoff, backoff_top = found["delays"]
    assert said == 5000 and 5000 < jittered < 6000
    assert floor == 250
    assert cut == 300_000 and 300_000 < cut_jittered < 310_000
    assert backoff == 2000 and 2000 < backoff_top < 4000
