"""The board meets "try again shortly" in a real browser (Debian's chromium, driven by
Playwright) against a real gateway on real NATS and PostgreSQL: a read answered 429 (the
read limit) or 503 (the identity provider away) with a short ``Retry-After`` is asked
again after it, with a small notice meanwhile; a write answered 429 is not asked again and
says when to try; a 503 never signs the user out.
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aether.infra import free_port
from aether_events import EventPublisher
from aether_gateway.adapters.oidc import OidcSettings
from aether_runtime import RuntimeSettings
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script, eventually
from .oidc_provider import Provider
from .test_web import signed_in
from .test_web_oidc import USERS, awaiting_approval, first_page, sign_in


def requests_to(page: Any, method: str, path: str) -> list[int]:
    """The statuses of the answers ``page`` gets to ``method path``, as they come."""
    seen: list[int] = []

    def answered(response: Any) -> None:
        request = response.request
        if request.method == method and request.url.split("?")[0].endswith(path):
            seen.append(response.status)

    page.on("response", answered)
    return seen


async def test_a_read_over_the_read_limit_is_asked_again_with_a_notice(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nc: Any, script: Script, browser: Any
) -> None:
    # Two reads a window of four seconds: signing in spends them, so the page's reads
    # that follow are refused with a Retry-After of a second or two.
    server = await make_gateway(read_rate_limit=2, read_rate_window_seconds=4)
    await EventPublisher(nc.jetstream()).publish_all([script.requested()])
    page = await signed_in(browser, server)
    whoami = requests_to(page, "GET", "/auth/whoami")
    await page.reload()
    notice = page.locator("#retry-notice")
    await expect(notice).to_have_text(re.compile(r"^Retrying in \d s…$"))
    # Asked again once the limit allows: the page loads its data, still signed in.
    await expect(page.locator(f'tr[data-mission="{script.mission_id}"]')).to_be_visible()
    await expect(page.locator("#who")).to_be_visible()
    await expect(notice).to_be_hidden()
    assert whoami[0] == 429 and whoami[-1] == 200, whoami
    assert await page.evaluate("sessionStorage.getItem('aether.token')")


async def test_a_write_over_its_limit_is_not_asked_again_and_says_when_to_try(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nc: Any, script: Script, browser: Any
) -> None:
    # One write an hour: approving the plan spends it, so pausing is refused for an hour.
    server = await make_gateway(command_rate_limit=1, command_rate_window_seconds=3600)
    await awaiting_approval(nc, script)
    page = await signed_in(browser, server)
    await page.clock.install()
    pauses = requests_to(page, "POST", "/pause")
    await page.goto(f"{server.base_url}/board/missions/{script.mission_id}")
    await page.click("#approve")
    await expect(page.locator("#pause")).to_be_visible()
    await page.click("#pause")
    await expect(page.locator("#command-error")).to_have_text(
        re.compile(r"^at most 1 write requests per 3600 seconds; try again (at|on) .*\d\d:\d\d")
    )
    # Time passes on the page's clock: the write is never sent again by itself.
    await page.clock.fast_forward("01:00")
    await expect(page.locator("#retry-notice")).to_be_hidden()
    assert pauses == [429]


async def test_the_provider_away_keeps_the_user_signed_in(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nats_url: str, browser: Any
) -> None:
    """The gateway answers 503 while it cannot check an OIDC token (the provider away):
    the board asks again a few times, then says so, and keeps the sign-in."""
    provider = Provider(USERS)
    try:
        port = free_port()
        board = await make_gateway(
            runtime=RuntimeSettings(nats_url=nats_url, host="127.0.0.1", port=port),
            public_url=f"http://127.0.0.1:{port}",
            oidc=OidcSettings(issuer=provider.issuer, client_id="aether-board"),
        )
        page = await first_page(browser)
        await page.clock.install()
        await sign_in(page, board, "otto")
        token = await page.evaluate("sessionStorage.getItem('aether.token')")
    finally:
        provider.stop()
    # A gateway started afresh has no keys of the provider's to check the token with.
    await board.restart()
    whoami = requests_to(page, "GET", "/auth/whoami")
    await page.reload()
    await expect(page.locator("#retry-notice")).to_have_text("Retrying in 5 s…")
    for tries in range(2, 5):
        await page.clock.fast_forward("00:06")
        await eventually(
            lambda n=tries: _at_least(whoami, n), timeout=15, what=f"whoami asked {tries} times"
        )
    unavailable = page.locator("#unavailable")
    await expect(unavailable).to_contain_text("try again in 5 s")
    await expect(page.locator("#retry-notice")).to_be_hidden()
    assert whoami == [503] * 4
    assert await page.evaluate("sessionStorage.getItem('aether.token')") == token
    await expect(page.locator("#signin")).to_have_count(0)


async def _at_least(seen: list[int], n: int) -> bool:
    return len(seen) >= n
