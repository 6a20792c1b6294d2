"""What a task is expected to cost before it runs: the one rule for it.

The scheduler reserves this much of a mission's budget when it makes a task ready; the
gateway shows it on every planned task and the command line at plan approval. A task's
estimate comes from its tier: ``AETHER_ESTIMATE_USD_<TIER>`` when set, else the default
below, and nothing for a tier whose model is free (the offline model; the caller says
which tiers are free, from the price table or the plan's own ``offline`` flag). A tier
the table does not know (a plan from a newer planner) is estimated as the dearest known
tier, so a reservation errs on the side of the budget.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import msgspec

# What a task of each tier is expected to cost before it runs, unless configured.
DEFAULT_ESTIMATES_USD: dict[str, float] = {"small": 0.05, "standard": 0.40, "complex": 1.50}


class PlanEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """The expected cost of one plan version: per task and in all (USD)."""

    version: int
    tasks: dict[str, float]
    total_usd: float


def tier_estimates(
    free: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> dict[str, float]:
    """The estimate per tier: the configured (``env``, default the process environment)
    or default figure, ``0`` for the ``free`` tiers."""
    env = os.environ if env is None else env
    free = set(free)
    estimates: dict[str, float] = {}
    for tier, default in DEFAULT_ESTIMATES_USD.items():
        raw = env.get(f"AETHER_ESTIMATE_USD_{tier.upper()}", "").strip()
        try:
            estimate = float(raw) if raw else default
        except ValueError:
            estimate = -1.0
        if not estimate >= 0:  # also NaN
            raise ValueError(
                f"AETHER_ESTIMATE_USD_{tier.upper()}={raw!r} is not valid: "
                "expected a cost in USD >= 0"
            )
        estimates[tier] = 0.0 if tier in free else estimate
    return estimates


def estimate_for(tier: str, estimates: Mapping[str, float]) -> float:
    """One task's estimate; a tier not in ``estimates`` costs as the dearest one."""
    if tier in estimates:
        return estimates[tier]
    return max(estimates.values(), default=0.0)


def plan_estimate(
    version: int, tiers: Iterable[tuple[str, str]], estimates: Mapping[str, float]
) -> PlanEstimate:
    """The estimate of a plan whose tasks are ``(task id, tier)`` pairs."""
    tasks = {task_id: estimate_for(tier, estimates) for task_id, tier in tiers}
    return PlanEstimate(version=version, tasks=tasks, total_usd=round(sum(tasks.values()), 6))
