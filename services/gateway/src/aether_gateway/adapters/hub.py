"""One NATS subscription per stream, fanned out to every event-stream client.

The hub follows the mission stream with a single consumer in order (and the telemetry
stream with another), keeps the most recent mission events in a ring, and hands each
event to the queues of the clients that want it. However many clients are connected,
the server sees two consumers per gateway process, and none while no client is: the
followers start with the first client (from the streams' ends then, with an empty ring)
and stop once no client has been connected for ``linger_seconds``. Without it every
event of every mission was delivered to the gateway a second time and decoded for a
ring no client read: on a two-core machine that was CPU taken from the missions.

A client registers first and replays afterwards: everything after ``Subscriber.start``
(the hub's last sequence when the client registered) reaches its queue, and everything
up to it comes from the ring or the read model. Nothing falls between the two, and the
client drops live events it already replayed, so there is no gap and no duplicate.

A message that stands for several events (an attempt's result and the start and usage it
carries, a TaskReady and its waves: ``domain.carried``) is handed to clients as those
events, one after the other, all with the message's sequence; only the last of them a
client gets is sent with the sequence as its id (``ends_message``). A client that
resumes from an id thus gets a message's events all again or none of them, whatever
types it asked for.

The two followers run apart, so an attempt's end (on the mission stream) could reach a
client before the attempt's last transcript entries (on telemetry), which the runner
stores before it publishes the end; a client that stops at the mission's end would then
never see them. While some client follows a mission with its telemetry, the hub holds
an attempt's end until its telemetry follower has caught up with the telemetry stored
by then (``TELEMETRY_WAIT_SECONDS`` at most).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aether_events import (
    ALL_MISSION_EVENTS,
    ALL_TELEMETRY,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    AgentCompleted,
    AgentFailed,
    Event,
    UnknownEventType,
    decode,
    encode,
    entries_of,
    on_its_subject,
    tag_of,
)
from aether_events.codec import without_secrets
from aether_gateway.adapters.rows import task_of
from aether_gateway.domain import unfolded
from aether_runtime.follow import Follower
from aether_runtime.reconnect import Reconnects
from aether_runtime.unanswered import stream_end

log = logging.getLogger("aether.gateway.hub")

# How long an attempt's end waits for the telemetry stored before it to reach clients.
TELEMETRY_WAIT_SECONDS = 2.0
# How long a client's arrival asks the bus for the streams' ends and the followers'
# consumers before its stream is refused (503, come back later): a client is told soon
# that the bus is away. The gateway's start keeps a start's patience (a cluster electing
# leaders as one of its servers comes back answers late).
FOLLOW_PATIENCE_SECONDS = 2.0
ATTEMPT_ENDS = frozenset(tag_of(cls) for cls in (AgentCompleted, AgentFailed))


class StreamedEvent:
    """One event on its way to clients; ``sequence`` is ``None`` for telemetry, which
    is not kept for replay (its sequences count another stream).

    ``data`` is the event as clients receive it (without its secrets). Given the event
    instead, it is encoded when first asked for: most events the hub keeps for replay
    never reach a client. ``ends_message``: whether it is the last event of its stream
    message sent to the client, the one sent with the sequence as its id (see
    ``identified``)."""

    __slots__ = ("_data", "_event", "ends_message", "mission_id", "sequence", "task_id", "type")

    def __init__(
        self,
        sequence: int | None,
        mission_id: str,
        type: str,
        task_id: str | None,
        data: bytes | None = None,
        *,
        event: Event | None = None,
        ends_message: bool = True,
    ) -> None:
        if data is None and event is None:
            raise ValueError("a streamed event needs its data or the event itself")
        self.sequence = sequence
        self.mission_id = mission_id
        self.type = type
        self.task_id = task_id
        self._data = data
        self._event = event
        self.ends_message = ends_message

    @property
    def data(self) -> bytes:
        if self._data is None:
            assert self._event is not None
            self._data = encode(without_secrets(self._event))
            self._event = None
        return self._data

    def ending(self, ends_message: bool) -> StreamedEvent:
        """The same event, ending its message as sent to a client or not."""
        if ends_message == self.ends_message:
            return self
        return StreamedEvent(
            self.sequence,
            self.mission_id,
            self.type,
            self.task_id,
            self._data,
            event=self._event,
            ends_message=ends_message,
        )

    def __repr__(self) -> str:
        return f"StreamedEvent({self.sequence}, {self.mission_id}, {self.type})"


def identified(events: list[StreamedEvent]) -> list[StreamedEvent]:
    """``events`` as sent to one client (each message's events it gets, together, in
    order), each marked whether it ends its message there: the last event a client gets
    of a message is sent with the message's sequence as its id, the ones before it (a
    result's carried events) without. Where a client's types leave the result out, the
    last carried event it gets takes the id, so that it is not sent again on a resume."""
    marked: list[StreamedEvent] = []
    for n, event in enumerate(events, start=1):
        ends = n == len(events) or events[n].sequence != event.sequence
        marked.append(event.ending(ends or event.sequence is None))
    return marked


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


IDLE: Final = _Signal("IDLE")  # nothing arrived for a while: time for a keep-alive
CLOSED: Final = _Signal("CLOSED")  # the hub stopped, or the client fell too far behind
WAKE: Final = _Signal("WAKE")  # the stream has something to look at besides events


@dataclass(frozen=True)
class Filter:
    """Which events a client wants: one mission's or all, some types or all."""

    mission_id: str | None = None
    types: frozenset[str] | None = None
    telemetry: bool = False

    def matches(self, event: StreamedEvent) -> bool:
        if self.mission_id is not None and event.mission_id != self.mission_id:
            return False
        if event.sequence is None and not self.telemetry:
            return False
        return self.types is None or event.type in self.types


