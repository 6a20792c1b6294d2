"""Building the anthropic client, and turning a response's usage into an event payload."""

from __future__ import annotations

import logging
import threading

import anthropic
from anthropic.types import Usage as ApiUsage

from aether_events import TIERS, Usage
from aether_llm.config import OFFLINE_MODEL, LLMSettings
from aether_llm.messages_server import MessagesServer
from aether_llm.metrics import metered_http_client, models_at_zero
from aether_llm.offline import start_offline_server
from aether_llm.pricing import PriceTable, load_prices

log = logging.getLogger("aether.llm")

_offline_lock = threading.Lock()
_offline_server: MessagesServer | None = None


def offline_base_url() -> str:
    """The URL of this process's offline model server, started on first use."""
    global _offline_server
    with _offline_lock:
        if _offline_server is None:
            _offline_server = start_offline_server()
            log.warning(
                "no ANTHROPIC_API_KEY: using the OFFLINE model (deterministic, not a "
                "language model; for demos and tests)",
                extra={"model": OFFLINE_MODEL, "url": _offline_server.url},
            )
        return _offline_server.url


def make_client(settings: LLMSettings) -> anthropic.AsyncAnthropic:
    """An async client for the configured endpoint, or for the offline model; its calls
    are metered (``aether_llm.metrics``)."""
    base_url: str | None
    if settings.offline:
        base_url = settings.base_url or offline_base_url()
        api_key = "offline"
    else:
        base_url = settings.base_url
        api_key = settings.api_key or ""
    models_at_zero(settings.model_for(tier) for tier in TIERS)
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=settings.max_retries,
        timeout=settings.timeout_seconds,
        http_client=metered_http_client(),
    )


def usage_of(model: str, api_usage: ApiUsage, prices: PriceTable | None = None) -> Usage:
    """The event form of a response's usage, with its cost from the price table.

    The transport's metrics (``aether_llm.metrics``) price the same reply for
    ``aether_model_cost_usd_total``, with the same ``PriceTable.cost``: they count every
    HTTP reply as it passes (a call made again after a crash too), where the event is the
    step's one record, whose id the stream keeps once.
    """
    return (prices or load_prices()).priced(
        model,
        Usage(
            input_tokens=api_usage.input_tokens,
            output_tokens=api_usage.output_tokens,
            cache_creation_input_tokens=api_usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=api_usage.cache_read_input_tokens or 0,
        ),
    )


def add_usage(a: Usage, b: Usage) -> Usage:
    """Sum two usages (``aether_events.usage``: known costs add up, with a flag saying
    whether every part's was known)."""
    return a.plus(b)
