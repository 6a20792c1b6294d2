"""The gateway's settings, read from the environment."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from aether_events.estimates import DEFAULT_ESTIMATES_USD, tier_estimates
from aether_gateway.adapters.oidc import OidcSettings
from aether_runtime.settings import (
    ENV,
    AtLeastOne,
    Env,
    EnvSettings,
    Flag,
    HttpUrl,
    NonNegative,
    NonNegativeInt,
    Positive,
    RuntimeSettings,
    ServiceSettings,
    names,
    setting,
)

SERVICE_NAME = "gateway"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/aether"
# A bootstrap token shorter than this is refused: it is an admin's password.
MIN_ADMIN_TOKEN_LENGTH = 16


DEFAULT_MISSION_BUDGET_USD = 5.0


def mission_budget(raw: str) -> float | None:
    """``AETHER_DEFAULT_MISSION_BUDGET_USD``: ``0`` or ``none`` means missions without a
    budget have none."""
    if raw.strip().lower() == "none":
        return None
    value = float(raw)
    if value < 0:
        raise ValueError("expected a budget in USD, 0 or none")
    return value if value > 0 else None


# A list of names separated by commas or spaces; set but empty: none.
RoleNames = Annotated[tuple[str, ...], Env(parse=names, keep_empty=True)]


class OidcEnv(EnvSettings, frozen=True, kw_only=True):
    """``AETHER_OIDC_*``: OIDC is on when an issuer or a key set is named. The defaults
    are ``OidcSettings``'s own."""

    issuer: HttpUrl = setting("AETHER_OIDC_ISSUER", "")
    jwks_url: HttpUrl = setting("AETHER_OIDC_JWKS_URL", OidcSettings.jwks_url)
    audience: str = setting("AETHER_OIDC_AUDIENCE", "")
    any_audience: Flag = setting("AETHER_OIDC_ANY_AUDIENCE", OidcSettings.any_audience)
    client_id: str = setting("AETHER_OIDC_CLIENT_ID", OidcSettings.client_id)
    # A mounted secret may hold it instead, kept out of the environment and `docker inspect`.
    client_secret: Annotated[str, Env(file="AETHER_OIDC_CLIENT_SECRET_FILE")] = setting(
        "AETHER_OIDC_CLIENT_SECRET", OidcSettings.client_secret
    )
    scopes: RoleNames = setting("AETHER_OIDC_SCOPES", OidcSettings.scopes)
    redirect_url: HttpUrl = setting("AETHER_OIDC_REDIRECT_URL", OidcSettings.redirect_url)
    role_claim: str = setting("AETHER_OIDC_ROLE_CLAIM", OidcSettings.role_claim)
    admin_roles: RoleNames = setting("AETHER_OIDC_ADMIN_ROLES", OidcSettings.admin_roles)
    operator_roles: RoleNames = setting("AETHER_OIDC_OPERATOR_ROLES", OidcSettings.operator_roles)
    read_only_roles: RoleNames = setting(
        "AETHER_OIDC_READ_ONLY_ROLES", OidcSettings.read_only_roles
    )
    scope_claim: str = setting("AETHER_OIDC_SCOPE_CLAIM", OidcSettings.scope_claim)
    scope_prefix: str = setting("AETHER_OIDC_SCOPE_PREFIX", OidcSettings.scope_prefix)
    jwks_cooldown_seconds: NonNegative = setting(
        "AETHER_OIDC_JWKS_COOLDOWN_SECONDS", OidcSettings.jwks_cooldown_seconds
    )
    leeway_seconds: NonNegative = setting("AETHER_OIDC_LEEWAY_SECONDS", OidcSettings.leeway_seconds)
    introspection: Flag = setting("AETHER_OIDC_INTROSPECTION", OidcSettings.introspection)
    introspection_url: HttpUrl = setting(
        "AETHER_OIDC_INTROSPECTION_URL", OidcSettings.introspection_url
    )
    introspection_cache_seconds: NonNegative = setting(
        "AETHER_OIDC_INTROSPECTION_CACHE_SECONDS", OidcSettings.introspection_cache_seconds
    )
    introspection_cache_size: NonNegativeInt = setting(
        "AETHER_OIDC_INTROSPECTION_CACHE_SIZE", OidcSettings.introspection_cache_size
    )

    def settings(self) -> OidcSettings | None:
        """The OIDC settings, or ``None`` when neither an issuer nor a key set is named."""
        if not self.jwks_url and not self.issuer:
            return None
        return OidcSettings(
            jwks_url=self.jwks_url,
            issuer=self.issuer or None,
            audience=self.audience or None,
            any_audience=self.any_audience,
            scope_claim=self.scope_claim,
            scope_prefix=self.scope_prefix,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scopes=self.scopes,
            redirect_url=self.redirect_url,
            role_claim=self.role_claim,
            admin_roles=self.admin_roles,
            operator_roles=self.operator_roles,
            read_only_roles=self.read_only_roles,
            jwks_cooldown_seconds=self.jwks_cooldown_seconds,
            leeway_seconds=self.leeway_seconds,
            introspection=self.introspection,
            introspection_url=self.introspection_url,
            introspection_cache_seconds=self.introspection_cache_seconds,
            introspection_cache_size=self.introspection_cache_size,
        )


