"""Stand-ins for tests of the runtime and the services built on it."""

from __future__ import annotations

import nats.errors
from nats.js.errors import ServiceUnavailableError


class Unanswering:
    """The requests a cluster electing a leader leaves unanswered: the first ``silent``
    fail in turn with a timeout and with "temporarily unavailable" (503), as a real one
    answers then; ``answer()`` is called at the start of each request a stand-in serves,
    and counts it."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.requests = 0

    def answer(self) -> None:
        self.requests += 1
        if self.requests <= self.silent:
            if self.requests % 2:
                raise nats.errors.TimeoutError
            raise ServiceUnavailableError(code=503, description="temporarily unavailable")
