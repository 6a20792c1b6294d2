"""Failed steps of a mission, read from its stored events.

A step is one service's handling of one event. ``StepFailed`` opens it (or reopens it,
when a retry failed too), ``StepRetryRequested`` marks it retrying and ``StepRecovered``
closes it. Nothing here is folded into rows: the events table holds the history, and a
mission has few failed steps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from aether_events import (
    StepFailed,
    StepRecovered,
    StepRetryRequested,
    tag_of,
)
from aether_gateway.domain.commands import Refusal

StepStatus = Literal["failed", "retrying", "recovered"]
STEP_TYPES: tuple[str, ...] = tuple(
    tag_of(cls) for cls in (StepFailed, StepRetryRequested, StepRecovered)
)

_StepEvent = StepFailed | StepRetryRequested | StepRecovered


class FailedStep(msgspec.Struct, frozen=True, kw_only=True):
    """One service that could not handle one event of the mission, and what came of it."""

    failed_event_id: str
    failed_event_type: str
    service: str
    consumer: str
    stream: str
    stream_sequence: int
    status: StepStatus
    error: str
    attempts: int
    failed_at: datetime
    # The latest StepFailed of the step (what a retry request is caused by).
    step_failed_event_id: str
    retries: int = 0


def failed_steps(payloads: list[dict[str, Any]]) -> list[FailedStep]:
    """The mission's failed steps from its step events (stored JSON, in stream order),
    in the order they first failed."""
    steps: dict[tuple[str, str, str], FailedStep] = {}
    # The failures folded, each once: several processes may record one (two runners each
    # key their records with their own secret, decision 0032, so the stream keeps both).
    recorded: set[tuple[str, str, str, str | None]] = set()
    for payload in payloads:
        event = msgspec.convert(payload, _StepEvent)
        key = (event.service, event.consumer, event.failed_event_id)
        current = steps.get(key)
        match event:
            case StepFailed() if (*key, event.retry_of) in recorded:
                continue
            case StepFailed():
                recorded.add((*key, event.retry_of))
                steps[key] = FailedStep(
                    failed_event_id=event.failed_event_id,
                    failed_event_type=event.failed_event_type
                    or (current.failed_event_type if current else ""),
                    service=event.service,
                    consumer=event.consumer,
                    stream=event.stream,
                    stream_sequence=event.stream_sequence,
                    status="failed",
                    error=event.error,
                    attempts=event.attempts + (current.attempts if current else 0),
                    failed_at=current.failed_at if current else event.occurred_at,
                    step_failed_event_id=event.event_id,
                    retries=current.retries if current else 0,
                )
            case StepRetryRequested() if current is not None:
                steps[key] = msgspec.structs.replace(
                    current, status="retrying", retries=current.retries + 1
                )
            case StepRecovered() if current is not None:
                steps[key] = msgspec.structs.replace(current, status="recovered")
    return list(steps.values())


def retry_step(
    steps: list[FailedStep],
    *,
    mission_id: str,
    correlation_id: str,
    failed_event_id: str,
    service: str | None,
    event_id: str,
    now: datetime,
    requested_by: str | None,
) -> StepRetryRequested:
    """The request to run a failed step again (refused when there is no such open step,
    or when ``service`` is needed to tell two apart)."""
    matching = [
        s
        for s in steps
        if s.failed_event_id == failed_event_id and (service is None or s.service == service)
    ]
    if not matching:
        raise Refusal("not_found", f"no failed step for event {failed_event_id!r}")
    open_steps = [s for s in matching if s.status != "recovered"]
    if not open_steps:
        raise Refusal("conflict", "the step has recovered already", status="recovered")
    if len(open_steps) > 1:
        services = ", ".join(sorted(s.service for s in open_steps))
        raise Refusal("conflict", f"several services failed on it ({services}): name one")
    step = open_steps[0]
    return StepRetryRequested(
        event_id=event_id,
        mission_id=mission_id,
        occurred_at=now,
        correlation_id=correlation_id,
        causation_id=step.step_failed_event_id,
        service=step.service,
        consumer=step.consumer,
        failed_event_id=step.failed_event_id,
        stream=step.stream,
        stream_sequence=step.stream_sequence,
        requested_by=requested_by,
    )
