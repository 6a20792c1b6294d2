"""Model configuration: tiers to model ids, endpoint, retries and the offline mode.

Tier defaults are the current generation in the anthropic SDK's model list; each can be
overridden (``AETHER_MODEL_SMALL`` / ``_STANDARD`` / ``_COMPLEX``) and a mission may
override them again. Without ``ANTHROPIC_API_KEY`` every tier maps to the offline model,
which is served over the same Messages API (see ``aether_llm.offline``). A service that
chooses models but never calls one (the scheduler) is not handed the key: it is told
``AETHER_MODEL_OFFLINE=0`` or ``1`` instead.
"""

from __future__ import annotations

import os
from typing import Annotated

import msgspec

from aether_events import Tier
from aether_llm.pricing import load_prices
from aether_runtime.settings import (
    ENV,
    Env,
    EnvSettings,
    HttpUrl,
    NonNegativeInt,
    Positive,
    SettingsError,
    flag,
    setting,
)

OFFLINE_MODEL = "aether-offline"

DEFAULT_TIERS: dict[str, str] = {
    "small": "claude-haiku-5-5",
    "standard": "claude-sonnet-5-5",
    "complex": "claude-opus-5-5",
}


class LLMSettings(EnvSettings, frozen=True, kw_only=True):
    # Unset: the offline model (see ``offline``).
    api_key: str | None = setting("ANTHROPIC_API_KEY", None)
    base_url: HttpUrl | None = setting("ANTHROPIC_BASE_URL", None)
    # The model of each tier (``AETHER_MODEL_<TIER>``, read by ``from_env``).
    tiers: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_TIERS))
    max_retries: NonNegativeInt = setting("AETHER_MODEL_MAX_RETRIES", 4)
    timeout_seconds: Positive = setting("AETHER_MODEL_TIMEOUT_SECONDS", 120.0)
    # Said outright (AETHER_MODEL_OFFLINE) where the key is not given; None: by the key.
    offline_mode: Annotated[bool | None, Env(parse=flag)] = setting("AETHER_MODEL_OFFLINE", None)

    @property
    def offline(self) -> bool:
        """No key: the offline model serves every call (demos and tests only)."""
        if self.offline_mode is not None:
            return self.offline_mode
        return not self.api_key

    def model_for(self, tier: Tier, overrides: dict[str, str] | None = None) -> str:
        """The model id for a tier, after the mission's overrides."""
        if self.offline:
            return OFFLINE_MODEL
        if overrides and tier in overrides:
            return overrides[tier]
        return self.tiers[tier]

    @classmethod
    def from_env(cls, env: ENV | None = None) -> LLMSettings:
        env = os.environ if env is None else env
        tiers = dict(DEFAULT_TIERS)
        for tier in tiers:
            tiers[tier] = env.get(f"AETHER_MODEL_{tier.upper()}") or tiers[tier]
        settings = cls.load(env, tiers=tiers)
        prices = env.get("AETHER_PRICES_FILE", "").strip()
        if prices:  # read now, so that a file that cannot be used stops the service
            try:
                load_prices(prices)
            except (OSError, msgspec.MsgspecError) as error:
                reason = getattr(error, "strerror", None) or str(error)
                raise SettingsError(
                    f"AETHER_PRICES_FILE={prices!r} is not valid: {reason}"
                ) from error
        return settings
