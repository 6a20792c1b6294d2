"""The planner's settings, read from the environment."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from aether_events import Tier
from aether_llm import LLMSettings
from aether_runtime.settings import ENV, RuntimeSettings, ServiceSettings, setting

SERVICE_NAME = "planner"


class PlannerSettings(ServiceSettings, frozen=True, kw_only=True):
    """Which tier plans, how much of the repository it reads, how many missions at once;
    ``llm`` is the model client's."""

    DEFAULT_PORT: ClassVar[int] = 8102

    tier: Tier = setting("AETHER_PLANNER_TIER", "complex")
    context_tokens: int = setting("AETHER_PLANNER_CONTEXT_TOKENS", 24_000)
    # Missions planned at once (each mission's triggers stay in order).
    concurrency: int = setting("AETHER_PLANNER_CONCURRENCY", 32)
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)

    @classmethod
    def from_env(cls, env: ENV | None = None) -> PlannerSettings:
        return cls.load(
            env,
            runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env),
            llm=LLMSettings.from_env(env),
        )
