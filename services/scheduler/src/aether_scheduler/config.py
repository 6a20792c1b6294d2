"""Scheduler settings from the environment."""

from __future__ import annotations

import os

from aether_events import TIERS
from aether_events.estimates import tier_estimates
from aether_llm import LLMSettings, load_prices
from aether_scheduler.domain import Config


def _optional_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    return float(value) if value else None


def config_from_env() -> Config:
    llm = LLMSettings.from_env()
    models: dict[str, str] = {tier: llm.model_for(tier) for tier in TIERS}
    prices = load_prices()
    # A free model (the offline one) reserves nothing.
    free = []
    for tier in TIERS:
        price = prices.price_of(models[tier])
        if price is not None and price.input == price.output == 0:
            free.append(tier)
    estimates = tier_estimates(free)
    return Config(
        tier_models=models,
        max_attempts=int(os.environ.get("AETHER_MAX_ATTEMPTS", "3")),
        global_concurrency=int(os.environ.get("AETHER_GLOBAL_CONCURRENCY", "64")),
        estimate_usd=estimates,
        retry_base_seconds=float(os.environ.get("AETHER_RETRY_BASE_SECONDS", "5")),
        retry_max_seconds=float(os.environ.get("AETHER_RETRY_MAX_SECONDS", "300")),
        heartbeat_timeout_seconds=float(os.environ.get("AETHER_HEARTBEAT_TIMEOUT_SECONDS", "120")),
        daily_budget_usd=_optional_float("AETHER_DAILY_BUDGET_USD"),
        monthly_budget_usd=_optional_float("AETHER_MONTHLY_BUDGET_USD"),
        warn_fraction=float(os.environ.get("AETHER_BUDGET_WARN_FRACTION", "0.8")),
    )
