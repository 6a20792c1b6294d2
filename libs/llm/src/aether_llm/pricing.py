"""The price table: one configurable place, naming its source.

Prices come from ``prices.json`` beside this module, or from the JSON file named by
``AETHER_PRICES_FILE`` (same shape). A model missing from the table has *no* price: its
cost is reported as unknown (``None``) and a warning is logged once, never guessed.
"""

from __future__ import annotations

import logging
import os
from functools import cache, lru_cache
from pathlib import Path

import msgspec

from aether_events import Usage

log = logging.getLogger("aether.llm.pricing")


class ModelPrice(msgspec.Struct, frozen=True):
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


class PriceTable(msgspec.Struct, frozen=True):
    source: str
    models: dict[str, ModelPrice]
    currency: str = "USD"
    unit: str = "per million tokens"

    def price_of(self, model: str) -> ModelPrice | None:
        if model in self.models:
            return self.models[model]
        # Dated snapshot ids (claude-haiku-4-5-20251001) are priced as their alias.
        base, _, suffix = model.rpartition("-")
        if suffix.isdigit() and len(suffix) == 8 and base in self.models:
            return self.models[base]
        return None

    def cost(self, model: str, usage: Usage) -> float | None:
        """The cost of ``usage`` on ``model`` in USD, or ``None`` when the price is unknown."""
        price = self.price_of(model)
        if price is None:
            _warn_unpriced(model, self.source)
            return None
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read
        )
        return round(total / 1_000_000, 8)

    def priced(self, model: str, usage: Usage) -> Usage:
        """``usage`` with its cost on ``model`` (``None`` when the price is unknown)."""
        return msgspec.structs.replace(usage, cost_usd=self.cost(model, usage))


@cache
def _warn_unpriced(model: str, source: str) -> None:
    log.warning(
        "no price for model; its cost is reported as unknown",
        extra={"model": model, "price_source": source},
    )


def default_prices_path() -> Path:
    return Path(__file__).with_name("prices.json")


@lru_cache(maxsize=4)
def load_prices(path: str | None = None) -> PriceTable:
    """Load the price table from ``path``, ``$AETHER_PRICES_FILE`` or the bundled file."""
    chosen = Path(path or os.environ.get("AETHER_PRICES_FILE") or default_prices_path())
    return msgspec.json.decode(chosen.read_bytes(), type=PriceTable)
