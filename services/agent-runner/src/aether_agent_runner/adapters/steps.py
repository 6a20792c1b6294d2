"""The runner's own blocking steps of an attempt, each run in a worker thread within a
deadline, and what the runner says about the ones that never came back.

An attempt's preparation (its lock, journal, reset, repository map) and its commit run
in worker threads. A thread blocked in the kernel (a file system that never answers)
cannot be cancelled; before, the attempt's handler waited on it for good while its
heartbeats and in-progress acknowledgements went on, so no one ever took the attempt
over. Here a step that has not returned within ``timeout`` is given up: the caller gets
``StepStuck`` (the attempt then fails, retryably, and its delivery is settled), and the
thread is left to itself. Until it returns the runner is not ready (``ready``), and once
it has stayed stuck for a second ``timeout`` the runner is not live either (``live``),
so its supervisor replaces the process, which nothing else can free of the thread. A
thread that does return late has what it holds released (``late``) and is forgotten;
nothing of its attempt is reported by then, since the attempt's handler is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aether_agent_runner import metrics

log = logging.getLogger("aether.agent-runner")

T = TypeVar("T")


class StepStuck(Exception):
    """A step of an attempt did not return within its deadline and was given up."""

    def __init__(
        self, step: str, attempt: str, seconds: float, thread: asyncio.Future[Any]
    ) -> None:
        self.step = step
        self.attempt = attempt
        self.seconds = seconds
        # Done once the step's thread returns (should it ever): for what the caller must
        # hold until then.
        self.thread = thread
        super().__init__(f"{step} of attempt {attempt} has not finished in {seconds:g} s")


class Abandoned(Exception):
    """Raised inside a given-up step's thread at its next look at ``Step.abandoned``: the
    attempt is no longer this thread's to change."""


@dataclass
class Step:
    """One step's thread as the steps know it; ``abandoned`` is set when it is given up,
    for the thread to look at between its parts (``check``)."""

    name: str
    attempt: str
    started: float
    abandoned: threading.Event = field(default_factory=threading.Event)
    given_up_at: float | None = None

    def check(self) -> None:
        """Raise ``Abandoned`` when the step was given up (called in its thread)."""
        if self.abandoned.is_set():
            raise Abandoned(f"{self.name} of attempt {self.attempt} was given up")


class Steps:
    """Runs blocking steps in worker threads within ``timeout`` seconds each, and keeps
    the ones given up until their threads return."""

    def __init__(self, timeout: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._monotonic = monotonic
        self._stuck: dict[int, Step] = {}
        self._lock = threading.Lock()

    async def run(
        self,
        name: str,
        attempt: str,
        function: Callable[..., T],
        *args: Any,
        late: Callable[[T], None] | None = None,
    ) -> T:
        """``function(step, *args)`` in a worker thread; its result, or ``StepStuck`` once
        ``timeout`` has passed without it (``late`` is then given the result, should the
        thread ever return one). Cancelled meanwhile, the thread goes on and ``late`` is
        given its result too: what it took is released, not kept by this process."""
        step = Step(name, attempt, self._monotonic())
        future: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(function, step, *args))
        try:
            await asyncio.wait({future}, timeout=self.timeout)
        except asyncio.CancelledError:
            future.add_done_callback(lambda done: _hand_late(done, late))
            raise
        if future.done():
            return future.result()
        step.abandoned.set()
        step.given_up_at = self._monotonic()
        key = id(step)
        with self._lock:
            self._stuck[key] = step
        metrics.STEPS_GIVEN_UP.labels(name).inc()
        metrics.STEPS_STUCK.inc()
        future.add_done_callback(lambda done: self._returned(key, done, late))
        raise StepStuck(name, attempt, self.timeout, future)

    def _returned(
        self, key: int, done: asyncio.Future[T], late: Callable[[T], None] | None
    ) -> None:
        with self._lock:
            step = self._stuck.pop(key, None)
        if step is not None:
            metrics.STEPS_STUCK.dec()
            log.warning(
                "a given-up step returned; nothing of its attempt is reported",
                extra={
                    "step": step.name,
                    "attempt": step.attempt,
                    "seconds": round(self._monotonic() - step.started, 3),
                },
            )
        _hand_late(done, late)

    def stuck(self) -> list[Step]:
        """The steps given up whose threads have not returned, oldest first."""
        with self._lock:
            return sorted(self._stuck.values(), key=lambda step: step.started)

    def ready(self) -> tuple[bool, str]:
        """Not ready while a given-up step's thread has not returned."""
        stuck = self.stuck()
        if not stuck:
            return True, "ok"
        return False, self._describe(stuck)

    def live(self) -> tuple[bool, str]:
        """Not live once a given-up step's thread has stayed stuck for another
        ``timeout`` after it was given up: only a new process frees the runner of it."""
        now = self._monotonic()
        stuck = [
            step
            for step in self.stuck()
            if step.given_up_at is not None and now - step.given_up_at >= self.timeout
        ]
        if not stuck:
            return True, "ok"
        return False, self._describe(stuck)

    def _describe(self, stuck: list[Step]) -> str:
        now = self._monotonic()
        return "; ".join(
            f"{step.name} of attempt {step.attempt} stuck in a worker thread for "
            f"{now - step.started:.0f} s"
            for step in stuck
        )


def _hand_late(done: asyncio.Future[T], late: Callable[[T], None] | None) -> None:
    if late is None or done.cancelled() or done.exception() is not None:
        return
    with contextlib.suppress(Exception):
        late(done.result())


def exit_past_stuck_threads(steps: Steps) -> Callable[[], Awaitable[None]]:
    """A hook for the end of a runner process's stop: with a given-up step's thread still
    stuck, the process ends at once (``os._exit``) rather than wait for that thread at
    its exit, as the interpreter does for every worker thread, which would keep it from
    ever ending. Only for the process's entry point: it ends the whole process."""

    async def hook() -> None:
        stuck = steps.stuck()
        if not stuck:
            return
        log.warning(
            "leaving threads of given-up steps behind; exiting without waiting for them",
            extra={"stuck": steps.ready()[1]},
        )
        logging.shutdown()
        os._exit(0)

    return hook
