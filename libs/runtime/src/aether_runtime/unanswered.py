"""Asking the server again while a cluster does not answer: a service starting as one of
its servers comes back meets requests that time out, or are answered "temporarily
unavailable", while the groups of its streams and consumers elect leaders."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext

from aether_events.replay import START_PATIENCE_SECONDS, UNANSWERED

log = logging.getLogger("aether.runtime")

T = TypeVar("T")

# How long a start keeps asking: as long as its replay reads on through the same moment.
PATIENCE_SECONDS = START_PATIENCE_SECONDS


async def asked_again(
    request: Callable[[], Awaitable[T]], what: str, patience: float | None = None
) -> T:
    """``request()``, made again every 0.2 s while the server does not answer it, for
    ``patience`` seconds (``PATIENCE_SECONDS`` by default); then its error is raised. The
    request must be safe to make twice: one that timed out may have been done."""
    clock = asyncio.get_running_loop().time
    give_up_at = clock() + (PATIENCE_SECONDS if patience is None else patience)
    while True:
        # A request is cut at the give-up time too: with the server away, one request
        # waits out the client's own timeout (seconds), longer than a short patience.
        bound = asyncio.timeout(max(give_up_at - clock(), 0.1))
        try:
            async with bound:
                return await request()
        except (*UNANSWERED, TimeoutError) as error:
            if not isinstance(error, UNANSWERED) and not bound.expired():
                raise
            if clock() >= give_up_at:
                if isinstance(error, UNANSWERED):
                    raise
                raise nats.errors.TimeoutError() from error
            log.warning(
                "request not answered; asking again",
                extra={"request": what, "error": type(error).__name__},
            )
        await asyncio.sleep(0.2)


async def stream_end(js: JetStreamContext, stream: str, patience: float | None = None) -> int:
    """The last sequence stored in ``stream`` now, asked again while the server does not
    answer (``asked_again``, for ``patience`` seconds): where a start's replay reads up
    to, or from where a follower follows."""
    info = await asked_again(lambda: js.stream_info(stream), f"the end of {stream}", patience)
    return info.state.last_seq
