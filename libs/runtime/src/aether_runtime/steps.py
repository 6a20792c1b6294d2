"""Failed steps: a handler that fails on an event at its last allowed delivery.

JetStream drops a message silently once its delivery limit is reached. Aether records
the failure instead, as a ``StepFailed`` event on the mission (its id derived from the
failed event, the service and the consumer, so however many processes notice it, it is
stored once), and terminates the message so the consumer goes on with later events. A
person sees the failed step in the mission's events and may ask for it to run again
(``StepRetryRequested``); the service then fetches the original event from the stream by
its sequence and calls the same handler once more, recording ``StepRecovered`` or a new
``StepFailed``.

The records' ids are the services' keyed ids (``step_event_id``, decision 0031). An agent
runner holds no services' key: its records are keyed with a key of its own secret instead
(``Service.step_record_key``, ``runner_secrets.step_record_key``, decision 0032), so no
attempt's credential can store one of their ids first. Two runners recording one step
then store two records; the folds that read them take a step once.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from aether_events import (
    Event,
    StepFailed,
    StepRecovered,
    StepRetryRequested,
    UnknownEventType,
    decode,
    keyed_id,
    public_step_event_id,
    step_event_id,
    step_ids,
    tag_of,
)

if TYPE_CHECKING:
    from aether_runtime.consumers import ConsumerSpec
    from aether_runtime.service import Delivery, Service

log = logging.getLogger("aether.runtime.steps")

ERROR_LIMIT = 2000
ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


class MaxDeliveries(msgspec.Struct, kw_only=True):
    """The part of JetStream's max-deliveries advisory Aether reads."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0


def advisory_subject(stream: str, durable: str) -> str:
    """Where JetStream announces that a message of ``durable`` reached its limit."""
    return f"{ADVISORY}.{stream}.{durable}"


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


def record_id(mission_id: str, step: step_ids.Step, key: bytes | None = None) -> str:
    """The id of the record of ``step``: keyed with ``key`` (a runner's step record key)
    when given, else as this process keys every step's id (``step_event_id``)."""
    if key is None:
        return step_event_id(mission_id, step)
    return keyed_id(key, public_step_event_id(mission_id, step))


def step_failed(
    event: Event,
    *,
    service: str,
    consumer: str,
    stream: str,
    sequence: int,
    error: str,
    attempts: int,
    now: datetime,
    retry: StepRetryRequested | None = None,
    key: bytes | None = None,
) -> StepFailed:
    """The record of ``service`` failing on ``event`` (on a retry when ``retry`` is set),
    its id keyed with ``key`` when given (``record_id``)."""
    step = step_ids.step_failed(
        service, consumer, event.event_id, None if retry is None else retry.event_id
    )
    return StepFailed(
        event_id=record_id(event.mission_id, step, key),
        mission_id=event.mission_id,
        occurred_at=now,
        correlation_id=event.correlation_id,
        causation_id=event.event_id if retry is None else retry.event_id,
        service=service,
        consumer=consumer,
        failed_event_id=event.event_id,
        failed_event_type=tag_of(type(event)),
        stream=stream,
        stream_sequence=sequence,
        error=error,
        attempts=attempts,
        retry_of=None if retry is None else retry.event_id,
    )


def unretriable(retry: StepRetryRequested, now: datetime, key: bytes | None = None) -> StepFailed:
    """The record of a retry that found its event gone from the stream (aged out of the
    telemetry stream, or the stream recreated)."""
    return StepFailed(
        event_id=record_id(
            retry.mission_id, step_ids.step_unretriable(retry.service, retry.event_id), key
        ),
        mission_id=retry.mission_id,
        occurred_at=now,
        correlation_id=retry.correlation_id,
        causation_id=retry.event_id,
        service=retry.service,
        consumer=retry.consumer,
        failed_event_id=retry.failed_event_id,
        failed_event_type="",
        stream=retry.stream,
        stream_sequence=retry.stream_sequence,
        error=f"{retry.stream} no longer holds the event at sequence {retry.stream_sequence}",
        attempts=0,
        retry_of=retry.event_id,
    )


def step_recovered(
    retry: StepRetryRequested, now: datetime, key: bytes | None = None
) -> StepRecovered:
    """The record of a retried step succeeding."""
    return StepRecovered(
        event_id=record_id(retry.mission_id, step_ids.step_recovered(retry.event_id), key),
        mission_id=retry.mission_id,
        occurred_at=now,
        correlation_id=retry.correlation_id,
        causation_id=retry.event_id,
        service=retry.service,
        consumer=retry.consumer,
        failed_event_id=retry.failed_event_id,
        retry_of=retry.event_id,
    )


