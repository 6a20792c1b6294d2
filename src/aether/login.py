"""``aether login`` and ``aether logout``: a sign-in the CLI keeps for later commands.

With OIDC the CLI signs in at the identity provider the gateway names (``GET
/auth/oidc``): the authorization-code flow with PKCE and a loopback redirect (RFC 8252: a
one-shot listener on 127.0.0.1 at a random port), or the device authorization grant
(RFC 8628) with ``--device`` when the provider offers it. When the gateway's client is
confidential (its secret is the gateway's alone), the device grant runs through the
gateway instead (``/auth/oidc/device``), and so do refreshes: the CLI never holds the
secret. ``--token`` keeps a pasted API token instead. Either way the gateway is asked
who the token is before it is kept.

Sessions live in ``<home>/credentials.json`` (readable by its owner only), one per
gateway URL. An OIDC session whose token is about to expire is refreshed with its
refresh token, when the provider gave one, before a command uses it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
import urllib.parse
import webbrowser
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx

from aether.credentials import write_private
from aether_runtime import tls

CREDENTIALS_FILE = "credentials.json"
# A token with less than this left is refreshed first: the gateway's clock may be ahead.
REFRESH_MARGIN_SECONDS = 60
CALLBACK_PATH = "/callback"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_HTTP_TIMEOUT = 15.0


class LoginError(Exception):
    """A sign-in failed or a kept one cannot be used; the message says what to do."""


@dataclass
class Session:
    """One gateway's kept sign-in."""

    kind: str  # "oidc" or "token"
    token: str
    name: str = ""
    expires_at: int = 0  # 0: unknown (an API token: the gateway knows)
    refresh_token: str = ""
    token_endpoint: str = ""
    client_id: str = ""
    # Which of the provider's tokens the gateway takes: "id_token" or "access_token".
    bearer: str = ""
    # Refreshed through the gateway (a confidential client), not at the token endpoint.
    via_gateway: bool = False


# --- the credentials file ----------------------------------------------------------------


def credentials_path(home: Path) -> Path:
    return home / CREDENTIALS_FILE


def _key(url: str) -> str:
    return url.rstrip("/")


