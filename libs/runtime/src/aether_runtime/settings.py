"""Settings every service reads from the environment."""

from __future__ import annotations

import os

import msgspec


class RuntimeSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = 8000
    stream_replicas: int = 1
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, default_port: int) -> RuntimeSettings:
        return cls(
            nats_url=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
            host=os.environ.get("AETHER_HTTP_HOST", "127.0.0.1"),
            port=int(os.environ.get("PORT", default_port)),
            stream_replicas=int(os.environ.get("AETHER_STREAM_REPLICAS", "1")),
            log_level=os.environ.get("LOG_LEVEL", "INFO"),
        )
