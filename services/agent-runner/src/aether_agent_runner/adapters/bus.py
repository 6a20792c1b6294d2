"""The runner's own uses of JetStream beyond the runtime's work consumer.

* The **work consumer** is one durable pull consumer shared by every runner process,
  created by the runtime like any other (``aether_runtime.consumers``) but with its own
  ``max_ack_pending``, ``WORK_ACK_PENDING``: the runtime would size the limit by one
  process's concurrency, and that limit is shared by every process bound to the
  consumer (two runners of two agents each would work two tasks between them). Here it
  is large; each process bounds itself by how many single-message subscribers ("lanes")
  it binds to the consumer.
* The **control follower** is an ephemeral, per-process consumer (``aether_runtime.follow``)
  on the events
  that end agents: a mission cancelled, failed or completed, an attempt timed out, a task
  skipped, and results of attempts (so a runner knows what others reported). Every process
  must see every such event, which a shared durable consumer cannot do; it starts right
  after the replayed position, so nothing between the replay and the subscription is
  missed, and it is made again after a disconnect from the last sequence it saw.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aether_events import (
    MISSIONS_STREAM,
    AgentCompleted,
    AgentFailed,
    Event,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    TaskSkipped,
    TaskTimedOut,
    UnknownEventType,
    decode,
    on_its_subject,
    type_subjects,
)
from aether_runtime.follow import Follower
from aether_runtime.reconnect import Reconnects

log = logging.getLogger("aether.agent-runner.bus")

CONTROL_TYPES: tuple[type[Event], ...] = (
    MissionAnswered,
    MissionCancelled,
    MissionFailed,
    MissionCompleted,
    TaskTimedOut,
    TaskSkipped,
    AgentCompleted,
    AgentFailed,
)
# The work consumer's limit of unacknowledged messages: enough for every runner process
# of a large deployment; the real bound is each process's lanes.
WORK_ACK_PENDING = 4096
# The work consumer's delivery limit: an attempt whose runtime only some runners have is
# handed back by the others (``domain.routing``), once every few seconds at most while
# every lane that has it is busy; this lets it wait about an hour for one. At the limit
# the delivery is recorded as a failed step, which starts the attempt's liveness clock
# at the scheduler (it is then timed out and retried).
WORK_MAX_DELIVER = 720


async def follow_control_events(
    js: JetStreamContext,
    after_sequence: int,
    on_event: Callable[[Event, int], Awaitable[None]],
    reconnects: Reconnects | None = None,
) -> Follower:
    """Deliver every control event stored after ``after_sequence`` to ``on_event``, with
    its stream sequence, in order (until the returned follower is stopped); with the
    connection's ``reconnects``, asking a restarted server again at once."""

    async def deliver(msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            return
        if not on_its_subject(event, msg.subject, len(msg.data)):
            return
        try:
            await on_event(event, msg.metadata.sequence.stream)
        except Exception:
            log.exception("control event not handled", extra={"subject": msg.subject})

    follower = Follower(
        js,
        MISSIONS_STREAM,
        [subject for cls in CONTROL_TYPES for subject in type_subjects(cls)],
        deliver,
        after_sequence=after_sequence,
        name="agent-runner-control-events",
        reconnects=reconnects,
    )
    await follower.start()
    return follower
