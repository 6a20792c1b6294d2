"""The one place the planner's real parts are built from its settings."""

from __future__ import annotations

from aether_llm.client import LazyClient
from aether_planner.adapters.model import PlannerModel
from aether_planner.app import Planner, wire
from aether_planner.config import PlannerSettings


def bootstrap(settings: PlannerSettings | None = None) -> Planner:
    """The planner from ``settings`` (default: the environment), calling the model
    ``settings.llm`` names (the client, and the anthropic SDK with it, is built at the
    first call: a planner that never plans starts without it)."""
    settings = settings or PlannerSettings.from_env()
    client = LazyClient(settings.llm)
    planner = wire(settings, PlannerModel(client))
    planner.service.on_stopped.append(client.aclose)
    return planner
