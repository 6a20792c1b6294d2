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


def find_url(url: str | None, home: Path | None) -> tuple[str, str, Path, str]:
    """The gateway URL and where it came from, with the home and how it was chosen."""
    where, how = find_home(home)
    if url:
        return url, "--url", where, how
    if os.environ.get("AETHER_URL"):
        return os.environ["AETHER_URL"], "$AETHER_URL", where, how
    try:
        state = json.loads((where / "stack.json").read_text(encoding="utf-8"))
        if state.get("gateway_url"):
            return state["gateway_url"], f"{where / 'stack.json'} ({how})", where, how
    except (OSError, ValueError):
        pass
    return DEFAULT_URL, "the default", where, how


def find_target(url: str | None, token: str | None, home: Path | None) -> Target:
    """The gateway and the token: ``--token``, ``$AETHER_TOKEN``, the home's kept sign-in
    for that gateway (``aether login``, refreshed when due), else the stack's admin token."""
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
    source = f"{path} ({how})" if kept else f"none: no --token, $AETHER_TOKEN or {path}"
    return Target(found_url, url_source, kept, source, where, how)