class Subscriber:
    """One client's queue of live events."""

    def __init__(self, hub: Hub, wanted: Filter, start: int, max_queue: int) -> None:
        self._hub = hub
        self.filter = wanted
        self.start = start
        self.overflowed = False
        self._queue: asyncio.Queue[StreamedEvent | _Signal] = asyncio.Queue(max_queue)
        self._closed = False
        self._woken = False

    def offer(self, event: StreamedEvent) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # A client this far behind is let go; it resumes with Last-Event-ID.
            self.overflowed = True
            self.end()

    def end(self) -> None:
        """Tell the client its stream is over (after what is queued already)."""
        if self._closed:
            return
        self._closed = True
        self._hub.remove(self)
        if self._queue.full():
            # No room for the marker: drop everything queued rather than one event, so
            # the client ends right after the last event it received and its resume
            # (from that event's id) misses nothing.
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(CLOSED)

    def wake(self) -> None:
        """Have ``next`` return ``WAKE`` now, ahead of any event queued."""
        if self._queue.empty():
            self._queue.put_nowait(WAKE)  # a ``next`` waiting returns at once
        else:
            self._woken = True

    async def next(self, idle_seconds: float) -> StreamedEvent | _Signal:
        """The next live event, ``IDLE`` after ``idle_seconds`` of quiet, ``CLOSED``, or
        ``WAKE`` (``wake``)."""
        if self._woken:
            self._woken = False
            return WAKE
        try:
            return await asyncio.wait_for(self._queue.get(), idle_seconds)
        except TimeoutError:
            return IDLE

    def close(self) -> None:
        self._closed = True
        self._hub.remove(self)


