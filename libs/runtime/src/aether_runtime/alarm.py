"""One timer for many waits: what a lane (``pull.Puller``) and a follower
(``follow.Follower``) wait for besides their messages.

Each waits for a time that moves only now and then (a pull request's expiry, a sweep, a
word due from the server), and a timeout around every wait armed and cancelled a timer
at every message, which cost more than the message's own handling. An ``Alarm`` keeps
one timer, armed again only when it would ring too late; one that rings early only has
its owner look again at what it waits for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Alarm:
    """Calls ``ring`` (in the event loop) at the latest by the time last asked for."""

    def __init__(self, ring: Callable[[], None]) -> None:
        self._ring = ring
        self._timer: asyncio.TimerHandle | None = None
        self._rings_at = 0.0

    def at(self, until: float) -> None:
        """Ring at ``until`` (``time.monotonic``) at the latest."""
        if self._timer is not None:
            if self._rings_at <= until:
                return
            self._timer.cancel()
        self._rings_at = until
        self._timer = asyncio.get_running_loop().call_later(
            max(until - time.monotonic(), 0.0), self._rung
        )

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _rung(self) -> None:
        self._timer = None
        self._ring()
