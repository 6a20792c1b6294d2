"""Telling a consumer that waits from one that is stuck, for ``/readyz``.

A consumer is *stalled* when messages wait for it (``num_pending > 0``) while this
process runs none of its handlers, is not deliberately backing off a failed message, and
the consumer has delivered nothing new for ``stall_after`` seconds: the server is
holding its in-flight slot for a delivery nobody works on (an acknowledgement lost with
a crashed server, a client that went away with the message), or the subscription itself
is gone. A missing consumer is stalled at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import ConsumerInfo


@dataclass
class ConsumerWatch:
    """Successive readings of one consumer, and the verdict on them."""

    durable: str
    stall_after: float
    _marker: tuple[int, int] | None = None
    _since: float = 0.0

    def observe(
        self, info: ConsumerInfo | None, *, busy: bool, backing_off: bool, now: float
    ) -> str | None:
        """Take one reading at ``now`` (monotonic seconds); returns why the consumer is
        stalled, or None while it is not."""
        if info is None:
            return f"consumer {self.durable} is missing"
        delivered = info.delivered.consumer_seq if info.delivered else 0
        acked = info.ack_floor.consumer_seq if info.ack_floor else 0
        marker = (delivered or 0, acked or 0)
        pending = info.num_pending or 0
        if busy or backing_off or pending == 0 or marker != self._marker:
            self._marker = marker
            self._since = now
            return None
        idle = now - self._since
        if idle < self.stall_after:
            return None
        return (
            f"consumer {self.durable} stalled: {pending} pending, "
            f"{info.num_ack_pending or 0} unacknowledged, nothing delivered for {idle:.0f} s"
        )
