"""Ending a process whose event loop is stuck, for its supervisor to start it again.

Everything a service does runs on its event loop. A loop that stops turning (a call that
blocks and never returns, a busy loop, a lock that a thread never gives back) leaves the
process alive and deaf: it answers nothing, and whatever it holds stays held. The bus
hands its messages to another process once their keep-alives stop, but an attempt's
worktree lock is held for as long as the process lives, so the attempt waits for the
delivery limit of its WorkspaceReady (see ``docs/concepts.md``, liveness). Kubernetes'
liveness probe restarts such a process after a minute; ``aether up`` and docker compose
restart only a process that exits.

``LoopWatchdog`` is a thread that the loop pats every ``every`` seconds; how late each pat
runs is the loop's lag, a metric of every service. Once the loop has
not patted it for ``stall_seconds``, it writes every thread's stack to standard error
(where the loop is stuck), logs why, and ends the process with ``STUCK_EXIT_CODE``.
Everything the process held is released as by a crash, which every service recovers
from, and its supervisor starts it again.

A process paused whole (SIGSTOP, a frozen container) is not stuck: the watchdog's own
thread then wakes far later than it asked, and gives the loop its time again. A loop
stuck inside C code that never releases the interpreter's lock is not caught: this
thread cannot run either.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from aether_runtime import metrics

log = logging.getLogger("aether.runtime")

# ``EX_SOFTWARE``: the process ended itself on purpose, not by a signal or a crash.
STUCK_EXIT_CODE = 70
# The log line is written from another thread; a loop stuck while it held the logging
# handler's lock (a write to a full pipe) must not keep the process from ending.
_LOG_PATIENCE_SECONDS = 2.0


class LoopWatchdog:
    """Ends the process once its event loop has not turned for ``stall_seconds`` (0:
    never), and reports how late the loop ran each pat, due every ``every`` seconds, as
    ``aether_event_loop_lag_seconds`` of ``service``: the time the loop spent on other
    work before it could run a callback that was due."""

    def __init__(
        self,
        stall_seconds: float,
        *,
        service: str,
        every: float = 1.0,
        end: Callable[[int], object] = os._exit,
    ) -> None:
        if stall_seconds < 0:
            raise ValueError("stall_seconds must not be negative")
        self.stall_seconds = stall_seconds
        self.every = min(every, stall_seconds / 4) if stall_seconds else every
        self._lag = metrics.EVENT_LOOP_LAG.labels(service)
        self._end = end
        self._last = time.monotonic()
        self._due: float | None = None
        self._stopped = threading.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching the running loop (called on it)."""
        self._loop = asyncio.get_running_loop()
        self._pat()
        if self.stall_seconds:
            self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pat(self) -> None:
        self._last = time.monotonic()
        loop = self._loop
        if self._stopped.is_set() or loop is None:
            return
        now = loop.time()
        if self._due is not None:
            self._lag.observe(max(0.0, now - self._due))
        self._due = now + self.every
        self._timer = loop.call_at(self._due, self._pat)

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        woke = time.monotonic()
        while not self._stopped.wait(self.every):
            now = time.monotonic()
            slept, woke = now - woke, now
            if loop.is_closed():
                return  # its service ended without stopping it (a test's loop, closed)
            if not loop.is_running() or slept > self.every + max(self.every, 1.0):
                # Stopped, not stuck: nothing runs on it. Or this thread too woke far
                # later than it asked: the whole process was paused (SIGSTOP, a frozen
                # container), not its loop stuck; the loop gets its time again.
                self._last = now
                continue
            stuck = now - self._last
            if stuck >= self.stall_seconds:
                self._give_up(stuck)
                return

    def _give_up(self, stuck: float) -> None:
        # The stacks first, straight to the file descriptor: they say where the loop is.
        # Nothing that fails here keeps the process from ending.
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

        def say() -> None:
            log.critical(
                "event loop stuck for %.0f s (limit %g s): ending the process so that its "
                "supervisor starts it again; its threads' stacks, just before this line in "
                "its log, show where",
                stuck,
                self.stall_seconds,
                extra={"stuck_seconds": round(stuck, 1), "exit_code": STUCK_EXIT_CODE},
            )
            for handler in logging.getLogger().handlers:
                handler.flush()

        speaker = threading.Thread(target=say, name="loop-watchdog-log", daemon=True)
        speaker.start()
        speaker.join(_LOG_PATIENCE_SECONDS)
        self._end(STUCK_EXIT_CODE)
