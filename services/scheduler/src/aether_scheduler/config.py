"""Scheduler settings from the environment."""

from __future__ import annotations

import os

from aether_llm import LLMSettings
from aether_scheduler.domain import Config


def config_from_env() -> Config:
    llm = LLMSettings.from_env()
    return Config(
        tier_models={tier: llm.model_for(tier) for tier in ("small", "standard", "complex")},
        max_attempts=int(os.environ.get("AETHER_MAX_ATTEMPTS", "3")),
        global_concurrency=int(os.environ.get("AETHER_GLOBAL_CONCURRENCY", "64")),
    )
