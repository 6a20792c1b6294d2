"""The gateway's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from aether_events.estimates import DEFAULT_ESTIMATES_USD, tier_estimates
from aether_gateway.adapters.oidc import OidcSettings
from aether_runtime import RuntimeSettings

DEFAULT_PORT = 8100
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/aether"
# A bootstrap token shorter than this is refused: it is an admin's password.
MIN_ADMIN_TOKEN_LENGTH = 16


DEFAULT_MISSION_BUDGET_USD = 5.0


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    """``runtime`` carries NATS_URL, PORT and the rest every service reads."""

    runtime: RuntimeSettings
    database_url: str = DEFAULT_DATABASE_URL
    # Where clients reach this gateway (behind a proxy or an ingress it is not host:port).
    public_url: str = ""
    sse_keepalive_seconds: float = 15.0
    # Recent events kept in memory for clients that reconnect, and how far a client may
    # fall behind before it is let go (it then resumes with Last-Event-ID).
    sse_ring_size: int = 10_000
    sse_queue_size: int = 1_000
    db_pool_max_size: int = 10
    # Accepted with admin scope, so a fresh deployment has a way in (empty: none).
    admin_token: str = ""
    oidc: OidcSettings | None = None
    # Missions a caller may request per window (0: no limit).
    mission_rate_limit: int = 30
    mission_rate_window_seconds: int = 60
    # The scheduler's global budgets, shown beside usage per day and month.
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    # The budget of a mission submitted without one, so a real model is never one
    # request away from an unbounded bill (None: no default).
    default_mission_budget_usd: float | None = DEFAULT_MISSION_BUDGET_USD
    # An agent not heard from for this long is shown as gone.
    agent_stale_seconds: float = 90.0
    # How often the read model is checked against the stream, and repaired from it when
    # its consumer fell behind or skipped events (0: never; a reconnect to NATS and a
    # skipped sequence also trigger a check).
    read_model_check_seconds: float = 2.0
    # What a planned task of each tier is expected to cost (the scheduler's rule and
    # overrides, ``AETHER_ESTIMATE_USD_<TIER>``), shown on each task of a plan.
    estimate_usd: dict[str, float] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_ESTIMATES_USD)
    )
    # The git broker's read API (task diffs, default branches of any repository it can
    # read) and the read-only token it accepts; unset: those queries answer 503.
    broker_url: str = ""
    broker_token: str = ""

    def __post_init__(self) -> None:
        if self.admin_token and len(self.admin_token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"AETHER_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters"
            )

    @property
    def base_url(self) -> str:
        """The public URL without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.runtime.host}:{self.runtime.port}"

    @classmethod
    def from_env(cls) -> GatewaySettings:
        env = os.environ
        oidc = _oidc_from_env(env)
        return cls(
            runtime=RuntimeSettings.for_service(DEFAULT_PORT),
            database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            public_url=env.get("AETHER_GATEWAY_PUBLIC_URL", ""),
            sse_keepalive_seconds=float(env.get("AETHER_SSE_KEEPALIVE_SECONDS", "15")),
            sse_ring_size=int(env.get("AETHER_SSE_RING_SIZE", "10000")),
            sse_queue_size=int(env.get("AETHER_SSE_QUEUE_SIZE", "1000")),
            db_pool_max_size=int(env.get("AETHER_GATEWAY_DB_POOL_SIZE", "10")),
            admin_token=env.get("AETHER_ADMIN_TOKEN", ""),
            oidc=oidc,
            mission_rate_limit=int(env.get("AETHER_MISSION_RATE_LIMIT", "30")),
            mission_rate_window_seconds=int(env.get("AETHER_MISSION_RATE_WINDOW_SECONDS", "60")),
            daily_budget_usd=_optional_float(env.get("AETHER_DAILY_BUDGET_USD")),
            monthly_budget_usd=_optional_float(env.get("AETHER_MONTHLY_BUDGET_USD")),
            default_mission_budget_usd=_default_budget(
                env.get("AETHER_DEFAULT_MISSION_BUDGET_USD")
            ),
            agent_stale_seconds=float(env.get("AETHER_AGENT_STALE_SECONDS", "90")),
            read_model_check_seconds=float(env.get("AETHER_READ_MODEL_CHECK_SECONDS", "2")),
            estimate_usd=tier_estimates(),
            broker_url=env.get("AETHER_GATEWAY_BROKER_URL", ""),
            broker_token=env.get("AETHER_GATEWAY_BROKER_TOKEN", ""),
        )


def _oidc_from_env(env: Mapping[str, str]) -> OidcSettings | None:
    """``AETHER_OIDC_*``: OIDC is on when an issuer or a key set is named."""
    jwks_url = env.get("AETHER_OIDC_JWKS_URL", "")
    issuer = env.get("AETHER_OIDC_ISSUER", "")
    if not jwks_url and not issuer:
        return None
    defaults = OidcSettings(jwks_url=jwks_url, issuer=issuer or None)
    return OidcSettings(
        jwks_url=jwks_url,
        issuer=issuer or None,
        audience=env.get("AETHER_OIDC_AUDIENCE") or None,
        scope_claim=env.get("AETHER_OIDC_SCOPE_CLAIM", defaults.scope_claim),
        scope_prefix=env.get("AETHER_OIDC_SCOPE_PREFIX", defaults.scope_prefix),
        client_id=env.get("AETHER_OIDC_CLIENT_ID", ""),
        client_secret=_secret(env, "AETHER_OIDC_CLIENT_SECRET", "AETHER_OIDC_CLIENT_SECRET_FILE"),
        scopes=_names(env.get("AETHER_OIDC_SCOPES"), defaults.scopes),
        redirect_url=env.get("AETHER_OIDC_REDIRECT_URL", ""),
        role_claim=env.get("AETHER_OIDC_ROLE_CLAIM", defaults.role_claim),
        admin_roles=_names(env.get("AETHER_OIDC_ADMIN_ROLES"), defaults.admin_roles),
        operator_roles=_names(env.get("AETHER_OIDC_OPERATOR_ROLES"), defaults.operator_roles),
        read_only_roles=_names(env.get("AETHER_OIDC_READ_ONLY_ROLES"), defaults.read_only_roles),
        jwks_cooldown_seconds=float(
            env.get("AETHER_OIDC_JWKS_COOLDOWN_SECONDS", str(defaults.jwks_cooldown_seconds))
        ),
        leeway_seconds=float(env.get("AETHER_OIDC_LEEWAY_SECONDS", str(defaults.leeway_seconds))),
    )


def _secret(env: Mapping[str, str], name: str, file_name: str) -> str:
    """``name``, else the contents of the file ``file_name`` names (a mounted secret, kept
    out of the environment and of ``docker inspect``), else empty."""
    if env.get(name):
        return env[name]
    path = env.get(file_name)
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return ""


def _names(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list setting: names separated by commas or spaces (unset: the default; set but
    empty: none)."""
    if raw is None:
        return default
    return tuple(raw.replace(",", " ").split())


def _default_budget(raw: str | None) -> float | None:
    """``AETHER_DEFAULT_MISSION_BUDGET_USD``: unset or empty keeps the default, ``0`` or
    ``none`` means missions without a budget have none."""
    if raw is None or not raw.strip():
        return DEFAULT_MISSION_BUDGET_USD
    if raw.strip().lower() == "none":
        return None
    value = float(raw)
    return value if value > 0 else None


def _optional_float(raw: str | None) -> float | None:
    return float(raw) if raw else None
