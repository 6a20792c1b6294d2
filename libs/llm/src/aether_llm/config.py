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

import msgspec

from aether_events import Tier

OFFLINE_MODEL = "aether-offline"

DEFAULT_TIERS: dict[str, str] = {
    "small": "claude-haiku-5-5",
    "standard": "claude-sonnet-5-5",
    "complex": "claude-opus-5-5",
}


class LLMSettings(msgspec.Struct, frozen=True, kw_only=True):
    api_key: str | None = None
    base_url: str | None = None
    tiers: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_TIERS))
    max_retries: int = 4
    timeout_seconds: float = 120.0
    # Said outright (AETHER_MODEL_OFFLINE) where the key is not given; None: by the key.
    offline_mode: bool | None = None

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
    def from_env(cls) -> LLMSettings:
        tiers = dict(DEFAULT_TIERS)
        for tier in tiers:
            tiers[tier] = os.environ.get(f"AETHER_MODEL_{tier.upper()}", tiers[tier])
        return cls(
            api_key=os.environ.get("ANTHROPIC_API_KEY") or None,
            base_url=os.environ.get("ANTHROPIC_BASE_URL") or None,
            tiers=tiers,
            max_retries=int(os.environ.get("AETHER_MODEL_MAX_RETRIES", "4")),
            timeout_seconds=float(os.environ.get("AETHER_MODEL_TIMEOUT_SECONDS", "120")),
            offline_mode=_flag(os.environ.get("AETHER_MODEL_OFFLINE", "")),
        )


def _flag(value: str) -> bool | None:
    """``1``/``true`` or ``0``/``false``; anything else (empty): not said."""
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes"}:
        return True
    if lowered in {"0", "false", "no"}:
        return False
    return None
