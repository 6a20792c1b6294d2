"""Settings every service reads from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec


class RuntimeSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = 8000
    stream_replicas: int = 1
    log_level: str = "INFO"
    # The service's NATS user and password (empty: connect without credentials, as to a
    # server that asks for none, such as the tests' own).
    nats_user: str = ""
    nats_password: str = ""

    @classmethod
    def from_env(cls, default_port: int) -> RuntimeSettings:
        return cls(
            nats_url=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
            host=os.environ.get("AETHER_HTTP_HOST", "127.0.0.1"),
            port=int(os.environ.get("PORT", default_port)),
            stream_replicas=int(os.environ.get("AETHER_STREAM_REPLICAS", "1")),
            log_level=os.environ.get("LOG_LEVEL", "INFO"),
            nats_user=os.environ.get("NATS_USER", ""),
            nats_password=nats_password(os.environ),
        )

    @property
    def nats_credentials(self) -> dict[str, str]:
        """The credentials to hand to ``nats.connect`` (none when no user is set)."""
        if not self.nats_user:
            return {}
        return {"user": self.nats_user, "password": self.nats_password}


def nats_password(env: Mapping[str, str]) -> str:
    """``NATS_PASSWORD``, else the first line of the file ``NATS_PASSWORD_FILE`` names (a
    mounted Secret), else empty."""
    if env.get("NATS_PASSWORD"):
        return env["NATS_PASSWORD"]
    path = env.get("NATS_PASSWORD_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return ""
