"""The scheduler's settings, read from the environment.

The defaults are the domain's own (``Config``), so each is written once.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from aether_events.estimates import tier_estimates
from aether_llm import LLMSettings
from aether_runtime.attempt_auth import DEFAULT_TTL_SECONDS
from aether_runtime.lease import DEFAULT_LEASE_SECONDS
from aether_runtime.runner_secrets import (
    MASTER_ENV,
    MIN_MASTER_LENGTH,
    retired_shared_secret,
)
from aether_runtime.settings import (
    ENV,
    AtLeastOne,
    Env,
    NonNegative,
    Positive,
    RuntimeSettings,
    ServiceSettings,
    SettingsError,
    setting,
)
from aether_scheduler.domain import Config

SERVICE_NAME = "scheduler"
# Long enough for a runner that heard its mission's end to stop its agent and publish
# what it still holds (its last model call's usage, its stop report), short enough that
# an attempt which never reports is cut soon after.
DEFAULT_STOP_GRACE_SECONDS = 15.0


class SchedulerSettings(ServiceSettings, frozen=True, kw_only=True):
    """How the scheduler runs missions; ``llm`` says which model each tier uses."""

    DEFAULT_PORT: ClassVar[int] = 8101

    max_attempts: AtLeastOne = setting("AETHER_MAX_ATTEMPTS", Config.max_attempts)
    global_concurrency: AtLeastOne = setting("AETHER_GLOBAL_CONCURRENCY", Config.global_concurrency)
    retry_base_seconds: NonNegative = setting(
        "AETHER_RETRY_BASE_SECONDS", Config.retry_base_seconds
    )
    retry_max_seconds: NonNegative = setting("AETHER_RETRY_MAX_SECONDS", Config.retry_max_seconds)
    heartbeat_timeout_seconds: Positive = setting(
        "AETHER_HEARTBEAT_TIMEOUT_SECONDS", Config.heartbeat_timeout_seconds
    )
    daily_budget_usd: NonNegative | None = setting(
        "AETHER_DAILY_BUDGET_USD", Config.daily_budget_usd
    )
    monthly_budget_usd: NonNegative | None = setting(
        "AETHER_MONTHLY_BUDGET_USD", Config.monthly_budget_usd
    )
    # A share of a budget: above 0, at most all of it.
    warn_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = setting(
        "AETHER_BUDGET_WARN_FRACTION", Config.warn_fraction
    )
    # Granting each agent-runner attempt its own bus credential (decision 0014): the key
    # that signs them, the master the runners' own secrets are derived from (each proves
    # its name: decision 0026), and how long one lives.
    attempt_issuer_seed: str = setting("AETHER_ATTEMPT_ISSUER_SEED", "")
    runner_master_secret: Annotated[str, Env(file="AETHER_RUNNER_MASTER_SECRET_FILE")] = setting(
        "AETHER_RUNNER_MASTER_SECRET", ""
    )
    # The runners' shared secret of before: refused at start (``__post_init__``).
    retired_attempt_secret: str = setting("AETHER_ATTEMPT_SECRET", "")
    attempt_credential_seconds: Positive = setting(
        "AETHER_ATTEMPT_CREDENTIAL_SECONDS", DEFAULT_TTL_SECONDS
    )
    # How long an attempt of a mission that has ended (cancelled, failed) may go on
    # reporting, its runner told to stop: its last model call's usage and its stop report.
    attempt_stop_grace_seconds: NonNegative = setting(
        "AETHER_ATTEMPT_STOP_GRACE_SECONDS", DEFAULT_STOP_GRACE_SECONDS
    )
    # The password of its user of the NATS system account (``bus_auth.system_users``),
    # which cuts an ended attempt's connection at once; unset: it lives until it expires.
    system_nats_password: str = setting("AETHER_SYSTEM_NATS_PASSWORD", "")
    # Any number of scheduler processes may run; the one holding the lease acts, the others
    # stand by (``aether_runtime.lease``). Unrenewed, the lease lasts this long: how soon a
    # standby takes over from an active one that died (renewed every third of it).
    lease_seconds: Annotated[int, msgspec.Meta(ge=2, le=600)] = setting(
        "AETHER_LEASE_SECONDS", DEFAULT_LEASE_SECONDS
    )
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)

    def __post_init__(self) -> None:
        if self.retired_attempt_secret:
            raise SettingsError(retired_shared_secret(SERVICE_NAME))
        if self.runner_master_secret and len(self.runner_master_secret) < MIN_MASTER_LENGTH:
            raise SettingsError(
                f"{MASTER_ENV} is too short: {MIN_MASTER_LENGTH} characters or more (every "
                "runner's secret is only as hard to guess as it)"
            )

    @classmethod
    def from_env(cls, env: ENV | None = None) -> SchedulerSettings:
        # The estimates are read again with the price table (``bootstrap``); read here,
        # a bad one stops the scheduler with the rest of its settings.
        tier_estimates(env=env)
        return cls.load(
            env,
            runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env),
            llm=LLMSettings.from_env(env),
        )

    def config(self, tier_models: dict[str, str], estimate_usd: dict[str, float]) -> Config:
        """The domain's configuration, with the models and estimates of each tier."""
        return Config(
            tier_models=tier_models,
            max_attempts=self.max_attempts,
            global_concurrency=self.global_concurrency,
            estimate_usd=estimate_usd,
            retry_base_seconds=self.retry_base_seconds,
            retry_max_seconds=self.retry_max_seconds,
            heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
            daily_budget_usd=self.daily_budget_usd,
            monthly_budget_usd=self.monthly_budget_usd,
            warn_fraction=self.warn_fraction,
        )
