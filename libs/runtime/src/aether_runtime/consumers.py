"""The one place a service's durable consumers are described, created and kept current.

A ``ConsumerSpec`` says what a consumer delivers and how: its stream and subject, the
event types the service folds (one filter subject per type, so the server delivers only
those and the service decodes nothing else), how many messages may be in flight, its ack
wait and delivery limit, and where it starts when it is created. ``ensure_consumer``
makes the durable from a spec, or brings an existing one's settings to the spec without
moving its position. The runtime calls it for every registered consumer after the
start-up replay; a service that must create one earlier (the gateway's telemetry
consumer, which counts another stream's sequences) calls it itself with its own position.

Only the JetStream API subjects that name the consumer are used
(``$JS.API.CONSUMER.CREATE.<stream>.<durable>``), which per-service permissions allow
(see ``bus_auth``). Streams are never declared here: they are Aether's, declared once
with the configured settings (``aether_events.ensure_streams``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from aether_events import MISSIONS_STREAM, Event, type_subjects
from aether_runtime.unanswered import asked_again

if TYPE_CHECKING:
    from aether_runtime.service import Delivery

log = logging.getLogger("aether.runtime.consumers")

Handler = Callable[[Event, "Delivery"], Awaitable[None]]

# A concurrent consumer's room: the limit is shared by every process bound to it.
SHARED_ACK_PENDING = 1000
# How long the server waits for a sign of life before delivering a message again, for
# every consumer (the git broker's and the agent runners' as configured). Short, because
# a delivery lost with a crashed server, or held by a process that died, waits this long
# for another; a slow handler is not at risk, the runtime (and the runner, for an agent
# at work) sends in-progress acks for it three or four times within it.
DEFAULT_ACK_WAIT_SECONDS = 4.0


@dataclass
class ConsumerSpec:
    durable: str
    subject: str
    handler: Handler
    stream: str = MISSIONS_STREAM
    max_workers: int = 1
    ack_wait_seconds: float = DEFAULT_ACK_WAIT_SECONDS
    max_deliver: int = 20
    # Created fresh, start at new messages instead of right after the replayed position
    # (for a consumer on another stream, whose sequences the replay does not know).
    start_at_new: bool = False
    # The stream sequence of the earliest replayed event whose work is still due by the
    # rebuilt projection (None: nothing is due); a durable created fresh starts there.
    first_due: Callable[[], int | None] | None = None
    # The event types the service folds or answers, when not every type on ``subject``:
    # the server then delivers only those (one filter subject per type), instead of the
    # service decoding, handling and acknowledging every event of every mission.
    types: tuple[type[Event], ...] | None = None
    # How many handlers that called ``Delivery.release`` may still be running while the
    # consumer delivers the next message (one-at-a-time consumers only). Such a handler
    # folds in stream order, then releases for its slow part (a model call), so one
    # mission's slow step does not hold up the others.
    hand_offs: int = 0
    # Pauses between in-place retries of a handler failing for a reason about the message
    # (a bug, data it cannot take); when they are used up the step is recorded as failed
    # and the message terminated. Short: an ordered consumer delivers nothing meanwhile.
    retry_delays: tuple[float, ...] = (0.25, 1.0)
    # How long a handler failing for a reason about the world (bus, database down) is
    # retried in place before its message is handed back to the server (then counted
    # against ``max_deliver``).
    transient_patience_seconds: float = 300.0
    # The consumer's limit of unacknowledged messages, when not the one ``max_workers``
    # and ``hand_offs`` give (see ``max_ack_pending``): a durable that several processes
    # share, each bounding itself by its lanes (the agent runner's work consumer).
    ack_pending: int | None = None
    # Whether each settlement waits for the server's answer (``acks.confirm``). A
    # consumer whose handler changes nothing on a second delivery of a message it handled
    # (the gateway's read model skips what is at or below its stored position) need not:
    # a lost acknowledgement then costs a redelivery after the ack wait, settled again
    # with no work, and the answer is one message more through the server per delivery.
    confirm_settlements: bool = True
    # A one-lane consumer whose handler takes its events in runs anyway (the gateway's
    # read model): while events keep coming, the lane fetches them at most this often,
    # all that were stored meanwhile in one go, instead of each as it is stored (0: each
    # at once). The first after a quiet spell is delivered at once (``pull``).
    pace: float = 0.0

    @property
    def filter_subjects(self) -> list[str] | None:
        """The consumer's subject filters for ``types`` (None: ``subject`` alone)."""
        if self.types is None:
            return None
        return sorted({subject for cls in self.types for subject in type_subjects(cls)})

    @property
    def max_ack_pending(self) -> int:
        """One message at a time keeps an ordered consumer in order (plus the handlers
        that released theirs, ``hand_offs``). A concurrent consumer gets room for many,
        since the limit is shared by every process bound to it (several replicas each
        running ``max_workers``)."""
        if self.ack_pending is not None:
            return self.ack_pending
        return 1 + max(self.hand_offs, 0) if self.max_workers <= 1 else SHARED_ACK_PENDING


