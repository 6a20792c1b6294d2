"""Hearing cancels ahead of the broker's ordered consumer.

The broker takes a mission's events in stream order, one at a time, so a cancel stored
behind an attempt's result (or behind another mission's slow verification) would reach it
only after that result was merged. Each broker process therefore also follows
``MissionCancelled`` alone, with an ephemeral consumer of its own
(``aether_runtime.follow``) that starts right after the replayed position, as the agent
runner's control follower does: the replay has folded every earlier cancel, so together
they know every cancelled mission, after a restart too. It costs nothing per task: one
message per cancel, on a request already waiting at the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aether_events import (
    MISSIONS_STREAM,
    MissionCancelled,
    UnknownEventType,
    decode,
    on_its_subject,
    type_subjects,
)
from aether_runtime.follow import Follower
from aether_runtime.reconnect import Reconnects

log = logging.getLogger("aether.git_broker.cancels")


async def follow_cancels(
    js: JetStreamContext,
    after_sequence: int,
    on_cancel: Callable[[MissionCancelled], None],
    reconnects: Reconnects | None = None,
) -> Follower:
    """Hand every ``MissionCancelled`` stored after ``after_sequence`` to ``on_cancel``, in
    order, until the returned follower is stopped. A message that does not decode, or
    that is not on its own subject, is skipped: it never stalls the follower."""

    async def deliver(msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            log.warning("undecodable cancel skipped", extra={"subject": msg.subject})
            return
        if not isinstance(event, MissionCancelled) or not on_its_subject(
            event, msg.subject, len(msg.data)
        ):
            return
        try:
            on_cancel(event)
        except Exception:
            log.exception("cancel not handled", extra={"subject": msg.subject})

    follower = Follower(
        js,
        MISSIONS_STREAM,
        type_subjects(MissionCancelled),
        deliver,
        after_sequence=after_sequence,
        name="git-broker-cancels",
        reconnects=reconnects,
    )
    await follower.start()
    return follower
