"""On WorkspaceReady: run the agent while it may run, publish its result. On a mission's
or task's end: stop the agents it concerns.

Fold, decide (``domain``), publish: this module is where the runner's events are
published. The attempt returns its result; what it emits while it works goes through the
attempt's stream, opened and closed here (``adapters.stream``), and the heartbeat is
published here too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aether_agent_runner import metrics
from aether_agent_runner.adapters.attempt import AttemptBusy, Attempts
from aether_agent_runner.adapters.stream import TRANSCRIPT_LINGER, AttemptStream
from aether_agent_runner.domain import Attempt, State, StopOrder, decide, stop_order, why_not_run
from aether_agent_runner.domain.routing import HandOn, Route
from aether_agent_runner.runtimes import BUILTIN, runtime_name
from aether_events import Event, Publisher, WorkspaceReady, is_terminal
from aether_runtime import Delivery, Projection, RetryLater, stored_sequence
from aether_runtime.attempt_auth import CredentialRefused, Opens

log = logging.getLogger("aether.agent-runner")

# How long a stopping service waits for an attempt's emitted events to be stored: a
# healthy bus takes milliseconds.
STOP_SECONDS = 2.0

# A mission's stored events, each with its stream sequence.
History = Callable[[str], Awaitable[list[tuple[Event, int]]]]
# Where an attempt on a runtime this runner lacks goes, delivered so many times so far
# (``adapters.runners.LiveRunners.route``).
Router = Callable[[str, int], Awaitable[Route]]


class HandedOn(RetryLater):
    """This runner lacks the attempt's runtime and another live runner has it (or none has
    had it for long enough to give up yet): the delivery is handed back, with the delay
    the routing chose, for another runner to take. No attempt starts or fails here."""


class RunningAgents:
    """The agents at work in this process, each with a future a stop order resolves."""

    def __init__(self) -> None:
        self._agents: dict[Attempt, asyncio.Future[StopOrder]] = {}
        self._gone = asyncio.Event()  # set (and replaced) whenever an agent is unregistered

    def __contains__(self, attempt: Attempt) -> bool:
        return attempt in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def register(self, attempt: Attempt) -> asyncio.Future[StopOrder]:
        future: asyncio.Future[StopOrder] = asyncio.get_running_loop().create_future()
        self._agents[attempt] = future
        return future

    def unregister(self, attempt: Attempt) -> None:
        future = self._agents.pop(attempt, None)
        if future is not None and not future.done():
            future.cancel()
        self._gone.set()
        self._gone = asyncio.Event()

    async def none_of(self, mission_id: str) -> None:
        """Return once no agent of the mission is at work here."""
        while any(attempt[0] == mission_id for attempt in self._agents):
            await self._gone.wait()

    def stop(self, order: StopOrder) -> list[Attempt]:
        stopped = []
        for attempt, future in self._agents.items():
            if order.applies_to(attempt) and not future.done():
                future.set_result(order)
                stopped.append(attempt)
        return stopped


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], Publisher],
        attempts: Attempts,
        *,
        history: History | None = None,
        router: Router | None = None,
        ack_wait_seconds: float = 60.0,
        heartbeat_seconds: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self._attempts = attempts
        self._history = history
        # None: an attempt on a runtime this runner lacks fails here at once.
        self._router = router
        self._keep_alive_every = max(ack_wait_seconds / 3, 0.2)
        self._heartbeat_seconds = heartbeat_seconds
        self._clock = clock
        self.running = RunningAgents()
        # Clean-ups of ended missions' clones, each waiting for the mission's agents here.
        self._forgetting: set[asyncio.Task[None]] = set()

    async def handle(self, event: Event, delivery: Delivery) -> None:
        """A delivery of the work consumer (WorkspaceReady)."""
        self.projection.apply(event, delivery.sequence)
        if not isinstance(event, WorkspaceReady):
            return
        attempt = decide.attempt_of(event)
        why = why_not_run(self.projection.state, attempt)
        missing: str | None = None
        if why is None:
            # Before the history below: a delivery handed on comes back many times.
            missing = await self._route(event, delivery)
            if delivery.redelivered and self._history is not None:
                # Another runner may have reported the attempt before it died: look at the
                # mission's own history rather than trust that our follower has caught up.
                for earlier, sequence in await self._history(event.mission_id):
                    self.projection.apply(earlier, sequence)
                why = why_not_run(self.projection.state, attempt)
        if why is not None:
            log.info("not running the attempt", extra={"why": why})
            return
        if attempt in self.running:
            raise AttemptBusy("this runner is already working the attempt")
        await self._run(event, attempt, delivery, missing)

    async def _route(self, ready: WorkspaceReady, delivery: Delivery) -> str | None:
        """None when this runner has the attempt's runtime; else raises ``HandedOn`` while
        the registry of runners shows another runner with it (``domain.routing``), or
        returns why no runner can run it: the attempt then fails for that reason (after
        a look for its commit from before a restart). Neither starts the attempt, nor its
        liveness clock at the scheduler (nothing of it is published)."""
        runtime = self._attempts.lacks(ready)
        if runtime is None or self._router is None:
            return None
        where = await self._router(runtime, delivery.num_delivered)
        if isinstance(where, HandOn):
            metrics.HANDED_ON.labels("elsewhere" if where.runners else "waiting").inc()
            holders = ", ".join(where.runners) or "none live now"
            raise HandedOn(
                f"this runner lacks the runtime {runtime!r}; runners that have it: {holders}",
                delay=where.delay,
            )
        log.warning("no live runner has the attempt's runtime", extra={"why": where.reason})
        return where.reason

    async def _run(
        self,
        ready: WorkspaceReady,
        attempt: Attempt,
        delivery: Delivery,
        missing: str | None = None,
    ) -> None:
        """Run the attempt and publish its result: what it returned, or an AgentFailed
        when a stop order ended it (nothing when the order says the attempt is someone
        else's to report, or another runner reported it meanwhile). ``missing``: why no
        runner can run its runtime (it fails for it)."""
        stop = self.running.register(attempt)
        metrics.AGENTS_RUNNING.inc()
        # The one way the attempt's own events reach the stream while it works. Its
        # transcript entries wait a moment for company only where a resumed attempt sends
        # them again (the built-in loop's come from its journal): a CLI agent's, lost with
        # a killed runner, would be lost for good.
        journaled = runtime_name(ready.runtime, self._attempts.settings.runtime) == BUILTIN
        stream = AttemptStream(self._publisher, linger=TRANSCRIPT_LINGER if journaled else 0.0)
        began = asyncio.Event()  # the attempt emitted its first event (AgentStarted)

        async def emit(event: Event) -> None:
            began.set()
            await stream.emit(event)

        work = asyncio.create_task(
            self._attempts.work(
                ready, emit, first_delivery=not delivery.redelivered, missing=missing
            )
        )
        try:
            async with (
                delivery.keep_alive(self._keep_alive_every),
                self._heartbeat(ready, began) as refused,
            ):
                waiting: set[asyncio.Future[Any]] = {work, stop, refused}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finished = work.done()
                if not finished:
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, AttemptBusy):
                        await work
                if not finished and refused.done():
                    # Nothing of the attempt can be stored: it stops now rather than
                    # spend model calls it could not report, and its delivery is handed
                    # back (its redelivery looks at the mission's history first).
                    log.warning("the attempt's credential was refused; handing it back")
                    metrics.RESULTS.labels("credential_refused").inc()
                    stream.abandon()
                    raise refused.result()
                if finished and (work.cancelled() or work.exception() is not None):
                    await stream.close()
                    work.result()  # raises what ended the attempt
                result = work.result() if finished else self._stopped(ready, stop.result())
                report = decide.result_to_report(self.projection.state, ready, result)
                # Done here: a stop order now (our own result, stored below, is one)
                # has nothing to stop.
                self.running.unregister(attempt)
                if report is None and result is not None:
                    log.warning(
                        "the attempt was reported elsewhere meanwhile; not reporting it again"
                    )
                # The result goes out last, after everything the attempt emitted, on the
                # same connection (``AttemptStream.close``).
                ack = await stream.close(then=report)
                if report is not None and ack is not None:
                    self.projection.apply(report, stored_sequence(ack))
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
            # Cancelled (the service stops): what the attempt emitted gets a bound, and
            # a resumed attempt publishes it again, each event stored once by its id.
            me = asyncio.current_task()
            stopping = me is not None and me.cancelling() > 0
            with contextlib.suppress(Exception):
                await stream.close(within=STOP_SECONDS if stopping else None)
            self.running.unregister(attempt)
            metrics.AGENTS_RUNNING.dec()

    def _stopped(self, ready: WorkspaceReady, order: StopOrder) -> Event | None:
        log.info("agent stopped", extra={"reason": order.reason})
        metrics.RESULTS.labels("stopped").inc()
        return decide.stopped(ready, self._clock(), order)

    async def on_control(self, event: Event, sequence: int = 0) -> None:
        """An event of the control follower (stored at ``sequence``): fold it, stop the
        agents it ends."""
        self.projection.apply(event, sequence)
        order = stop_order(event)
        if order is None:
            return
        stopped = self.running.stop(order)
        if stopped:
            log.info(
                "stopping agents",
                extra={"reason": order.reason, "attempts": [f"{t}/a{a}" for _, t, a in stopped]},
            )
        if is_terminal(event):
            task = asyncio.create_task(self._forget(event.mission_id))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)

    async def _forget(self, mission_id: str) -> None:
        """Once the ended mission's agents here have stopped, remove what this runner kept
        of it (the clones of fetched attempts: a failed one's stays for a redelivery,
        which no ended mission gets)."""
        await self.running.none_of(mission_id)
        try:
            removed = await self._attempts.forget(mission_id)
            if removed:
                log.info("removed the clones of an ended mission", extra={"clones": removed})
        except OSError as error:
            log.warning("could not remove an ended mission's clones", extra={"error": str(error)})

    async def forgotten(self) -> None:
        """Wait for the clean-ups of ended missions started so far (tests, shutdown)."""
        while self._forgetting:
            await asyncio.gather(*self._forgetting, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _heartbeat(
        self, ready: WorkspaceReady, began: asyncio.Event
    ) -> AsyncIterator[asyncio.Future[CredentialRefused]]:
        """Publish AgentHeartbeat on the telemetry stream while the agent works; yields a
        future set when the bus refuses the attempt's credential.

        The attempt's own connection (its credential asked of the authorizer through the
        auth callout) is opened once the attempt has begun (``began``: its worktree and
        journal prepared, AgentStarted emitted), or a beat's interval into its
        preparation, whichever comes first; a refusal there (the attempt is not open, or
        another runner holds it) ends the attempt at once. Opened as the preparation
        began, the connection's work in this process (the connection made, the server's
        greeting read, the handshake) held up the preparation's worker thread, which
        waits for the interpreter's lock: about a millisecond of every task's way to its
        first model call; the connection is now made while that call is answered. The
        first beat goes out one interval later: AgentStarted tells the scheduler the
        attempt is alive, and a beat beside it cost every task two deliveries that said
        nothing more.

        The beat ends on a flag, not on its cancellation alone: on Python 3.11 a
        cancellation that arrives as a publish's acknowledgement does is swallowed by
        ``asyncio.wait_for`` inside the NATS client (the publish returns normally), and a
        beat that only stopped when cancelled would then go on forever, with the attempt's
        result waiting behind it and never published."""
        stopped = asyncio.Event()
        refused: asyncio.Future[CredentialRefused] = asyncio.get_running_loop().create_future()

        async def beat() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_seconds):
                    await began.wait()
            publisher = self._publisher()
            if isinstance(publisher, Opens):
                try:
                    await publisher.open()
                except CredentialRefused as error:
                    refused.set_result(error)
                    return
                except Exception:
                    # Not refused: the attempt's first event asks again.
                    log.warning("the attempt's connection was not opened", exc_info=True)
            number = 0
            while not stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat_seconds):
                        await stopped.wait()
                if stopped.is_set():
                    return
                number += 1
                runner = self._attempts.runner_id
                try:
                    await self._publisher().publish(
                        decide.heartbeat(ready, self._clock(), runner, number)
                    )
                except CredentialRefused as error:
                    refused.set_result(error)
                    return
                except Exception:
                    log.warning("heartbeat not published", exc_info=True)

        task = asyncio.create_task(beat())
        try:
            yield refused
        finally:
            stopped.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
