"""The board's OIDC sign-in in a real browser (Debian's chromium, driven by Playwright):
a real identity provider (authlib's server, run by ``oidc-provider-mock``, PKCE enforced)
and a real gateway on real NATS and PostgreSQL. The user signs in on the provider's own
page, is sent back, sees what their role allows, is sent back to sign-in when the
session's token expires, and signs out of the provider too.
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from oidc_provider_mock import User

from aether.infra import free_port
from aether_events import EventPublisher, RepositoryPrepared
from aether_gateway.adapters.oidc import OidcSettings
from aether_runtime import RuntimeSettings
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script
from .oidc_provider import Provider

USERS = [
    User(sub="otto", claims={"roles": ["aether-operator"], "email": "otto@x.test"}),
    User(sub="rita", claims={"roles": ["aether-read-only"], "email": "rita@x.test"}),
]


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = Provider(USERS)
    yield server
    server.stop()


@pytest.fixture
async def board(
    provider: Provider,
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    nats_url: str,
) -> GatewayServer:
    """A gateway whose public URL is the one the browser reaches (the provider sends
    the browser back to it)."""
    port = free_port()
    return await make_gateway(
        runtime=RuntimeSettings(nats_url=nats_url, host="127.0.0.1", port=port),
        public_url=f"http://127.0.0.1:{port}",
        oidc=OidcSettings(issuer=provider.issuer, client_id="aether-board"),
    )


async def first_page(browser: Any) -> Any:
    # The provider's pages link a stylesheet from a CDN; this machine has no network.
    async def no_stylesheet(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/css", body="")

    await browser.route("https://cdn.jsdelivr.net/**", no_stylesheet)
    return browser.pages[0] if browser.pages else await browser.new_page()


async def sign_in(page: Any, board: GatewayServer, sub: str) -> None:
    await page.goto(board.base_url + "/board/")
    await page.click("#oidc-signin")
    # The provider's own page, on its own origin: sign in as ``sub``.
    await page.click(f'button[name="sub"][value="{sub}"]')
    await expect(page.locator("#missions")).to_be_visible()


async def awaiting_approval(nc: Any, script: Script) -> None:
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(),
            RepositoryPrepared(
                **script.meta(),  # type: ignore[arg-type]
                repository_path="/repos/demo",
                base_branch="main",
                base_sha="0" * 40,
                integration_branch=f"aether/{script.mission_id}",
            ),
            script.plan(task_ids=("t1",)),
        ]
    )


async def test_an_operator_signs_in_with_the_provider_until_the_token_expires(
    board: GatewayServer, browser: Any, artefacts: Path, nc: Any, script: Script
) -> None:
    page = await first_page(browser)
    # The board's timers run on a clock the test moves, so expiry needs no waiting.
    await page.clock.install()
    await page.goto(board.base_url + "/board/")
    await expect(page.locator("#oidc-signin")).to_have_text("Sign in with " + board_host(board))
    await page.screenshot(path=str(artefacts / "oidc-1-sign-in.png"))

    await sign_in(page, board, "otto")
    assert page.url == board.base_url + "/board/"
    await expect(page.locator("#who")).to_contain_text("otto@x.test")
    await expect(page.locator("#who .scope")).to_have_text("can command")
    await expect(page.locator("#new-mission")).to_be_visible()

    await awaiting_approval(nc, script)
    row = page.locator(f'tr[data-mission="{script.mission_id}"]')
    await expect(row.locator(".pill")).to_have_text("awaiting approval")
    await row.locator("a").click()
    await expect(page.locator("#approve")).to_be_visible()
    await page.screenshot(path=str(artefacts / "oidc-2-operator.png"))

    # The ID token lives ten minutes: past that the board sends the user to sign in.
    await page.clock.fast_forward("11:00")
    await expect(page.locator("#signin .notice")).to_have_text("Signed out: your session expired.")
    await expect(page.locator("#nav")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('aether.token')") is None


async def test_a_session_the_provider_renews_goes_on_past_its_first_token(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    nats_url: str,
    browser: Any,
    artefacts: Path,
) -> None:
    """With a refresh token from the provider the board renews its session a minute
    before the ID token ends, and goes on with the new one instead of signing out."""
    provider = Provider(USERS, refresh_tokens=True)
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
        first = await page.evaluate("sessionStorage.getItem('aether.token')")
        assert await page.evaluate("sessionStorage.getItem('aether.renew')")

        # Nine and a half minutes on: the renewal (due at nine) has run.
        await page.clock.fast_forward("09:30")
        await page.wait_for_function(
            "first => sessionStorage.getItem('aether.token') !== first", arg=first
        )
        await expect(page.locator("#missions")).to_be_visible()
        await expect(page.locator("#who")).to_contain_text("otto@x.test")
        # The new token is what the board sends now: a page it loads still answers.
        await page.click('a[href="/board/agents"]')
        await expect(page.locator("#signin")).to_be_hidden()
        await page.screenshot(path=str(artefacts / "oidc-renewed.png"))
    finally:
        provider.stop()


async def test_signing_out_ends_the_providers_session_too(
    board: GatewayServer, browser: Any, artefacts: Path
) -> None:
    page = await first_page(browser)
    await sign_in(page, board, "otto")
    await page.click("#signout")
    # The provider's end-session page asks to confirm, then sends the browser back.
    await page.click("button:has-text('End session')")
    await expect(page.locator("#oidc-signin")).to_be_visible()
    assert page.url.startswith(board.base_url + "/board/")
    assert await page.evaluate("sessionStorage.getItem('aether.token')") is None
    await page.screenshot(path=str(artefacts / "oidc-3-signed-out.png"))


async def test_a_read_only_user_sees_no_command_buttons(
    board: GatewayServer, browser: Any, artefacts: Path, nc: Any, script: Script
) -> None:
    page = await first_page(browser)
    await sign_in(page, board, "rita")
    await expect(page.locator("#who .scope")).to_have_text("read-only")
    await expect(page.locator("#new-mission")).to_have_count(0)

    await awaiting_approval(nc, script)
    row = page.locator(f'tr[data-mission="{script.mission_id}"]')
    await expect(row.locator(".pill")).to_have_text("awaiting approval")
    await row.locator("a").click()
    await expect(page.locator("#plan-graph .node")).to_have_count(1)
    await expect(page.locator("#approve")).to_have_count(0)
    await expect(page.locator("#commands button")).to_have_count(0)
    await expect(page.locator("#send-message")).to_have_count(0)
    await page.screenshot(path=str(artefacts / "oidc-4-read-only.png"))


async def test_an_answer_this_tab_did_not_ask_for_is_refused(
    board: GatewayServer, browser: Any
) -> None:
    page = await first_page(browser)
    await page.goto(board.base_url + "/board/oidc/callback?code=stolen&state=guessed")
    await expect(page.locator("#signin .notice")).to_have_text(
        "Not signed in: this sign-in answer is not one this tab asked for; sign in again"
    )
    assert page.url == board.base_url + "/board/"


def board_host(board: GatewayServer) -> str:
    issuer = board.settings.oidc.issuer if board.settings.oidc else ""
    return (issuer or "").removeprefix("http://")


async def test_a_sign_in_denied_at_the_provider_says_so(board: GatewayServer, browser: Any) -> None:
    page = await first_page(browser)
    await page.goto(board.base_url + "/board/")
    await page.click("#oidc-signin")
    await page.click('button[value="deny"]')
    await expect(page.locator("#signin .notice")).to_have_text(
        "Not signed in: the identity provider refused: "
        "The resource owner or authorization server denied the request"
    )
    assert await page.evaluate("sessionStorage.getItem('aether.oidc.pending')") is None