class Hub:
    """The fan-out of the mission and telemetry streams to event-stream clients."""

    def __init__(
        self,
        *,
        ring_size: int = 10_000,
        max_queue: int = 1_000,
        linger_seconds: float = 60.0,
        follow_patience: float = FOLLOW_PATIENCE_SECONDS,
    ) -> None:
        self._follow_patience = follow_patience
        self._ring: deque[StreamedEvent] = deque()
        self._linger_seconds = linger_seconds
        self._ring_size = ring_size
        self._max_queue = max_queue
        self._by_mission: dict[str, set[Subscriber]] = {}
        self._everything: set[Subscriber] = set()
        # The clients that asked for telemetry: with none, a telemetry message is not
        # even decoded (it is not kept for replay, so nobody can want it later).
        self._telemetry_wanted: set[Subscriber] = set()
        self.telemetry_passed_over = 0  # telemetry messages nobody wanted (for tests)
        self._followers: list[Follower] = []
        self._js: JetStreamContext | None = None
        self._reconnects: Reconnects | None = None
        self._telemetry: Follower | None = None
        self._starting = asyncio.Lock()  # one start or stop of the followers at a time
        self._idle: asyncio.Task[None] | None = None  # the stop once no client is left
        # Attempts' ends waiting for the telemetry follower to move (see the module).
        self._telemetry_waiters: list[asyncio.Future[None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self.last_sequence = 0
        # The ring holds every decodable event with floor < sequence <= last_sequence.
        self.floor = 0
        self.started = False

    @property
    def subscriber_count(self) -> int:
        return len(self._everything) + sum(len(s) for s in self._by_mission.values())

    # --- lifecycle ------------------------------------------------------------------

    async def start(
        self, js: JetStreamContext, closing: asyncio.Event, reconnects: Reconnects | None = None
    ) -> None:
        """Be ready to follow both streams (asking a restarted server again at once when
        given the connection's ``reconnects``): from their ends once a client comes."""
        self.last_sequence = self.floor = await stream_end(js, MISSIONS_STREAM)
        self._js = js
        self._reconnects = reconnects
        self._watcher = asyncio.create_task(self._end_all_when(closing))
        self.started = True

    @property
    def following(self) -> bool:
        """Whether the followers are running (while a client is connected, and a while
        after the last one left)."""
        return bool(self._followers)

    async def _follow(self) -> None:
        """Start the followers unless they run: from the streams' ends, the ring empty."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        js = self._js
        if self._followers or js is None or not self.started:
            return
        async with self._starting:
            if self._followers or not self.started:
                return
            last = await stream_end(js, MISSIONS_STREAM, self._follow_patience)
            self._ring.clear()
            self.last_sequence = self.floor = max(last, self.last_sequence)
            # Consumers named by the gateway, not nats-py's ordered ones, whose unnamed
            # creation the bus permissions refuse (see ``aether_runtime.follow``).
            telemetry = Follower(
                js,
                TELEMETRY_STREAM,
                [ALL_TELEMETRY],
                self._on_telemetry,
                new_only=True,
                name="gateway-hub-telemetry",
                reconnects=self._reconnects,
                patience=self._follow_patience,
            )
            missions = Follower(
                js,
                MISSIONS_STREAM,
                [ALL_MISSION_EVENTS],
                self._on_mission_event,
                after_sequence=self.last_sequence,
                name="gateway-hub-missions",
                reconnects=self._reconnects,
                patience=self._follow_patience,
            )
            started: list[Follower] = []
            try:
                for follower in (missions, telemetry):
                    await follower.start()
                    started.append(follower)
            except BaseException:
                for follower in started:
                    await follower.stop()
                raise
            self._telemetry = telemetry
            self._followers = [missions, telemetry]
            log.info(
                "event hub following the streams", extra={"from_sequence": self.last_sequence + 1}
            )

    async def _stop_following(self) -> None:
        async with self._starting:
            await self._stopped_following()

    async def _stopped_following(self) -> None:
        """Stop the followers (the caller holds ``_starting``)."""
        followers, self._followers = self._followers, []
        self._telemetry = None
        for follower in followers:
            await follower.stop()
        # What the ring held is no longer followed: a client's replay comes from the read
        # model up to where the next start begins.
        self._ring.clear()
        self.floor = self.last_sequence
        for waiter in self._telemetry_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._telemetry_waiters = []

    async def _stop_when_idle(self) -> None:
        await asyncio.sleep(self._linger_seconds)
        # From here on it is not cancelled by a client that comes meanwhile (a stop cut
        # short would leave followers half stopped): that client either registers before
        # the look below, which then keeps the followers, or waits for the stop under the
        # lock and starts them again.
        self._idle = None
        async with self._starting:
            if self.subscriber_count or not self._followers:
                return
            await self._stopped_following()
        log.info("event hub stopped following the streams: no client for a while")

    async def stop(self) -> None:
        self.started = False
        self.end_all()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        await self._stop_following()

    async def _end_all_when(self, closing: asyncio.Event) -> None:
        await closing.wait()
        self.end_all()

    def end_all(self) -> None:
        for subscriber in [*self._everything, *(s for v in self._by_mission.values() for s in v)]:
            subscriber.end()

    # --- clients --------------------------------------------------------------------

    async def subscribe(self, wanted: Filter) -> Subscriber:
        """Register a client, following the streams first if no client was; live events
        after ``Subscriber.start`` reach its queue."""
        await self._follow()
        subscriber = Subscriber(self, wanted, self.last_sequence, self._max_queue)
        if wanted.telemetry:
            self._telemetry_wanted.add(subscriber)
        if wanted.mission_id is None:
            self._everything.add(subscriber)
        else:
            self._by_mission.setdefault(wanted.mission_id, set()).add(subscriber)
        return subscriber

    def remove(self, subscriber: Subscriber) -> None:
        self._telemetry_wanted.discard(subscriber)
        mission_id = subscriber.filter.mission_id
        if mission_id is None:
            self._everything.discard(subscriber)
        else:
            group = self._by_mission.get(mission_id)
            if group is not None:
                group.discard(subscriber)
                if not group:
                    del self._by_mission[mission_id]
        if self.subscriber_count == 0 and self._followers and self._idle is None:
            self._idle = asyncio.get_running_loop().create_task(self._stop_when_idle())

    def recent(self, after: int, upto: int, wanted: Filter) -> list[StreamedEvent] | None:
        """The ring's events in ``(after, upto]`` that ``wanted`` matches, or ``None``
        when the ring no longer reaches back to ``after``."""
        if after < self.floor:
            return None
        return identified(
            [e for e in self._ring if after < (e.sequence or 0) <= upto and wanted.matches(e)]
        )

    # --- the streams ----------------------------------------------------------------

    def _message_streamed(self, msg: Msg, sequence: int) -> list[StreamedEvent]:
        """A mission stream message as clients receive it: the events it carries
        (``unfolded``), then its own."""
        event = _decoded(msg)
        if event is None:
            return []
        return [_streamed(each, sequence, ends_message=part == 0) for each, part in unfolded(event)]

    def _telemetry_streamed(self, msg: Msg) -> list[StreamedEvent]:
        """A telemetry message as clients receive it: the entries an attempt sent
        together (``TranscriptEntries``) each as the ``transcript_recorded`` it is."""
        event = _decoded(msg)
        if event is None:
            return []
        carried: list[Event] = [*entries_of(event)] or [event]
        return [_streamed(each, None) for each in carried]

    async def _on_mission_event(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        if sequence <= self.last_sequence:
            return
        events = self._message_streamed(msg, sequence)
        # The message's own event comes last, after the events it carries.
        end = events[-1] if events else None
        if end is not None and end.type in ATTEMPT_ENDS and self._telemetry_watched(end):
            await self._telemetry_caught_up()
        self.last_sequence = sequence
        if end is None:
            return
        self._ring.extend(events)
        while len(self._ring) > self._ring_size:
            # Dropping a carried event leaves the rest of its message at the floor, which
            # ``recent`` does not reach back to: it never gives part of a message.
            dropped = self._ring.popleft()
            self.floor = dropped.sequence or self.floor
        for subscriber in list(self._targets(end.mission_id)):
            for event in identified([e for e in events if subscriber.filter.matches(e)]):
                subscriber.offer(event)

    async def _on_telemetry(self, msg: Msg) -> None:
        if self._telemetry_waiters:
            waiters, self._telemetry_waiters = self._telemetry_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if not self._telemetry_wanted:
            self.telemetry_passed_over += 1
            return
        for event in self._telemetry_streamed(msg):
            self._dispatch(event, self._targets(event.mission_id))

    def _telemetry_watched(self, event: StreamedEvent) -> bool:
        return any(s.filter.mission_id in (None, event.mission_id) for s in self._telemetry_wanted)

    async def _telemetry_caught_up(self) -> None:
        """Wait until the telemetry follower has delivered what the telemetry stream
        holds now (at most ``TELEMETRY_WAIT_SECONDS``)."""
        follower, js = self._telemetry, self._js
        if follower is None or js is None:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(TELEMETRY_WAIT_SECONDS):
                info = await js.stream_info(TELEMETRY_STREAM)
                while follower.last_sequence < info.state.last_seq:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._telemetry_waiters.append(waiter)
                    await waiter
        except TimeoutError:
            log.info("an attempt's end sent before the telemetry follower caught up")
        except Exception as error:  # the server unreachable: the end is not held for it
            log.info("telemetry position not known", extra={"error": repr(error)})

    def _targets(self, mission_id: str) -> Iterable[Subscriber]:
        yield from list(self._everything)
        yield from list(self._by_mission.get(mission_id, ()))

    def _dispatch(self, event: StreamedEvent, subscribers: Iterable[Subscriber]) -> None:
        for subscriber in list(subscribers):
            if subscriber.filter.matches(event):
                subscriber.offer(event)


def _decoded(msg: Msg) -> Event | None:
    """The event ``msg`` carries, or ``None`` for one the read model skips too (so replay
    and live agree): one that does not decode, or one an attempt's credential published
    about another attempt."""
    try:
        event = decode(msg.data)
    except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return event if on_its_subject(event, msg.subject, len(msg.data)) else None


def _streamed(event: Event, sequence: int | None, *, ends_message: bool = True) -> StreamedEvent:
    return StreamedEvent(
        sequence=sequence,
        mission_id=event.mission_id,
        type=tag_of(type(event)),
        task_id=task_of(event),
        event=event,
        ends_message=ends_message,
    )
