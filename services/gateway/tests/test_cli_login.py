"""``aether login`` and ``aether logout`` against a real gateway and a real identity
provider (authlib's authorization server, run by ``oidc-provider-mock``): the loopback
sign-in with PKCE, the kept token used by later commands, refresh, pasted API tokens, and
a confidential client's device sign-in run through the gateway."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import threading
import time
import webbrowser
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether import login
from aether.cli import main
from aether_runtime import tls

from .conftest import ADMIN_TOKEN, GatewayServer, eventually
from .oidc_provider import Provider
from .test_oidc import USERS, settings_for


class Browser:
    """The test's browser: it posts the provider's sign-in form as ``sub`` and follows
    the redirect to the CLI's loopback listener (in a thread, as a browser is another
    process)."""

    def __init__(self, sub: str, *, forge_state: bool = False) -> None:
        self.sub = sub
        self.forge_state = forge_state
        self.opened: list[str] = []
        self.landed: httpx.Response | None = None
        self.failure: BaseException | None = None
        self.threads: list[threading.Thread] = []

    def open(self, address: str, *_: Any, **__: Any) -> bool:
        self.opened.append(address)
        thread = threading.Thread(target=self._visit, args=(address,), daemon=True)
        thread.start()
        self.threads.append(thread)
        return True

    def _visit(self, address: str) -> None:
        try:
            with httpx.Client(verify=tls.shared(), timeout=30) as http:
                form = http.post(address, data={"sub": self.sub})
                assert form.status_code == 302, form.text
                location = form.headers["location"]
                if self.forge_state:  # an answer made for another sign-in
                    location = re.sub(r"state=[^&]+", "state=someone-elses", location)
                self.landed = http.get(location)
        except BaseException as error:  # reported by the test, not lost in the thread
            self.failure = error


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AETHER_TOKEN", raising=False)
    monkeypatch.delenv("AETHER_URL", raising=False)


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = Provider(USERS, refresh_tokens=True)
    yield server
    server.stop()


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """One command in a thread (the CLI is synchronous; the gateway runs on this loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def use_browser(monkeypatch: pytest.MonkeyPatch, sub: str, **options: bool) -> Browser:
    browser = Browser(sub, **options)
    monkeypatch.setattr(webbrowser, "open", browser.open)
    return browser


def one_line_error(err: str) -> bool:
    """The CLI said one ``error:`` line (the in-process provider may warn besides)."""
    lines = err.strip().splitlines()
    return [line for line in lines if line.startswith("error: ")] == lines[-1:]


def kept(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / login.CREDENTIALS_FILE).read_text())["sessions"]
    return data