def _load_all(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(credentials_path(home).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise LoginError(f"cannot read {credentials_path(home)}: {error}") from None
    sessions = data.get("sessions") if isinstance(data, dict) else None
    return sessions if isinstance(sessions, dict) else {}


def _save_all(home: Path, sessions: dict[str, Any]) -> None:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps({"sessions": sessions}, indent=2, sort_keys=True) + "\n"
    write_private(credentials_path(home), text)


def stored(home: Path, url: str) -> Session | None:
    """The session kept for the gateway at ``url``, if any."""
    raw = _load_all(home).get(_key(url))
    if not isinstance(raw, dict):
        return None
    try:
        return Session(**raw)
    except TypeError:
        return None


def save(home: Path, url: str, session: Session) -> None:
    sessions = _load_all(home)
    sessions[_key(url)] = asdict(session)
    _save_all(home, sessions)


def forget(home: Path, url: str) -> bool:
    """Remove the gateway's session; whether there was one."""
    sessions = _load_all(home)
    if sessions.pop(_key(url), None) is None:
        return False
    _save_all(home, sessions)
    return True


def usable_token(home: Path, url: str, now: float | None = None) -> str | None:
    """The kept token for ``url``, refreshed first when it is about to expire and a refresh
    token allows it; None when nothing is kept."""
    session = stored(home, url)
    if session is None:
        return None
    moment = time.time() if now is None else now
    if session.kind != "oidc" or not session.expires_at:
        return session.token
    if session.expires_at - moment > REFRESH_MARGIN_SECONDS:
        return session.token
    if not session.refresh_token:
        if session.expires_at <= moment:
            when = time.strftime("%H:%M:%S", time.localtime(session.expires_at))
            raise LoginError(
                f"the sign-in to {url} expired at {when} and the provider gave no refresh "
                "token: run `aether login` again"
            )
        return session.token
    refreshed = _refresh_via_gateway(url, session) if session.via_gateway else _refresh(session)
    save(home, url, refreshed)
    return refreshed.token


def _refresh(session: Session) -> Session:
    answer = _token_request(
        session.token_endpoint,
        {
            "grant_type": "refresh_token",
            "refresh_token": session.refresh_token,
            "client_id": session.client_id,
        },
        "refreshing the sign-in",
    )
    token = answer.get(session.bearer)
    if not isinstance(token, str) or not token:
        raise LoginError(
            f"the provider's refresh gave no new {session.bearer.replace('_', ' ')}: "
            "run `aether login` again"
        )
    return Session(
        kind="oidc",
        token=token,
        name=session.name,
        expires_at=_expiry(token, answer),
        refresh_token=str(answer.get("refresh_token") or session.refresh_token),
        token_endpoint=session.token_endpoint,
        client_id=session.client_id,
        bearer=session.bearer,
    )


def _refresh_via_gateway(url: str, session: Session) -> Session:
    status, body = _gateway_post(
        f"{_key(url)}/auth/oidc/refresh", {"refresh_token": session.refresh_token}
    )
    if status != 200 or not isinstance(body.get("token"), str):
        raise LoginError(
            f"refreshing the sign-in: the gateway refused ({status}: {_refusal(body)}): "
            "run `aether login` again"
        )
    return Session(
        kind="oidc",
        token=str(body["token"]),
        name=session.name,
        expires_at=int(body.get("expires_at") or 0),
        refresh_token=str(body.get("refresh_token") or session.refresh_token),
        client_id=session.client_id,
        bearer="id_token",
        via_gateway=True,
    )


# --- talking to the gateway and the provider ----------------------------------------------


def _gateway_post(url: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """One of the gateway's open sign-in routes: its status and JSON object."""
    try:
        response = httpx.post(url, json=body, timeout=_HTTP_TIMEOUT, verify=tls.for_url(url))
    except httpx.HTTPError as error:
        raise LoginError(f"the gateway at {url} cannot be reached: {error}") from None
    try:
        found = response.json()
    except ValueError:
        found = {}
    return response.status_code, found if isinstance(found, dict) else {}


def _whoami(url: str, token: str) -> tuple[int, dict[str, Any]]:
    whoami = f"{_key(url)}/auth/whoami"
    response = httpx.get(
        whoami,
        headers={"authorization": f"Bearer {token}"},
        timeout=_HTTP_TIMEOUT,
        verify=tls.for_url(whoami),
    )
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body if isinstance(body, dict) else {}


def _refusal(body: dict[str, Any]) -> str:
    for key in ("error", "detail"):
        if isinstance(body.get(key), str) and body[key]:
            return str(body[key])
    return "no reason given"


def _get_json(url: str, what: str) -> dict[str, Any]:
    try:
        response = httpx.get(url, timeout=_HTTP_TIMEOUT, verify=tls.for_url(url))
        response.raise_for_status()
        found = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise LoginError(f"{what} failed at {url}: {error}") from None
    if not isinstance(found, dict):
        raise LoginError(f"{what} at {url} did not answer a JSON object")
    return found


def _token_request(endpoint: str, form: dict[str, str], what: str) -> dict[str, Any]:
    if not endpoint:
        raise LoginError(f"{what}: the provider has no token endpoint")
    try:
        response = httpx.post(
            endpoint, data=form, timeout=_HTTP_TIMEOUT, verify=tls.for_url(endpoint)
        )
        answer = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise LoginError(f"{what} failed at {endpoint}: {error}") from None
    if not isinstance(answer, dict):
        raise LoginError(f"{what}: the provider did not answer a JSON object")
    if response.status_code != 200:
        reason = answer.get("error_description") or answer.get("error") or response.status_code
        raise LoginError(f"{what}: the provider refused: {reason}")
    return answer


def _claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified: the gateway checks the signature; the CLI only reads
    the expiry and the nonce of a token it got straight from the token endpoint."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        found = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _expiry(token: str, answer: dict[str, Any]) -> int:
    exp = _claims(token).get("exp")
    if isinstance(exp, int):
        return exp
    expires_in = answer.get("expires_in")
    return int(time.time() + expires_in) if isinstance(expires_in, int) else 0


# --- the flows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """What the gateway and the provider's discovery say about signing in."""

    issuer: str
    client_id: str
    scopes: str
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str
    # The gateway holds the client's secret: sign in through it (``gateway_device``: it
    # runs the device grant), never at the token endpoint directly.
    confidential: bool = False
    gateway_device: bool = False


def discover(url: str) -> Provider:
    """The issuer and client the gateway names, and the provider's endpoints."""
    config = _get_json(f"{_key(url)}/auth/oidc", "asking the gateway how to sign in")
    if not config.get("enabled"):
        raise LoginError(
            f"the gateway at {url} has no OIDC sign-in configured: "
            "use `aether login --token <API token>`"
        )
    issuer = str(config["issuer"]).rstrip("/")
    found = _get_json(f"{issuer}/.well-known/openid-configuration", "the provider's discovery")
    return Provider(
        issuer=issuer,
        client_id=str(config["client_id"]),
        scopes=" ".join(config.get("scopes") or ["openid"]),
        authorization_endpoint=str(found.get("authorization_endpoint") or ""),
        token_endpoint=str(found.get("token_endpoint") or ""),
        device_authorization_endpoint=str(found.get("device_authorization_endpoint") or ""),
        confidential=config.get("confidential") is True,
        gateway_device=config.get("device") is True,
    )


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Callback(BaseHTTPRequestHandler):
    """Takes the provider's redirect once, and shows the browser a short page."""

    query: dict[str, str] | None = None

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path != CALLBACK_PATH:
            self.send_error(404)
            return
        query = dict(urllib.parse.parse_qsl(parsed.query))
        type(self).query = query
        if "code" in query:
            text = "Signed in to Aether. You can close this tab and go back to the terminal."
        else:
            reason = query.get("error_description") or query.get("error") or "no code"
            text = f"Sign-in failed: {reason}"
        body = f"<!doctype html><title>Aether</title><p>{html.escape(text)}</p>".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the terminal stays quiet
        return


def loopback_sign_in(
    provider: Provider,
    *,
    open_url: Callable[[str], bool],
    say: Callable[[str], None],
    timeout: float = 300.0,
) -> dict[str, Any]:
    """The authorization-code flow with PKCE through a one-shot listener on 127.0.0.1;
    the token endpoint's answer, its ID token's nonce checked."""
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(16)
    nonce = secrets.token_urlsafe(16)

    class Handler(_Callback):  # a class per sign-in: its own answer
        query = None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 1.0
    try:
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}{CALLBACK_PATH}"
        params = {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": redirect_uri,
            "scope": provider.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": _challenge(verifier),
            "code_challenge_method": "S256",
        }
        address = f"{provider.authorization_endpoint}?{urllib.parse.urlencode(params)}"
        say(
            f"Sign in at {provider.issuer} in your browser; if it did not open, go to:\n  {address}"
        )
        open_url(address)
        deadline = time.monotonic() + timeout
        while Handler.query is None:
            if time.monotonic() > deadline:
                raise LoginError(f"no answer from the browser within {timeout:.0f} seconds")
            server.handle_request()
        query: dict[str, str] = Handler.query
    finally:
        server.server_close()
    if query.get("state") != state:
        raise LoginError("the provider's answer is not for this sign-in (state differs)")
    if "code" not in query:
        reason = query.get("error_description") or query.get("error") or "no code"
        raise LoginError(f"the provider refused the sign-in: {reason}")
    answer = _token_request(
        provider.token_endpoint,
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "client_id": provider.client_id,
            "code_verifier": verifier,
        },
        "swapping the code for tokens",
    )
    id_token = answer.get("id_token")
    if isinstance(id_token, str) and _claims(id_token).get("nonce") != nonce:
        raise LoginError("the provider's ID token is not for this sign-in (nonce differs)")
    return answer


def device_sign_in(
    provider: Provider,
    *,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The device authorization grant: a code to enter on another device, then polling."""
    if not provider.device_authorization_endpoint:
        raise LoginError(
            f"the provider at {provider.issuer} does not offer the device authorization "
            "grant: run `aether login` without --device"
        )
    started = _token_request(
        provider.device_authorization_endpoint,
        {"client_id": provider.client_id, "scope": provider.scopes},
        "starting the device sign-in",
    )
    where = started.get("verification_uri_complete") or started.get("verification_uri")
    say(f"To sign in, go to {where} and enter the code {started.get('user_code')}")
    interval = float(started.get("interval") or 5)
    deadline = time.monotonic() + float(started.get("expires_in") or 600)
    form = {
        "grant_type": DEVICE_GRANT,
        "device_code": str(started.get("device_code")),
        "client_id": provider.client_id,
    }
    while time.monotonic() < deadline:
        sleep(interval)
        response = httpx.post(
            provider.token_endpoint,
            data=form,
            timeout=_HTTP_TIMEOUT,
            verify=tls.for_url(provider.token_endpoint),
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code == 200 and isinstance(answer, dict):
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        reason = (answer.get("error_description") if isinstance(answer, dict) else None) or error
        raise LoginError(f"the device sign-in failed: {reason or response.status_code}")
    raise LoginError("the device code expired before the sign-in finished")


def gateway_device_sign_in(
    url: str,
    provider: Provider,
    *,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The device grant run by the gateway as its confidential client: the CLI shows the
    code, then asks the gateway until the user approved it. The gateway's session (the
    checked ID token, its expiry, the refresh token)."""
    if not provider.gateway_device:
        raise LoginError(
            f"the gateway's OIDC client is confidential and the provider at {provider.issuer}"
            " does not offer the device authorization grant, the only sign-in a command line"
            " can do without the client's secret: use `aether login --token <API token>`"
        )
    status, started = _gateway_post(f"{_key(url)}/auth/oidc/device", None)
    if status != 200:
        raise LoginError(f"starting the device sign-in: {_refusal(started)} ({status})")
    where = started.get("verification_uri_complete") or started.get("verification_uri")
    say(f"To sign in, go to {where} and enter the code {started.get('user_code')}")
    interval = float(started.get("interval") or 5)
    deadline = time.monotonic() + float(started.get("expires_in") or 600)
    form = {"device_code": str(started.get("device_code"))}
    while time.monotonic() < deadline:
        sleep(interval)
        status, answer = _gateway_post(f"{_key(url)}/auth/oidc/device/token", form)
        if status == 200:
            return answer
        detail = answer.get("detail")
        oauth_error = detail.get("oauth_error") if isinstance(detail, dict) else None
        if status == 503 or oauth_error == "authorization_pending":
            continue  # not approved yet, or the provider is briefly away
        if oauth_error == "slow_down" or status == 429:
            interval += 5  # the provider's, or the gateway's limit on sign-in steps
            continue
        raise LoginError(f"the device sign-in failed: {_refusal(answer)} ({status})")
    raise LoginError("the device code expired before the sign-in finished")


def _open_browser(address: str) -> bool:
    try:
        return webbrowser.open(address)
    except webbrowser.Error:
        return False


def login_oidc(
    url: str,
    home: Path,
    *,
    device: bool = False,
    open_url: Callable[[str], bool] = _open_browser,
    say: Callable[[str], None] = print,
    timeout: float = 300.0,
) -> Session:
    """Sign in at the gateway's provider, check the token with the gateway, keep it."""
    provider = discover(url)
    if provider.confidential:
        return _login_via_gateway(url, home, provider, say=say)
    if device:
        answer = device_sign_in(provider, say=say)
    else:
        answer = loopback_sign_in(provider, open_url=open_url, say=say, timeout=timeout)
    # An access token the gateway takes (a JWT for its audience) is the better bearer;
    # else the ID token, issued to the client id the gateway accepts.
    refusals: list[str] = []
    for bearer in ("access_token", "id_token"):
        token = answer.get(bearer)
        if not isinstance(token, str) or not _claims(token):
            continue
        status, body = _whoami(url, token)
        if status == 200:
            session = Session(
                kind="oidc",
                token=token,
                name=str(body.get("name") or body.get("id") or ""),
                expires_at=_expiry(token, answer),
                refresh_token=str(answer.get("refresh_token") or ""),
                token_endpoint=provider.token_endpoint,
                client_id=provider.client_id,
                bearer=bearer,
            )
            save(home, url, session)
            return session
        if status == 403:
            raise LoginError(f"the gateway at {url} refused you: {_refusal(body)}")
        refusals.append(f"{bearer.replace('_', ' ')}: {_refusal(body)}")
    reasons = "; ".join(refusals) or "no JWT given"
    raise LoginError(f"the gateway at {url} took none of the provider's tokens ({reasons})")


def _login_via_gateway(
    url: str, home: Path, provider: Provider, *, say: Callable[[str], None]
) -> Session:
    answer = gateway_device_sign_in(url, provider, say=say)
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise LoginError(f"the gateway at {url} gave no token for the sign-in")
    status, body = _whoami(url, token)
    if status != 200:
        raise LoginError(f"the gateway at {url} refused the sign-in: {_refusal(body)}")
    session = Session(
        kind="oidc",
        token=token,
        name=str(body.get("name") or body.get("id") or ""),
        expires_at=int(answer.get("expires_at") or 0),
        refresh_token=str(answer.get("refresh_token") or ""),
        client_id=provider.client_id,
        bearer="id_token",
        via_gateway=True,
    )
    save(home, url, session)
    return session


def login_token(url: str, home: Path, token: str) -> Session:
    """Keep a pasted API token (or JWT) once the gateway has said whose it is."""
    status, body = _whoami(url, token)
    if status != 200:
        raise LoginError(f"the gateway at {url} refused the token ({status}: {_refusal(body)})")
    session = Session(
        kind="token", token=token, name=str(body.get("name") or body.get("id") or ""), bearer=""
    )
    save(home, url, session)
    return session


# --- the commands ------------------------------------------------------------------------


def run_login(args: Any) -> int:
    """``aether login``: OIDC by default, ``--token`` to keep an API token."""
    from aether.locate import find_url

    url, _, home, _ = find_url(args.url, args.home)
    if args.token:
        session = login_token(url, home, args.token)
    else:
        open_url = (lambda _address: False) if args.no_browser else _open_browser
        session = login_oidc(
            url,
            home,
            device=args.device,
            open_url=open_url,
            say=lambda text: print(text, flush=True),
            timeout=args.timeout,
        )
    until = (
        f", until {time.strftime('%Y-%m-%d %H:%M', time.localtime(session.expires_at))}"
        if session.expires_at
        else ""
    )
    refresh = " (refreshed when due)" if session.refresh_token else ""
    print(f"signed in to {url} as {session.name or 'an unnamed user'}{until}{refresh}")
    print(f"kept in {credentials_path(home)}")
    return 0


def run_logout(args: Any) -> int:
    """``aether logout``: forget the sign-in kept for the gateway."""
    from aether.locate import find_url

    url, _, home, _ = find_url(args.url, args.home)
    if forget(home, url):
        print(f"signed out of {url}")
    else:
        print(f"not signed in to {url} (nothing kept in {credentials_path(home)})")
    return 0
