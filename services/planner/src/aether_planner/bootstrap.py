"""The one place the planner's real parts are built from its settings."""

from __future__ import annotations

from aether_llm import make_client
from aether_planner.adapters.model import PlannerModel
from aether_planner.app import Planner, wire
from aether_planner.config import PlannerSettings


def bootstrap(settings: PlannerSettings | None = None) -> Planner:
    """The planner from ``settings`` (default: the environment), calling the model
    ``settings.llm`` names."""
    settings = settings or PlannerSettings.from_env()
    return wire(settings, PlannerModel(make_client(settings.llm)))
