"""Telling a failure about the message from a failure about the world.

A handler that raises is retried, but how depends on why it raised:

- *About the world* (``transient``): the bus or the database is unreachable, a request
  timed out. Every message would fail the same way, so nothing is gained by moving on:
  the handler is retried in place, with a growing pause, for as long as the failure stays
  of that kind (up to ``ConsumerSpec.transient_patience_seconds``), and the step is not
  failed for it.
- *Not now* (``RetryLater``, raised on purpose): the message is fine but another process
  holds its work; it is handed back to the server with a delay.
- *About the message* (anything else: a handler bug, data the handler cannot take): it
  fails the same way again, and on an ordered consumer every later message of every
  mission waits behind it. So it is retried a few times within seconds
  (``ConsumerSpec.retry_delays``), then recorded as ``StepFailed`` on its mission and
  terminated, to be run again on request (``StepRetryRequested``, see ``steps``).
"""

from __future__ import annotations

from collections.abc import Iterator

from nats import errors as nats_errors
from nats.js import errors as js_errors


class RetryLater(Exception):
    """Raised by a handler whose message cannot be handled now for a reason that is not
    about the message (another process holds its work): the message comes back after a
    delay, and is not recorded as a failed step before the consumer's delivery limit.

    ``delay``: the handler's own choice of that delay, in seconds (an agent runner
    handing an attempt on to a runner that has its runtime); else it grows with the
    message's deliveries."""

    def __init__(self, *args: object, delay: float | None = None) -> None:
        super().__init__(*args)
        self.delay = delay


# Raised by the bus or the network, whatever the message: the world, not the data.
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, broken pipe (OSError subclasses)
    TimeoutError,  # asyncio's too (nats-py's TimeoutError derives from it)
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.ConnectionDrainingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.NoServersError,
    nats_errors.NoRespondersError,  # JetStream not (yet) answering after a restart
    js_errors.ServiceUnavailableError,
)


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling (each once)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transient(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``error`` (or an error it came from) is about the world rather than the
    message: one of ``INFRASTRUCTURE`` or of ``also`` (a service's own, such as its
    database driver's connection errors)."""
    kinds = INFRASTRUCTURE + also
    return any(isinstance(cause, kinds) for cause in causes(error))
