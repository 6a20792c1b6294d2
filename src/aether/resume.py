"""Following a mission's event stream through its drops: opened again after the last
event seen (no gap, no duplicate), no sooner than the gateway's ``Retry-After``. Shared by
``aether mission watch`` and ``aether mission logs --follow``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx

from aether.client import ApiError, GatewayClient, SseEvent

# The longest a refusal's Retry-After is waited out before the stream is asked again (it
# is refused again, saying when, if still too soon): the watch never freezes for hours.
LONGEST_STREAM_WAIT_SECONDS = 300.0


def reconnect_wait(error: ApiError, backoff: float) -> float:
    """How long the watch waits before it opens the stream again after ``error``: no
    less than the gateway's ``Retry-After`` (a 429: too many streams open, the read
    limit; a 503: the bus or the database away), else its own ``backoff``."""
    if error.retry_after is None:
        return backoff
    return min(max(error.retry_after, backoff), LONGEST_STREAM_WAIT_SECONDS)


def resumed_events(
    gateway: GatewayClient,
    mission_id: str,
    report: Callable[[str], None],
    pause: Callable[[float], object],
    *,
    last_id: str | None = None,
    until_terminal: bool = False,
    on_open: Callable[[], object] | None = None,
    ended: Callable[[], bool] | None = None,
) -> Iterator[SseEvent]:
    """The mission's events (with its telemetry) from after ``last_id``, the stream opened
    again after the last event seen whenever it drops: no gap, no duplicate. Each drop is
    ``report``ed with the wait before the next try, no less than the gateway's
    ``Retry-After``; ``pause(seconds)`` waits it (ending the events if it answers true).
    ``on_open`` runs once each stream is open. A stream that ends cleanly is over once
    ``ended()`` says so (asked then only), else opened again. A refusal that is not a
    ``429`` or a ``5xx`` is raised."""
    backoff = 1.0
    while True:
        wait = backoff
        try:
            events = gateway.events(
                mission_id,
                last_event_id=last_id,
                telemetry=True,
                until_terminal=until_terminal,
                on_open=on_open,
            )
            for event in events:
                if event.id is not None:
                    last_id = event.id
                backoff = wait = 1.0
                yield event
            if ended is not None and ended():
                return
            report(f"the event stream ended after #{last_id or 0}; reconnecting")
        except ApiError as error:
            if error.status < 500 and error.status != 429:
                raise
            # The gateway's word on when to come back, if it said, else the backoff.
            wait = reconnect_wait(error, backoff)
            report(f"the gateway answered {error}; retrying in {wait:.0f}s")
        except (httpx.TransportError, OSError) as error:
            report(
                f"cannot connect to the gateway at {gateway.url} ({error or 'no answer'});"
                f" retrying in {wait:.0f}s"
            )
        if pause(wait):
            return
        backoff = min(backoff * 2, 10.0)
