"""The gateway's settings, read from the environment."""

from __future__ import annotations

import os

import msgspec

from aether_runtime import RuntimeSettings

DEFAULT_PORT = 8100
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/aether"


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    """``runtime`` carries NATS_URL, PORT and the rest every service reads."""

    runtime: RuntimeSettings
    database_url: str = DEFAULT_DATABASE_URL
    # Where clients reach this gateway (behind a proxy or an ingress it is not host:port).
    public_url: str = ""
    sse_keepalive_seconds: float = 15.0
    db_pool_max_size: int = 10

    @property
    def base_url(self) -> str:
        """The public URL without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.runtime.host}:{self.runtime.port}"

    @classmethod
    def from_env(cls) -> GatewaySettings:
        return cls(
            runtime=RuntimeSettings.from_env(DEFAULT_PORT),
            database_url=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            public_url=os.environ.get("AETHER_GATEWAY_PUBLIC_URL", ""),
            sse_keepalive_seconds=float(os.environ.get("AETHER_SSE_KEEPALIVE_SECONDS", "15")),
            db_pool_max_size=int(os.environ.get("AETHER_GATEWAY_DB_POOL_SIZE", "10")),
        )
