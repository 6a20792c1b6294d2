"""The planner's pure rules: plan validation and repair, and the conversation state."""

from aether_planner.domain.state import (
    FOLDED,
    MissionPlanning,
    State,
    Turn,
    evolve,
    pending,
    wants_model,
)
from aether_planner.domain.validation import (
    PLAN_TOOL_SCHEMA,
    TIERS,
    InvalidPlan,
    PlanSubmission,
    SubmittedTask,
    find_cycle,
    validate_plan,
)

__all__ = [
    "FOLDED",
    "PLAN_TOOL_SCHEMA",
    "TIERS",
    "InvalidPlan",
    "MissionPlanning",
    "PlanSubmission",
    "State",
    "SubmittedTask",
    "Turn",
    "evolve",
    "find_cycle",
    "pending",
    "validate_plan",
    "wants_model",
]
