"""An attempt's result that carries its start and usage (``carried_by``) is handled as
those events delivered alone right before it: the same state, the same decisions with
the same ids, each event counted once however often and in whatever form it comes."""

from __future__ import annotations

import msgspec
import pytest

from aether_events import (
    AgentCompleted,
    Usage,
    UsageRecorded,
    carried_by,
)
from aether_scheduler.domain import evolve

from .scenario import Scenario, task


@pytest.mark.parametrize("usage_first", [True, False])
def test_usage_counted_for_an_attempt_is_not_counted_again(usage_first: bool) -> None:
    """In ``evolve`` itself: a repeat can come after the projection forgot the first."""
    s = Scenario()
    s.start(task("a"), budget_usd=5.0)
    usage = UsageRecorded(
        **s.meta(),
        service="agent-runner",
        model="m",
        step="agent:a:a1:turn1",
        usage=Usage(input_tokens=1, output_tokens=1, cost_usd=0.5),
        task_id="a",
        attempt=1,
    )
    result = AgentCompleted(
        **s.meta(), task_id="a", attempt=1, commit_sha="c", branch="b", carried=[usage]
    )
    # Alone and inside the result, in either order.
    alone, inside = [usage], carried_by(result)
    state = s.state
    for event in alone + inside if usage_first else inside + alone:
        state = evolve(state, event)
    mission = state.missions["m-test"]
    assert mission.spent_usd == pytest.approx(0.5)
    assert mission.tasks["a"].attempt_spent_usd == pytest.approx(0.5)
    assert sum(state.daily_spent.values()) == pytest.approx(0.5)
    # Another of the attempt's model calls counts.
    other = msgspec.structs.replace(usage, event_id="another")
    assert evolve(state, other).missions["m-test"].spent_usd == pytest.approx(1.0)