class GatewaySettings(ServiceSettings, frozen=True, kw_only=True):
    """``runtime`` carries NATS_URL, PORT and the rest every service reads."""

    DEFAULT_PORT: ClassVar[int] = 8100

    database_url: str = setting("DATABASE_URL", DEFAULT_DATABASE_URL)
    # Where clients reach this gateway (behind a proxy or an ingress it is not host:port).
    public_url: HttpUrl = setting("AETHER_GATEWAY_PUBLIC_URL", "")
    sse_keepalive_seconds: Positive = setting("AETHER_SSE_KEEPALIVE_SECONDS", 15.0)
    # How often an open event stream asks again whether its token is still good: one
    # revoked or expired meanwhile ends the stream within about this long.
    sse_reauth_seconds: Positive = setting("AETHER_SSE_REAUTH_SECONDS", 15.0)
    # Recent events kept in memory for clients that reconnect, and how far a client may
    # fall behind before it is let go (it then resumes with Last-Event-ID).
    sse_ring_size: NonNegativeInt = setting("AETHER_SSE_RING_SIZE", 10_000)
    sse_queue_size: AtLeastOne = setting("AETHER_SSE_QUEUE_SIZE", 1_000)
    db_pool_max_size: AtLeastOne = setting("AETHER_GATEWAY_DB_POOL_SIZE", 10)
    # Accepted with admin scope, so a fresh deployment has a way in (empty: none).
    admin_token: str = setting("AETHER_ADMIN_TOKEN", "")
    oidc: OidcSettings | None = None
    # Missions a caller may request per window (0: no limit).
    mission_rate_limit: NonNegativeInt = setting("AETHER_MISSION_RATE_LIMIT", 30)
    mission_rate_window_seconds: AtLeastOne = setting("AETHER_MISSION_RATE_WINDOW_SECONDS", 60)
    # Every other write request (commands, tokens, rebuilds) a caller may make per window
    # (0: no limit): each command stores an event, so one token must not flood the stream.
    command_rate_limit: NonNegativeInt = setting("AETHER_COMMAND_RATE_LIMIT", 120)
    command_rate_window_seconds: AtLeastOne = setting("AETHER_COMMAND_RATE_WINDOW_SECONDS", 60)
    # Reads (GET) a caller may make per window on each replica (0: no limit): far above
    # what the board and the CLI send, so only a runaway script meets it.
    read_rate_limit: NonNegativeInt = setting("AETHER_READ_RATE_LIMIT", 3000)
    read_rate_window_seconds: AtLeastOne = setting("AETHER_READ_RATE_WINDOW_SECONDS", 60)
    # Event streams a caller may hold open at once on each replica (0: no limit).
    stream_limit: NonNegativeInt = setting("AETHER_STREAM_LIMIT", 64)
    # The open sign-in steps (each has the gateway call the OIDC provider with its client
    # credentials) a client address may take per window on each replica (0: no limit).
    sign_in_rate_limit: NonNegativeInt = setting("AETHER_SIGN_IN_RATE_LIMIT", 120)
    sign_in_rate_window_seconds: AtLeastOne = setting("AETHER_SIGN_IN_RATE_WINDOW_SECONDS", 60)
    # The proxies whose X-Forwarded-For names a request's client (comma-separated
    # addresses or networks, "*" for any): the sign-in limit counts per client address.
    forwarded_allow_ips: str = setting("AETHER_GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1")
    # The scheduler's global budgets, shown beside usage per day and month.
    daily_budget_usd: NonNegative | None = setting("AETHER_DAILY_BUDGET_USD", None)
    monthly_budget_usd: NonNegative | None = setting("AETHER_MONTHLY_BUDGET_USD", None)
    # The budget of a mission submitted without one, so a real model is never one
    # request away from an unbounded bill (None: no default).
    default_mission_budget_usd: Annotated[float | None, Env(parse=mission_budget)] = setting(
        "AETHER_DEFAULT_MISSION_BUDGET_USD", DEFAULT_MISSION_BUDGET_USD
    )
    # The transcript entries kept of one attempt; later ones are counted as dropped. A
    # little above the runner's own cap (AETHER_AGENT_TRANSCRIPT_MAX_ENTRIES), which the
    # gateway does not trust: a runner that ignores it cannot fill the database.
    transcript_max_entries: AtLeastOne = setting("AETHER_TRANSCRIPT_MAX_ENTRIES", 25_000)
    # An agent not heard from for this long is shown as gone.
    agent_stale_seconds: Positive = setting("AETHER_AGENT_STALE_SECONDS", 90.0)
    # How often the read model is checked against the stream, and repaired from it when
    # its consumer fell behind or skipped events (0: never; a reconnect to NATS and a
    # skipped sequence also trigger a check).
    read_model_check_seconds: NonNegative = setting("AETHER_READ_MODEL_CHECK_SECONDS", 2.0)
    # What a planned task of each tier is expected to cost (the scheduler's rule and
    # overrides, ``AETHER_ESTIMATE_USD_<TIER>``), shown on each task of a plan.
    estimate_usd: dict[str, float] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_ESTIMATES_USD)
    )
    # The git broker's read API (task diffs, default branches of any repository it can
    # read) and the read-only token it accepts; unset: those queries answer 503.
    broker_url: HttpUrl = setting("AETHER_GATEWAY_BROKER_URL", "")
    broker_token: str = setting("AETHER_GATEWAY_BROKER_TOKEN", "")

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
    def from_env(cls, env: ENV | None = None) -> GatewaySettings:
        return cls.load(
            env,
            runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env),
            oidc=OidcEnv.from_env(env).settings(),
            estimate_usd=tier_estimates(env=env),
        )
