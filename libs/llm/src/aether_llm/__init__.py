"""Anthropic access shared by the planner and the agent runner."""

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
