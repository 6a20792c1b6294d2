"""Anthropic access shared by the planner and the agent runner.

Names are imported from their modules when first used: the scheduler and the gateway
need only the settings and the price table, and importing the anthropic SDK (which the
client module does) cost each of them about 1.7 s of CPU at every start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aether_llm.client import add_usage, make_client, offline_base_url, usage_of
    from aether_llm.config import DEFAULT_TIERS, OFFLINE_MODEL, LLMSettings
    from aether_llm.messages_server import (
        ApiError,
        MessagesServer,
        Reply,
        Responder,
        text_block,
        tool_use_block,
    )
    from aether_llm.pricing import ModelPrice, PriceTable, load_prices
    from aether_llm.prompt_cache import PromptCache

# Where each exported name lives.
_HOMES = {
    "add_usage": "client",
    "make_client": "client",
    "offline_base_url": "client",
    "usage_of": "client",
    "DEFAULT_TIERS": "config",
    "OFFLINE_MODEL": "config",
    "LLMSettings": "config",
    "ApiError": "messages_server",
    "MessagesServer": "messages_server",
    "Reply": "messages_server",
    "Responder": "messages_server",
    "text_block": "messages_server",
    "tool_use_block": "messages_server",
    "ModelPrice": "pricing",
    "PriceTable": "pricing",
    "load_prices": "pricing",
    "PromptCache": "prompt_cache",
}

__all__ = [
    "DEFAULT_TIERS",
    "OFFLINE_MODEL",
    "ApiError",
    "LLMSettings",
    "MessagesServer",
    "ModelPrice",
    "PriceTable",
    "PromptCache",
    "Reply",
    "Responder",
    "add_usage",
    "load_prices",
    "make_client",
    "offline_base_url",
    "text_block",
    "tool_use_block",
    "usage_of",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'aether_llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aether_llm.{home}"), name)
    globals()[name] = value  # found directly from now on
    return value
