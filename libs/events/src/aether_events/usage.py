"""Token usage and its cost: the value events carry, and the one way to add it up.

The rule, everywhere (the scheduler's budgets, the gateway's read model, the agent's
limits, the command line): **a sum adds the token counts and the costs that are known,
and says whether every part's cost was known.** A model missing from the price table has
no cost (``cost_usd`` is ``None``); it does not make the spending we *do* know vanish, and
it does not pass for free either: the sum's ``cost_complete`` turns false, so what is
shown is a lower bound ("$1.2000+"), and a budget still counts every known dollar.

``cost_usd`` is ``None`` only while no part had a known cost. ``Usage()`` (no tokens, no
cost) is the empty default of events that may carry none; a sum starts from ``ZERO_USAGE``.
"""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts of one or more model calls, and their cost where the price is known.

    ``cost_complete`` is false when the value is a sum one of whose parts had no known
    cost: ``cost_usd`` is then the sum of the known parts (added in v1.1; older events
    decode with the default, and their ``cost_usd`` of ``None`` still says "unknown").
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float | None = None
    cost_complete: bool = True

    @property
    def cost_known(self) -> bool:
        """Whether ``cost_usd`` is the whole cost (not unknown, not a lower bound)."""
        return self.cost_usd is not None and self.cost_complete

    @property
    def total_tokens(self) -> int:
        """Every token billed: input, output, cache writes and cache reads."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def plus(self, other: Usage) -> Usage:
        """The sum of two usages (see the module's rule)."""
        cost, complete = add_cost(self.cost_usd, self.cost_known, other)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=(
                self.cache_creation_input_tokens + other.cache_creation_input_tokens
            ),
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            cost_usd=cost,
            cost_complete=complete,
        )


# The start of a sum: nothing spent, and all of it known.
ZERO_USAGE = Usage(cost_usd=0.0)


def add_cost(total: float | None, complete: bool, part: Usage) -> tuple[float | None, bool]:
    """A running cost (the known sum, and whether it is whole) after adding ``part``.

    For projections that keep the two as columns rather than as a ``Usage``.
    """
    if part.cost_usd is not None:
        total = (total or 0.0) + part.cost_usd
    return total, complete and part.cost_known


def known_cost(usage: Usage) -> float:
    """What ``usage`` is known to have cost: the amount a budget counts."""
    return usage.cost_usd or 0.0


def total(usages: list[Usage]) -> Usage:
    """The sum of ``usages``, from ``ZERO_USAGE``."""
    result = ZERO_USAGE
    for usage in usages:
        result = result.plus(usage)
    return result
