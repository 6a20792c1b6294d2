"""What the in-memory publisher tells a handler test beyond the ``Publisher`` contract
(``tests/contracts/test_publisher.py``): which events happened."""

from __future__ import annotations

from datetime import UTC, datetime

from aether_events import AgentCompleted, AgentStarted, Usage, UsageRecorded
from aether_events.testing import InMemoryPublisher

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def meta(event_id: str) -> dict[str, object]:
    return {"event_id": event_id, "mission_id": "m-1", "occurred_at": NOW, "correlation_id": "c"}


async def test_the_events_a_result_carries_are_events_of_their_type_each_once() -> None:
    attempt = {"task_id": "t1", "attempt": 1}
    started = AgentStarted(**meta("started"), **attempt, runner_id="r", model="m")
    used = UsageRecorded(
        **meta("used"), **attempt, service="agent-runner", model="m", usage=Usage(), step="s"
    )
    result = AgentCompleted(
        **meta("done"), **attempt, commit_sha="c" * 40, branch="b", carried=[started, used]
    )
    publisher = InMemoryPublisher()
    await publisher.publish(started)  # published alone too, before the result carried it
    await publisher.publish(result)
    assert publisher.stored() == [started, result]
    assert publisher.of(AgentStarted) == [started]
    assert publisher.of(UsageRecorded) == [used]
    assert publisher.of(AgentCompleted) == [result]
