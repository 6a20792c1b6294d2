"""A message on an attempt's subject larger than an attempt's credential may publish is
terminated unread by every consumer (the server applies only its own largest message to
a callout's user), while a service's message of the same size on a mission's subject is
handled, and the consumer goes on to the next."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY

from aether_events import (
    ALL_MISSION_EVENTS,
    ATTEMPT_MAX_PAYLOAD,
    MISSIONS_STREAM,
    AgentFailed,
    Event,
    MissionRequested,
    derived_id,
    encode,
    ensure_streams,
    is_attempt_subject,
    mission_subject,
    subject_for,
)
from aether_events.replay import replay
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service


def meta(mission: str, name: str) -> dict[str, object]:
    return {
        "event_id": derived_id(mission, name),
        "mission_id": mission,
        "occurred_at": datetime.now(UTC),
        "correlation_id": derived_id(mission, "requested"),
    }


def failure(mission: str, reason: str) -> AgentFailed:
    return AgentFailed(
        **meta(mission, f"failed-{len(reason)}"),  # type: ignore[arg-type]
        task_id="t1",
        attempt=1,
        reason=reason,
        retryable=True,
    )


def poison(service: str) -> float:
    return REGISTRY.get_sample_value("aether_poison_messages_total", {"service": service}) or 0.0


def test_an_attempts_subject_has_six_tokens_and_a_missions_four() -> None:
    assert is_attempt_subject(subject_for(failure("m-1", "x")))
    request = MissionRequested(**meta("m-1", "requested"), repository="/r", requirement="x")  # type: ignore[arg-type]
    assert not is_attempt_subject(subject_for(request))


async def test_a_message_larger_than_an_attempt_may_send_is_terminated_on_its_subject_only(
    nc: NatsClient, nats_url: str
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    name = "attempt-sizes"
    handled: list[Event] = []
    seen = asyncio.Event()

    async def handle(event: Event, delivery: Delivery) -> None:
        handled.append(event)
        if isinstance(event, AgentFailed) and event.reason == "small":
            seen.set()

    svc = Service(name=name, settings=RuntimeSettings(nats_url=nats_url, port=0))
    svc.consume(ConsumerSpec(durable=name, subject=ALL_MISSION_EVENTS, handler=handle))
    await svc.start()
    try:
        before = poison(name)
        # Past the attempt's largest message, on its attempt's subject: an attempt's flood.
        flood = failure("m-sizes", "x" * (ATTEMPT_MAX_PAYLOAD + 1))
        await js.publish(subject_for(flood), encode(flood))
        # As large, on a mission's own subject (a service's, e.g. a long requirement).
        long = MissionRequested(
            **meta("m-sizes", "requested"),  # type: ignore[arg-type]
            repository="/r",
            requirement="y" * (ATTEMPT_MAX_PAYLOAD + 1),
        )
        await js.publish(subject_for(long), encode(long))
        # Within the bound, on the attempt's subject.
        small = failure("m-sizes", "small")
        await js.publish(subject_for(small), encode(small))
        await asyncio.wait_for(seen.wait(), 30)
        assert [type(e).__name__ for e in handled] == ["MissionRequested", "AgentFailed"]
        assert poison(name) == before + 1
        # A projection rebuilt from the stream skips it too: live and replay agree.
        folded, _ = await replay(
            js,
            MISSIONS_STREAM,
            mission_subject("m-sizes"),
            [],
            lambda seen, event, seq: [*seen, type(event).__name__],
        )
        assert folded == ["MissionRequested", "AgentFailed"]
    finally:
        await svc.stop()
