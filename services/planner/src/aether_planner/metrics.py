"""The planner's own metrics (the runtime and the LLM lib export the common ones)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from aether_runtime.metrics import at_zero

PLAN_TASKS = Histogram(
    "aether_plan_tasks",
    "Tasks in each plan version produced",
    buckets=(1, 2, 3, 5, 8, 12, 20, 30, 50, 100, 200),
)
OUTCOMES = Counter(
    "aether_planner_outcomes_total",
    "What the planner answered a trigger with (plan, questions, answer, failed)",
    ["outcome"],
)
at_zero(OUTCOMES, outcome=("plan", "questions", "answer", "failed"))
