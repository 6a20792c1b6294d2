"""Where the command line finds its stack: the home, the gateway URL and the token.

The home is ``--home``, else ``$AETHER_HOME``, else ``./.aether`` when it exists, else the
home the latest ``aether up`` ran on (recorded under ``$XDG_STATE_HOME/aether``), so the
CLI works from any directory. The URL is ``--url``, else ``$AETHER_URL``, else the one
``up`` wrote to that home, else the default. Each answer carries where it came from, for
error messages that say where the CLI looked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8100"


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aether"


def remember_home(home: Path) -> None:
    """Record ``home`` as the latest one ``up`` ran on (best effort)."""
    try:
        directory = _state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "last-home").write_text(str(home.resolve()) + "\n", encoding="utf-8")
    except OSError:
        pass


def hand_back_home(home: Path, previous: Path | None) -> None:
    """``up`` on ``home`` has stopped: when it is still the latest home and the one before
    it (``previous``) has a stack running, record that one again, so a command run from
    elsewhere finds the stack that runs, not the one just stopped."""
    from aether.supervise import running_state

    if previous is None or previous == home.resolve() or remembered_home() != home.resolve():
        return
    if running_state(previous) is not None:
        remember_home(previous)


def remembered_home() -> Path | None:
    try:
        text = (_state_dir() / "last-home").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None


def find_home(explicit: Path | None = None) -> tuple[Path, str]:
    """The stack home the CLI should use, and how it was chosen."""
    if explicit is not None:
        return explicit.resolve(), "--home"
    if os.environ.get("AETHER_HOME"):
        return Path(os.environ["AETHER_HOME"]).resolve(), "$AETHER_HOME"
    local = Path(".aether")
    if local.is_dir():
        return local.resolve(), "./.aether"
    remembered = remembered_home()
    if remembered is not None and remembered.is_dir():
        return remembered, "the latest `aether up`"
    return local.resolve(), "./.aether"


@dataclass(frozen=True)
class Target:
    """The gateway to talk to and the token to send, with where each came from."""

    url: str
    url_source: str
    token: str | None
    token_source: str
    home: Path
    # How the home was chosen (``--home``, ``$AETHER_HOME``, ``./.aether``, …).
    home_source: str


def _stack_url(home: Path) -> str | None:
    """The URL of the gateway ``aether up`` started on ``home``, if it recorded one."""
    try:
        state = json.loads((home / "stack.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = state.get("gateway_url") if isinstance(state, dict) else None
    return url if isinstance(url, str) and url else None


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _same_gateway(url: str, other: str) -> bool:
    """Whether two URLs name the same gateway (the loopback's names count as one)."""
    try:
        a, b = urlsplit(url), urlsplit(other)
        ports = (a.port, b.port)
    except ValueError:
        return False
    hosts = {(a.hostname or "").lower(), (b.hostname or "").lower()}
    return (
        a.scheme.lower() == b.scheme.lower()
        and ports[0] == ports[1]
        and (len(hosts) == 1 or hosts <= _LOOPBACK)
    )


def find_url(url: str | None, home: Path | None) -> tuple[str, str, Path, str]:
    """The gateway URL and where it came from, with the home and how it was chosen."""
    where, how = find_home(home)
    if url:
        return url, "--url", where, how
    if os.environ.get("AETHER_URL"):
        return os.environ["AETHER_URL"], "$AETHER_URL", where, how
    recorded = _stack_url(where)
    if recorded:
        return recorded, f"{where / 'stack.json'} ({how})", where, how
    return DEFAULT_URL, "the default", where, how


def find_target(url: str | None, token: str | None, home: Path | None) -> Target:
    """The gateway and the token: ``--token``, ``$AETHER_TOKEN``, the home's kept sign-in
    for that gateway (``aether login``, refreshed when due), else the stack's admin token
    when the gateway is that stack's own: sent to any other URL (``--url``,
    ``$AETHER_URL``), it would hand the stack's admin rights to whoever answers there."""
    from aether.credentials import TOKEN_FILE
    from aether.login import credentials_path, usable_token

    found_url, url_source, where, how = find_url(url, home)
    if token:
        return Target(found_url, url_source, token, "--token", where, how)
    if os.environ.get("AETHER_TOKEN"):
        return Target(
            found_url, url_source, os.environ["AETHER_TOKEN"], "$AETHER_TOKEN", where, how
        )
    signed_in = usable_token(where, found_url)
    if signed_in:
        source = f"`aether login` ({credentials_path(where)})"
        return Target(found_url, url_source, signed_in, source, where, how)
    path = where / TOKEN_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip() or None
    except OSError:
        kept = None
    stack_url = _stack_url(where)
    if kept and not (stack_url and _same_gateway(found_url, stack_url)):
        owner = f"the gateway at {stack_url}" if stack_url else "a stack that recorded no URL"
        source = f"none: {path} is the admin token of {owner}, not of {found_url}"
        return Target(found_url, url_source, None, source, where, how)
    source = f"{path} ({how})" if kept else f"none: no --token, $AETHER_TOKEN or {path}"
    return Target(found_url, url_source, kept, source, where, how)