async def test_login_through_the_browser_keeps_a_token_later_commands_use(
    provider: Provider,
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    gateway = await make_gateway(oidc=settings_for(provider))
    browser = use_browser(monkeypatch, "ada")
    home = tmp_path / "home"
    where = ("--url", gateway.base_url, "--home", str(home))

    code, out, err = await run(capsys, "login", *where)
    assert browser.failure is None
    assert code == 0, err
    # The CLI sent the browser to the provider with PKCE and a loopback redirect.
    (address,) = browser.opened
    assert address.startswith(f"{provider.issuer}/oauth2/authorize?")
    assert "code_challenge_method=S256" in address
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in address
    assert address in out  # printed too, for a terminal without a browser
    assert browser.landed is not None and "Signed in to Aether" in browser.landed.text
    assert f"signed in to {gateway.base_url} as ada" in out

    path = home / login.CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    session = kept(home)[gateway.base_url]
    assert session["kind"] == "oidc" and session["bearer"] == "id_token"
    assert session["refresh_token"]

    # A later command, with no --token, is ada with the provider's roles.
    code, out, err = await run(capsys, "tokens", "whoami", *where, "--json")
    assert code == 0, err
    me = json.loads(out)
    assert (me["id"], me["kind"], me["scopes"]) == ("oidc:ada", "oidc", ["admin"])

    code, out, _ = await run(capsys, "logout", *where)
    assert code == 0 and f"signed out of {gateway.base_url}" in out
    assert kept(home) == {}
    code, _, err = await run(capsys, "tokens", "whoami", *where)
    assert code == 1
    assert "refused the token (authentication required" in err and "aether login" in err


async def test_device_sign_in_prints_a_code_and_waits_for_its_approval(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    device = Provider(USERS, device_grant=True)
    try:
        gateway = await make_gateway(oidc=settings_for(device))
        where = ("--url", gateway.base_url, "--home", str(tmp_path))
        capsys.readouterr()
        running = asyncio.create_task(asyncio.to_thread(main, ["login", *where, "--device"]))
        printed = ""

        async def told_a_code() -> bool:
            nonlocal printed
            printed += capsys.readouterr().out
            return "enter the code" in printed

        await eventually(told_a_code)
        user_code = printed.split("enter the code ")[1].split()[0]
        assert f"{device.issuer}/device" in printed
        device.approve(user_code, "rita")
        assert await asyncio.wait_for(running, 60) == 0
        out = printed + capsys.readouterr().out
        assert f"signed in to {gateway.base_url} as" in out
        code, me, err = await run(capsys, "tokens", "whoami", *where, "--json")
        assert code == 0, err
        assert (json.loads(me)["id"], json.loads(me)["scopes"]) == ("oidc:rita", ["read"])
    finally:
        device.stop()


async def test_a_confidential_clients_sign_in_runs_through_the_gateway(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The gateway's client has a secret the CLI does not: ``aether login`` asks the
    gateway to run the device grant (the provider refuses that client without its
    secret), and refreshes through the gateway too."""
    device = Provider(
        USERS, device_grant=True, refresh_tokens=True, token_max_age=timedelta(seconds=40)
    )
    try:
        device.register_confidential_client("aether-private", "the-secret")
        gateway = await make_gateway(
            oidc=settings_for(device, client_id="aether-private", client_secret="the-secret")
        )
        async with gateway.client(token=None) as anonymous:
            config = (await anonymous.get("/auth/oidc")).json()
        assert (config["confidential"], config["device"]) == (True, True)
        where = ("--url", gateway.base_url, "--home", str(tmp_path))
        capsys.readouterr()
        # No --device: with a confidential client it is the only way.
        running = asyncio.create_task(asyncio.to_thread(main, ["login", *where]))
        printed = ""

        async def told_a_code() -> bool:
            nonlocal printed
            printed += capsys.readouterr().out
            return "enter the code" in printed

        await eventually(told_a_code)
        user_code = printed.split("enter the code ")[1].split()[0]
        assert f"{device.issuer}/device" in printed
        device.approve(user_code, "otto")
        assert await asyncio.wait_for(running, 60) == 0
        assert f"signed in to {gateway.base_url} as" in printed + capsys.readouterr().out
        before = kept(tmp_path)[gateway.base_url]
        assert (before["via_gateway"], before["bearer"], before["token_endpoint"]) == (
            True,
            "id_token",
            "",
        )
        assert before["refresh_token"]

        # 40-second tokens are within the refresh margin: the next command refreshes
        # through the gateway, which holds the secret.
        code, out, err = await run(capsys, "tokens", "whoami", *where, "--json")
        assert code == 0, err
        assert (json.loads(out)["id"], json.loads(out)["scopes"]) == ("oidc:otto", ["write"])
        after = kept(tmp_path)[gateway.base_url]
        assert after["token"] != before["token"]
        assert login._claims(after["token"])["sub"] == "otto"

        # The provider does not let the secretless client start a device sign-in itself.
        refused = httpx.post(
            f"{device.issuer}/oauth2/device",
            data={"client_id": "aether-private", "scope": "openid"},
        )
        assert refused.status_code == 401
    finally:
        device.stop()


async def test_a_confidential_client_without_a_device_grant_says_so(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    plain = Provider(USERS)
    try:
        plain.register_confidential_client("aether-private", "the-secret")
        gateway = await make_gateway(
            oidc=settings_for(plain, client_id="aether-private", client_secret="the-secret")
        )
        code, _, err = await run(
            capsys, "login", "--url", gateway.base_url, "--home", str(tmp_path)
        )
        assert code == 1
        assert one_line_error(err), err
        assert "does not offer the device authorization grant" in err
        assert "aether login --token" in err
        async with gateway.client(token=None) as anonymous:
            response = await anonymous.post("/auth/oidc/device")
        assert response.status_code == 401
        assert "does not offer the device authorization grant" in response.json()["error"]
    finally:
        plain.stop()


async def test_a_sign_in_about_to_expire_is_refreshed_before_a_command(
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # Tokens that live 40 seconds: within the CLI's refresh margin from the start.
    short = Provider(USERS, refresh_tokens=True, token_max_age=timedelta(seconds=40))
    try:
        gateway = await make_gateway(oidc=settings_for(short))
        use_browser(monkeypatch, "otto")
        where = ("--url", gateway.base_url, "--home", str(tmp_path))
        code, _, err = await run(capsys, "login", *where)
        assert code == 0, err
        before = kept(tmp_path)[gateway.base_url]

        code, out, err = await run(capsys, "tokens", "whoami", *where, "--json")
        assert code == 0, err
        assert json.loads(out)["id"] == "oidc:otto"
        after = kept(tmp_path)[gateway.base_url]
        assert after["token"] != before["token"]  # a new ID token, from the refresh
        assert login._claims(after["token"])["sub"] == "otto"
        assert after["refresh_token"]
    finally:
        short.stop()


async def test_an_expired_sign_in_without_a_refresh_token_asks_for_a_new_login(
    gateway_server: GatewayServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    login.save(
        tmp_path,
        gateway_server.base_url,
        login.Session(
            kind="oidc", token="a.b.c", expires_at=int(time.time()) - 5, bearer="id_token"
        ),
    )
    code, _, err = await run(
        capsys, "tokens", "whoami", "--url", gateway_server.base_url, "--home", str(tmp_path)
    )
    assert code == 1
    assert "expired" in err and "run `aether login` again" in err
    assert one_line_error(err)


async def test_a_pasted_api_token_is_checked_kept_and_used(
    gateway_server: GatewayServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    where = ("--url", gateway_server.base_url, "--home", str(tmp_path))
    code, _, err = await run(capsys, "login", *where, "--token", "aet_not-a-real-token-0000")
    assert code == 1 and "refused the token (401" in err
    assert not (tmp_path / login.CREDENTIALS_FILE).exists()

    code, out, err = await run(capsys, "login", *where, "--token", ADMIN_TOKEN)
    assert code == 0, err
    assert "signed in to" in out
    assert kept(tmp_path)[gateway_server.base_url]["kind"] == "token"
    code, out, err = await run(capsys, "tokens", "whoami", *where, "--json")
    assert code == 0, err
    assert "admin" in json.loads(out)["scopes"]


async def test_login_says_plainly_what_it_cannot_do(
    provider: Provider,
    gateway_server: GatewayServer,
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # A gateway without OIDC.
    code, _, err = await run(capsys, "login", "--url", gateway_server.base_url)
    assert code == 1 and "has no OIDC sign-in configured" in err and "--token" in err
    gateway = await make_gateway(oidc=settings_for(provider))
    where = ("--url", gateway.base_url, "--home", str(tmp_path))
    # This provider does not offer the device authorization grant.
    code, _, err = await run(capsys, "login", *where, "--device")
    assert code == 1 and "does not offer the device authorization grant" in err
    # An account the provider knows but with no Aether role.
    use_browser(monkeypatch, "nobody")
    code, _, err = await run(capsys, "login", *where)
    assert code == 1 and "refused you: the OIDC token grants no Aether scope" in err
    assert one_line_error(err)
    assert not (tmp_path / login.CREDENTIALS_FILE).exists()


async def test_an_answer_with_another_sign_ins_state_is_refused(
    provider: Provider,
    make_gateway: Callable[..., Awaitable[GatewayServer]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    gateway = await make_gateway(oidc=settings_for(provider))
    use_browser(monkeypatch, "ada", forge_state=True)
    where = ("--url", gateway.base_url, "--home", str(tmp_path))
    code, _, err = await run(capsys, "login", *where)
    assert code == 1 and "not for this sign-in (state differs)" in err
    assert not (tmp_path / login.CREDENTIALS_FILE).exists()
