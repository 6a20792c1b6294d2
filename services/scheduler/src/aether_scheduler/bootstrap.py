"""The one place the scheduler's real parts are built from its settings."""

from __future__ import annotations

from aether_events import TIERS
from aether_events.estimates import tier_estimates
from aether_llm import load_prices
from aether_scheduler.app import Scheduler, wire
from aether_scheduler.config import SchedulerSettings
from aether_scheduler.domain import Config


def bootstrap(settings: SchedulerSettings | None = None, config: Config | None = None) -> Scheduler:
    """The scheduler from ``settings`` (default: the environment); ``config`` replaces the
    domain configuration they make (tests)."""
    settings = settings or SchedulerSettings.from_env()
    return wire(settings, config or domain_config(settings))


def domain_config(settings: SchedulerSettings) -> Config:
    """The domain's configuration: each tier's model, and what a task of it is expected to
    cost (nothing for a free model, such as the offline one, from the price table)."""
    models: dict[str, str] = {tier: settings.llm.model_for(tier) for tier in TIERS}
    prices = load_prices()
    free = []
    for tier in TIERS:
        price = prices.price_of(models[tier])
        if price is not None and price.input == price.output == 0:
            free.append(tier)
    return settings.config(models, tier_estimates(free))
