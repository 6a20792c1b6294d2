"""The one event log every package's tests wait on.

``EventLog`` follows one mission's events as they are stored (an ordered JetStream
consumer from the first event, so what was published before it started is included) and
wakes waiters on each new event: a test waits on the condition it cares about, with a
deadline, instead of sleeping and reading the history again. A timeout fails with the
events seen so far, which is usually the whole diagnosis.

It holds the events that happened, not the messages that told of them: an event that
carries others (an attempt's result its start and usage, a TaskReady its waves) is those
events, then itself (``carried_by``), and an event told twice (carried after it was
published alone) is there once. "AgentStarted was published" then keeps meaning that the
attempt started, however its runner sent it.

    async with EventLog(nc, mission_id) as log:
        await publish(...)
        merged = await log.first(BranchMerged)
        await log.wait_for(lambda log: len(log.of(TaskReady)) == 2)
        completed = await log.completion()  # fails at once if it cannot come
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from aether_events import (
    Event,
    MissionCompleted,
    TaskEscalated,
    TranscriptRecorded,
    carried_by,
    decode,
    ensure_streams,
    is_terminal,
    transcript_of,
)

E = TypeVar("E", bound=Event)

DEFAULT_TIMEOUT = 60.0


class EventLog:
    """Every event of one mission, in the order it arrives, followed live.

    ``events`` are the events, each once (``unfolded``); ``entries`` pair each with the
    stream sequence of the message that brought it (a carried event: its result's).
    ``telemetry=True`` follows the telemetry stream too (progress, usage, heartbeats);
    ``declare=True`` creates the streams first, for tests that start before any service
    (never against a running system: it would reset the streams' settings to defaults).
    """

    def __init__(
        self, nc: NatsClient, mission_id: str, *, telemetry: bool = False, declare: bool = False
    ) -> None:
        self._nc = nc
        self._declare = declare
        self.mission_id = mission_id
        self._prefixes = (
            ("aether.mission", "aether.telemetry") if telemetry else ("aether.mission",)
        )
        self.events: list[Event] = []
        self.entries: list[tuple[int, Event]] = []
        self._changed = asyncio.Condition()
        self._subs: list[Any] = []
        self._cursor = 0  # how far ``next`` has read
        self._last: dict[str, int] = {}  # the last stream sequence taken, by stream prefix
        self._ids: set[str] = set()  # of ``events``

    async def start(self) -> Self:
        js = self._nc.jetstream()
        if self._declare:
            await ensure_streams(js)

        def taker(prefix: str) -> Callable[[Any], Awaitable[None]]:
            async def on_message(msg: Any) -> None:
                sequence = msg.metadata.sequence.stream
                async with self._changed:
                    for event in carried_by(decode(msg.data)):
                        if event.event_id in self._ids:
                            continue
                        self._ids.add(event.event_id)
                        self.events.append(event)
                        self.entries.append((sequence, event))
                    self._last[prefix] = sequence
                    self._changed.notify_all()

            return on_message

        for prefix in self._prefixes:
            self._subs.append(
                await js.subscribe(
                    f"{prefix}.{self.mission_id}.>",
                    cb=taker(prefix),
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.ALL,
                )
            )
        return self

    async def caught_up(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until every stream followed has given this log all it stores of the mission
        now. The streams arrive independently: an event seen on one (an attempt's
        AgentCompleted) says nothing of what the other holds from before it (the
        attempt's progress and transcript, stored first); after this, that is here too."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + timeout
        for prefix, sub in zip(self._prefixes, self._subs, strict=True):
            while True:
                info = await sub.consumer_info()
                if not info.num_pending:
                    break
                if clock() > deadline:
                    raise AssertionError(f"{prefix}: {info.num_pending} never delivered")
                await asyncio.sleep(0.01)  # the server is still delivering what it counts
            target: int = info.delivered.stream_seq if info.delivered else 0
            await self.wait_for(_taken_up_to(prefix, target), timeout)

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def of(self, cls: type[E]) -> list[E]:
        """The events of ``cls``; transcript entries (``TranscriptRecorded``) include
        those an attempt sent together (``TranscriptEntries``), each once
        (``transcript_of``)."""
        if cls is TranscriptRecorded:
            return transcript_of(self.events)  # type: ignore[return-value]
        return [event for event in self.events if isinstance(event, cls)]

    of_type = of

    async def wait_for(
        self, predicate: Callable[[Self], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> list[Event]:
        """Return the events once ``predicate(self)`` holds; it is checked now and after
        every new event. Fails after ``timeout`` seconds, listing what was seen."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            seen = [type(e).__name__ for e in self.events]
            raise AssertionError(f"condition not met within {timeout}s; events: {seen}") from None
        return list(self.events)

    async def first(self, cls: type[E], timeout: float = DEFAULT_TIMEOUT) -> E:
        """The first event of type ``cls``, once there is one; following both streams,
        once what the other stream stored before it is here too (``caught_up``: an
        attempt's result is read with its progress, usage and transcript)."""
        await self.wait_for(lambda log: bool(log.of(cls)), timeout)
        if len(self._subs) > 1:
            await self.caught_up(timeout)
        return self.of(cls)[0]

    async def completion(self, timeout: float = DEFAULT_TIMEOUT) -> MissionCompleted:
        """The mission's ``MissionCompleted``, once stored; fails as soon as nothing but a
        person could bring it: the mission ended another way (failed, cancelled) or a task
        was escalated. A broken change then fails its test with the events that show why,
        rather than after the whole timeout, and the next test on a shared stack starts."""
        await self.wait_for(
            lambda log: bool(log.of(MissionCompleted)) or log._beyond_completion(), timeout
        )
        completed = self.of(MissionCompleted)
        if not completed:
            seen = [type(e).__name__ for e in self.events]
            raise AssertionError(f"the mission cannot complete on its own; events: {seen}")
        return completed[0]

    def _beyond_completion(self) -> bool:
        return any(
            isinstance(event, TaskEscalated)
            or (is_terminal(event) and not isinstance(event, MissionCompleted))
            for event in self.events
        )

    async def count(self, cls: type[E], count: int, timeout: float = DEFAULT_TIMEOUT) -> list[E]:
        """The events of type ``cls``, once there are at least ``count``."""
        await self.wait_for(lambda log: len(log.of(cls)) >= count, timeout)
        return self.of(cls)

    async def next(self, cls: type[E], timeout: float = DEFAULT_TIMEOUT) -> E:
        """The next event of type ``cls`` after the one ``next`` returned last (the events
        in between are passed over), once it is stored."""
        found: list[E] = []

        def arrived(log: EventLog) -> bool:
            while log._cursor < len(log.events):
                event = log.events[log._cursor]
                log._cursor += 1
                if isinstance(event, cls):
                    found.append(event)
                    return True
            return False

        await self.wait_for(arrived, timeout)
        return found[0]


def _taken_up_to(prefix: str, sequence: int) -> Callable[[EventLog], bool]:
    """Whether a log has taken its stream ``prefix``'s messages up to ``sequence``."""

    def taken(log: EventLog) -> bool:
        return log._last.get(prefix, 0) >= sequence

    return taken
