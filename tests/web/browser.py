"""A real browser for the board's tests: Debian's chromium, driven by Playwright, with a
fresh profile per test; every script error the pages raise fails the test.

The browser is chromium's headless shell (Debian's ``chromium-headless-shell``) where it
is installed, as ``.ci/run`` installs it: the same Blink engine, V8 and network stack as
the desktop browser without its windowing and UI layers, and what Playwright itself
launches for a headless run. It runs the board's tests on about a third of the CPU the
full browser takes in headless mode (the three files, one after another: 39 s of
chromium's CPU against 13 s). The full ``chromium`` is the fallback.

Skips (with the reason) only where no chromium is installed and ``CI`` is not set: under
CI a missing browser is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = (
    shutil.which("chromium-headless-shell") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists() and os.environ.get("CI", "").lower() not in ("1", "true"):
    pytest.skip(
        "chromium is not installed (apt-get install chromium-headless-shell); under CI=true "
        "these tests run",
        allow_module_level=True,
    )

from playwright import async_api as playwright_api  # noqa: E402

expect = playwright_api.expect
expect.set_options(timeout=15_000)


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("AETHER_TEST_ARTEFACTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless chromium for a test module (each module imports this fixture, so
    each has its own): starting it was most of a browser test's set-up. Each test still
    gets a fresh profile (``browser``)."""
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser(chromium: Any) -> AsyncIterator[Any]:
    """A fresh profile (a new browser context: no cookies, storage or cache of another
    test's) in the session's chromium."""
    context = await chromium.new_context(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []

    def watch(page: Any) -> None:
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.on(
            "console",
            lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None,
        )

    context.on("page", watch)
    context.script_errors = errors
    try:
        yield context
    finally:
        await context.close()
    # Failed requests the tests provoke (401, 400) log as console errors too; a
    # script error never is one of them.
    scripts = [e for e in errors if "Failed to load resource" not in e]
    assert not scripts, "the board's scripts failed:\n" + "\n".join(scripts)
