"""The planner's settings, read from the environment."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from aether_events import Tier
from aether_llm import LLMSettings
from aether_runtime.settings import (
    ENV,
    AtLeastOne,
    HttpUrl,
    NonNegative,
    NonNegativeInt,
    RuntimeSettings,
    ServiceSettings,
    setting,
)

SERVICE_NAME = "planner"
# The settings naming the git broker's read API, as what a failure to read says.
BROKER_SETTINGS = ("AETHER_PLANNER_BROKER_URL", "AETHER_PLANNER_BROKER_TOKEN")


class PlannerSettings(ServiceSettings, frozen=True, kw_only=True):
    """Which tier plans, how much of the repository it reads and through what, how many
    missions at once; ``llm`` is the model client's."""

    DEFAULT_PORT: ClassVar[int] = 8102

    tier: Tier = setting("AETHER_PLANNER_TIER", "complex")
    context_tokens: AtLeastOne = setting("AETHER_PLANNER_CONTEXT_TOKENS", 24_000)
    # Missions planned at once (each mission's triggers stay in order).
    concurrency: NonNegativeInt = setting("AETHER_PLANNER_CONCURRENCY", 32)
    # The git broker's read API, which the planner reads a repository's files through:
    # it never opens a repository, nor needs the broker's volume. Without it, or when
    # the broker has not answered for ``broker_wait_seconds``, a plan is made from the
    # file list alone and says so.
    broker_url: HttpUrl = setting("AETHER_PLANNER_BROKER_URL", "")
    broker_token: str = setting("AETHER_PLANNER_BROKER_TOKEN", "")
    broker_wait_seconds: NonNegative = setting("AETHER_PLANNER_BROKER_WAIT_SECONDS", 30.0)
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)

    @classmethod
    def from_env(cls, env: ENV | None = None) -> PlannerSettings:
        return cls.load(
            env,
            runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env),
            llm=LLMSettings.from_env(env),
        )
