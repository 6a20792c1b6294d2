"""Where the command line finds its token, and the local stack's bootstrap admin token.

``aether up`` keeps the admin token it made in ``<home>/admin-token`` (readable by its
owner only) and reuses it on the next start, so a client configured once keeps working.
The CLI takes ``--token``, else ``$AETHER_TOKEN``, else that file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

TOKEN_FILE = "admin-token"  # noqa: S105 (a file name)
# Where ``aether up`` keeps the secret the services' event ids are keyed with (decision
# 0031), under its home's ``credentials/``.
EVENT_ID_SECRET_FILE = "event-id.secret"  # noqa: S105 (a file name)
# Where ``aether up --event-id-secret environment`` keeps the secret it replaced.
EVENT_ID_SECRET_PREVIOUS = "event-id.secret.previous"  # noqa: S105 (a file name)
EVENT_ID_SECRET_ENV = "AETHER_EVENT_ID_SECRET"  # noqa: S105 - its name, not its value
# The public id whose keyed id fingerprints an event id secret: no step derives it (a
# step's id starts from a mission id).
_FINGERPRINT_PROBE = ("aether event id key fingerprint", 1)


def default_home() -> Path:
    return Path(os.environ.get("AETHER_HOME", ".aether"))


def event_id_fingerprint(secret: str) -> str:
    """What tells two event id secrets apart and reveals nothing usable of either: the
    id the services' key of ``secret`` gives a fixed probe no step derives
    (``keyed_id(service_id_key(secret), derived_id(*probe))``). One output of a keyed
    hash gives away neither the key nor the id of any other input, so it cannot be used
    to take a service's next event id. Recorded in a backup's header and in ``aether
    up``'s ``stack.json``; a restore compares the backup's with the target's."""
    from aether_events.ids import derived_id, keyed_id, service_id_key

    return keyed_id(service_id_key(secret), derived_id(*_FINGERPRINT_PROBE))


def given_event_id_secret(env: Mapping[str, str]) -> str:
    """The operator's event id secret in ``env`` as the services read it:
    ``AETHER_EVENT_ID_SECRET``, else the text of the file ``AETHER_EVENT_ID_SECRET_FILE``
    names; empty when neither is set. Raises ``OSError`` when the file cannot be read."""
    secret = env.get(EVENT_ID_SECRET_ENV, "").strip()
    if not secret and (file := env.get(f"{EVENT_ID_SECRET_ENV}_FILE", "").strip()):
        secret = Path(file).read_text(encoding="utf-8").strip()
    return secret


def load_or_create_admin_token(home: Path) -> str:
    """The admin token kept under ``home``, made (and kept) the first time."""
    return load_or_create_secret(home / TOKEN_FILE)


def new_secret() -> str:
    """32 random bytes, URL-safe, never beginning with "-" (a value that does is taken for
    an option by command lines: ``aether --token -x…``, ``curl -H``, ``nats --password``)."""
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def load_or_create_secret(path: Path) -> str:
    """The secret kept in ``path`` (readable by its owner only), made the first time."""
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = new_secret()
    write_private(path, secret + "\n")
    return secret


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def resolve_token(explicit: str | None = None, home: Path | None = None) -> str | None:
    """The token to send: ``explicit``, ``$AETHER_TOKEN``, or the local stack's."""
    if explicit:
        return explicit
    if os.environ.get("AETHER_TOKEN"):
        return os.environ["AETHER_TOKEN"]
    path = (home or default_home()) / TOKEN_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip() or None
    return None