def start_sequence(last_replayed: int, first_due: int | None) -> int:
    """Where a durable consumer created now starts: at the earliest due work, else right
    after the replayed position."""
    after = last_replayed + 1
    return after if first_due is None else min(first_due, after)


def creation_config(spec: ConsumerSpec, after: int) -> ConsumerConfig:
    """The configuration a durable is created with: ``after`` is the last sequence of
    its stream that the service already folded (its replay's end)."""
    start = start_sequence(after, spec.first_due() if spec.first_due else None)
    if spec.start_at_new:
        policy, opt_start = DeliverPolicy.NEW, None
    elif start > 1:
        policy, opt_start = DeliverPolicy.BY_START_SEQUENCE, start
    else:
        policy, opt_start = DeliverPolicy.ALL, None
    filters = spec.filter_subjects
    return ConsumerConfig(
        durable_name=spec.durable,
        name=spec.durable,
        filter_subject=None if filters else spec.subject,
        filter_subjects=filters,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_seconds,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        deliver_policy=policy,
        opt_start_seq=opt_start,
    )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec, after: int) -> None:
    """Create ``spec``'s durable, starting after ``after`` (or at the first due work,
    or at new messages; see ``creation_config``), or bring an existing one to the spec
    (``align``). Another process creating it meanwhile wins: its start is kept.

    Asked again while the server does not answer (``unanswered``): on a cluster a
    consumer's group elects a leader after a server comes back, and until then its
    requests time out (a scheduler started in that moment failed its start in CI). Asking
    again is safe: a consumer our timed-out request did create is found and aligned."""
    await asked_again(lambda: _ensure_consumer(js, spec, after), f"consumer {spec.durable}")


async def _ensure_consumer(js: JetStreamContext, spec: ConsumerSpec, after: int) -> None:
    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        pass
    else:
        await align(js, spec, info.config)
        return
    config = creation_config(spec, after)
    if config.opt_start_seq is not None and config.opt_start_seq <= after:
        log.info(
            "consumer created at due work",
            extra={"durable": spec.durable, "start": config.opt_start_seq, "replayed_to": after},
        )
    try:
        await js.add_consumer(spec.stream, config=config)
    except BadRequestError as error:
        # Another replica created it meanwhile (with its own start): bind to that one.
        try:
            await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            raise error from None


async def align(js: JetStreamContext, spec: ConsumerSpec, config: ConsumerConfig) -> bool:
    """Bring an existing consumer's ack wait, delivery limit, pending limit and subject
    filters to the spec's (a consumer created by an older build keeps its own
    otherwise); nothing else of it changes, its position least of all. Says whether it
    was changed.

    The pending limit is raised where the spec needs more room, and lowered only to a
    limit the spec names (``ack_pending``): a one-lane spec bound to a durable that
    several lanes share must not take their room away."""
    wanted = spec.filter_subjects
    pending = config.max_ack_pending
    if spec.ack_pending is not None:
        room = pending == spec.ack_pending
    else:
        room = pending is None or pending < 0 or pending >= spec.max_ack_pending
    filters = sorted(config.filter_subjects or [config.filter_subject or spec.subject])
    same_filters = filters == (wanted or [spec.subject])
    if (
        config.ack_wait == spec.ack_wait_seconds
        and config.max_deliver == spec.max_deliver
        and room
        and same_filters
    ):
        return False
    log.info(
        "consumer settings updated",
        extra={
            "consumer": spec.durable,
            "ack_wait": spec.ack_wait_seconds,
            "was": config.ack_wait,
            "max_deliver": spec.max_deliver,
            "max_ack_pending": spec.max_ack_pending,
            "filters": wanted or [spec.subject],
        },
    )
    config.ack_wait = spec.ack_wait_seconds
    config.max_deliver = spec.max_deliver
    if not room:
        config.max_ack_pending = spec.max_ack_pending
    if not same_filters:
        config.filter_subject = None if wanted else spec.subject
        config.filter_subjects = wanted
    await js.add_consumer(spec.stream, config=config)
    return True
