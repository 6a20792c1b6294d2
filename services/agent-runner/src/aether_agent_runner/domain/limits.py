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
