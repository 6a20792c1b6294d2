"""The planner's settings: read once, from the environment, refused with the variable named."""

from __future__ import annotations

import pytest

from aether_planner.config import PlannerSettings
from aether_runtime.settings import SettingsError


def test_defaults_without_any_variable() -> None:
    settings = PlannerSettings.from_env({})
    assert (settings.tier, settings.context_tokens, settings.concurrency) == ("complex", 24_000, 32)
    assert settings.runtime.port == 8102


def test_variables_set_the_tier_context_and_concurrency() -> None:
    settings = PlannerSettings.from_env(
        {
            "AETHER_PLANNER_TIER": "small",
            "AETHER_PLANNER_CONTEXT_TOKENS": "1000",
            "AETHER_PLANNER_CONCURRENCY": "4",
        }
    )
    assert (settings.tier, settings.context_tokens, settings.concurrency) == ("small", 1000, 4)


def test_an_unknown_tier_is_refused_with_the_tiers_it_may_be() -> None:
    with pytest.raises(
        SettingsError, match=r"AETHER_PLANNER_TIER='huge'.*small, standard or complex"
    ):
        PlannerSettings.from_env({"AETHER_PLANNER_TIER": "huge"})
