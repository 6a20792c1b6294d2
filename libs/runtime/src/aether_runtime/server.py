"""The HTTP server every service runs under: uvicorn's, stoppable while it starts."""

from __future__ import annotations

import os
import signal
from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    """uvicorn's server, which a stop signal ends at once while the app is still starting.

    uvicorn notes a signal and acts on it only once the app's start-up is over, and a
    service's start-up waits for the bus for as long as it takes: a service started
    while the bus was out of reach heard no SIGTERM. Before it has started it has taken
    no delivery and holds nothing to hand back, so the signal ends it as it ends a
    process with no handler of its own (what a supervisor sending it expects).
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        super().handle_exit(sig, frame)
