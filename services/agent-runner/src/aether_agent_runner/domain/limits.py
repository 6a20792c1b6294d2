"""When a limit ends a task."""

from __future__ import annotations

from dataclasses import dataclass

from aether_events import Usage, known_cost


@dataclass(frozen=True)
class Limits:
    """Per-task limits; ``max_cost_usd`` ``None`` means no cost limit."""

    max_turns: int = 40
    max_tokens: int = 2_000_000
    max_seconds: float = 1800.0
    max_cost_usd: float | None = None


def limit_reached(limits: Limits, turns: int, usage: Usage, elapsed: float) -> str | None:
    """The limit that forbids another model call, said plainly, or ``None``.

    The cost counted is the known one (``aether_events.usage``): a call of unknown price
    adds nothing to it, and the token limit still bounds such calls.
    """
    if turns >= limits.max_turns:
        return f"turn limit reached: {turns} model calls of {limits.max_turns} allowed"
    tokens = usage.total_tokens
    if tokens >= limits.max_tokens:
        return f"token limit reached: {tokens:,} tokens of {limits.max_tokens:,} allowed"
    if limits.max_cost_usd is not None and known_cost(usage) >= limits.max_cost_usd:
        spent = known_cost(usage)
        return f"cost limit reached: ${spent:.4f} spent of ${limits.max_cost_usd:.4f} allowed"
    if elapsed >= limits.max_seconds:
        return wall_time_reason(limits, elapsed)
    return None


def wall_time_reason(limits: Limits, elapsed: float) -> str:
    return f"wall-time limit reached: {elapsed:.1f} s of {limits.max_seconds:g} s allowed"


def reservation_refused(limits: Limits, spent: Usage, held: Usage, wanted: Usage) -> str | None:
    """Why a model call that may spend up to ``wanted`` (its worst case) may not start, or
    ``None`` when it fits: ``spent`` is what settled calls spent, ``held`` what the calls in
    flight hold (each the larger of its own worst case and what it has spent so far).
    Together they may reach a limit, never pass it; an unknown cost adds nothing, as in
    ``limit_reached``."""
    tokens = spent.total_tokens + held.total_tokens
    if tokens + wanted.total_tokens > limits.max_tokens:
        left = max(limits.max_tokens - tokens, 0)
        return (
            f"token limit: a call of up to {wanted.total_tokens:,} tokens does not fit in the "
            f"{left:,} of {limits.max_tokens:,} left"
        )
    cap = limits.max_cost_usd
    cost = known_cost(spent) + known_cost(held)
    if cap is not None and cost + known_cost(wanted) > cap:
        money = max(cap - cost, 0.0)
        return (
            f"cost limit: a call of up to ${known_cost(wanted):.4f} does not fit in the "
            f"${money:.4f} of ${cap:.4f} left"
        )
    return None


def limit_passed(limits: Limits, spending: Usage) -> str | None:
    """The token or cost limit ``spending`` (settled calls and those in flight, as far as
    their replies have told) has gone past, or ``None``."""
    tokens = spending.total_tokens
    if tokens > limits.max_tokens:
        return f"token limit reached: {tokens:,} tokens of {limits.max_tokens:,} allowed"
    cap = limits.max_cost_usd
    if cap is not None and known_cost(spending) > cap:
        return f"cost limit reached: ${known_cost(spending):.4f} spent of ${cap:.4f} allowed"
    return None