class Steps:
    """A service's failed steps: recording them, and running one again on request."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._advisories: list[Subscription] = []

    async def record_failure(
        self, spec: ConsumerSpec, event: Event, delivery: Delivery, error: BaseException
    ) -> None:
        """Publish ``StepFailed`` for ``event``, which ``spec``'s handler failed on at the
        last delivery JetStream allows."""
        if isinstance(event, StepFailed):
            # A failure to handle the record of a failure is logged, not recorded: a
            # handler failing on everything would otherwise add records without end.
            log.error("handler failed on a StepFailed event", extra={"consumer": spec.durable})
            return
        failed = step_failed(
            event,
            service=self._service.name,
            consumer=spec.durable,
            stream=spec.stream,
            sequence=delivery.sequence,
            error=describe(error),
            attempts=delivery.num_delivered,
            now=datetime.now(UTC),
            key=self._service.step_record_key,
        )
        await self._service.publisher.publish(failed)
        log.error(
            "step failed",
            extra={"failed_event_id": event.event_id, "consumer": spec.durable},
        )

    async def on_retry_requested(self, event: Event, delivery: Delivery) -> None:
        """Handle ``StepRetryRequested`` addressed to this service: fetch the failed event
        by its stream sequence and call its consumer's handler once more."""
        if not isinstance(event, StepRetryRequested) or event.service != self._service.name:
            return
        service = self._service
        spec = service.spec_for(event.consumer, event.stream)
        if spec is None:
            log.warning("retry for a consumer not run here", extra={"consumer": event.consumer})
            return
        try:
            stored = await service.js.get_msg(event.stream, event.stream_sequence)
            original = decode(stored.data or b"")
        except (NotFoundError, UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            original = None
        if original is None or original.event_id != event.failed_event_id:
            # Retrying cannot help: say so on the mission rather than retry the request.
            log.error("retry finds its event gone", extra={"seq": event.stream_sequence})
            await service.publisher.publish(
                unretriable(event, datetime.now(UTC), service.step_record_key)
            )
            return
        from aether_runtime.service import Delivery  # the service module imports this one

        again = Delivery(
            sequence=event.stream_sequence,
            num_delivered=1,
            pending=delivery.pending,
            _message=delivery._message,
        )
        try:
            async with service.lock_for(spec):
                await spec.handler(original, again)
        except Exception as error:
            log.exception("retried step failed", extra={"failed_event_id": original.event_id})
            await service.publisher.publish(
                step_failed(
                    original,
                    service=service.name,
                    consumer=spec.durable,
                    stream=event.stream,
                    sequence=event.stream_sequence,
                    error=describe(error),
                    attempts=1,
                    now=datetime.now(UTC),
                    retry=event,
                    key=service.step_record_key,
                )
            )
            return
        await service.publisher.publish(
            step_recovered(event, datetime.now(UTC), service.step_record_key)
        )
        log.info("retried step recovered", extra={"failed_event_id": original.event_id})

    async def watch_delivery_limits(self, specs: list[ConsumerSpec]) -> None:
        """Listen for JetStream's max-deliveries advisories on the service's consumers: a
        message whose last delivery ended without any answer (the process died, or could
        not record the failure) is recorded as a failed step all the same."""
        nc = self._service.nc
        assert nc is not None
        for stream, durable in dict.fromkeys((spec.stream, spec.durable) for spec in specs):
            self._advisories.append(
                await nc.subscribe(advisory_subject(stream, durable), cb=self._on_advisory)
            )

    async def stop(self) -> None:
        for sub in self._advisories:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._advisories.clear()

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = _advisory_decoder.decode(msg.data)
            service = self._service
            if not service.acting:
                return  # a standby: the active process records it
            spec = service.spec_for(advisory.consumer, advisory.stream)
            if spec is None or service.handling(spec.durable, advisory.stream_seq):
                # Ours at work here: its handler records the failure, with its error.
                return
            stored = await service.js.get_msg(advisory.stream, advisory.stream_seq)
            event = decode(stored.data or b"")
            if isinstance(event, StepFailed):
                return  # as in record_failure: no record of a failed record
            ack = await service.publisher.publish(
                step_failed(
                    event,
                    service=service.name,
                    consumer=spec.durable,
                    stream=spec.stream,
                    sequence=advisory.stream_seq,
                    error="delivery limit reached with no answer from the handler "
                    "(the process handling it may have stopped)",
                    attempts=advisory.deliveries,
                    now=datetime.now(UTC),
                    key=service.step_record_key,
                )
            )
            if ack.duplicate:
                # Recorded here already, or by another process of the service (of the same
                # runner name, for a runner: each name keys its records apart).
                return
            log.error(
                "step failed at the delivery limit (advisory)",
                extra={"failed_event_id": event.event_id, "consumer": spec.durable},
            )
        except Exception:
            log.exception("could not record a step from a max-deliveries advisory")


_advisory_decoder = msgspec.json.Decoder(MaxDeliveries)
