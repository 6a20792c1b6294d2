"""A standby scheduler's state, kept warm: it follows what the active one consumes.

Any number of scheduler processes may run; the one holding the lease acts
(``aether_runtime.lease``). The others follow the mission stream read-only, every event
in order (the active one's decisions among them, which its consumer never delivers: it
applies its own as it stores them), and the heartbeats that move the tasks' liveness
clocks, folding each once through the same ``evolve`` and deciding nothing. Taking over
then costs no replay: the follower reads up to the stream's end as it is at the takeover
(the last decisions of the one that stopped), and stops; the durable consumers resume at
their acknowledgement floor, where the projection's checks skip what was done, as after
a restart.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    UnknownEventType,
    carried_by,
    decode,
    on_its_subject,
)
from aether_runtime.follow import Follower
from aether_runtime.reconnect import Reconnects
from aether_runtime.service import delivered_as
from aether_runtime.unanswered import stream_end
from aether_scheduler.handlers import Handlers

log = logging.getLogger("aether.scheduler.standby")

# How long a takeover waits for the follower to reach the stream's end.
CATCH_UP_SECONDS = 60.0


class Standby:
    """Follows the mission stream and the folded telemetry into ``handlers``' projection
    while this process stands by."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        handlers: Handlers,
        telemetry_subjects: list[str],
        reconnects: Reconnects | None = None,
    ) -> None:
        self._js = js
        self._handlers = handlers
        self._telemetry_subjects = telemetry_subjects
        self._reconnects = reconnects
        self._missions: Follower | None = None
        self._telemetry: Follower | None = None
        # Where the telemetry follower goes on from (the start-up replay's end, then its own).
        self.telemetry_after = 0
        self._moved = asyncio.Event()

    @property
    def following(self) -> bool:
        return self._missions is not None

    def floor(self) -> int:
        """The last mission stream sequence handed to the projection while following (no
        limit otherwise): the projection's position must not pass it (``Service.bound``)."""
        return self._missions.last_sequence if self._missions is not None else sys.maxsize

    async def start(self, after: int) -> None:
        """Follow the mission stream after sequence ``after`` (every event after it that
        reaches the projection is folded, or known already), and the telemetry."""
        if self._missions is not None:
            return
        js = self._js()
        self._missions = Follower(
            js,
            MISSIONS_STREAM,
            [ALL_MISSION_EVENTS],
            self._on_mission_event,
            after_sequence=after,
            name="scheduler-standby",
            reconnects=self._reconnects,
        )
        self._telemetry = Follower(
            js,
            TELEMETRY_STREAM,
            self._telemetry_subjects,
            self._on_telemetry,
            after_sequence=self.telemetry_after,
            new_only=not self.telemetry_after,
            name="scheduler-standby-telemetry",
            reconnects=self._reconnects,
        )
        await self._missions.start()
        await self._telemetry.start()
        log.info("following the stream as a standby", extra={"after": after})

    async def catch_up_and_stop(self) -> int:
        """Fold everything the mission stream holds now, then stop following; returns the
        sequence folded up to."""
        follower = self._missions
        if follower is None:
            return 0
        end = await stream_end(self._js(), MISSIONS_STREAM)
        # Bounded: a follower that cannot read fails the takeover, and the lease is let
        # go for another process (or this one, later) to try.
        async with asyncio.timeout(CATCH_UP_SECONDS):
            while follower.last_sequence < end:
                self._moved.clear()
                await self._moved.wait()
        await self.stop()
        return end

    async def stop(self) -> None:
        missions, self._missions = self._missions, None
        telemetry, self._telemetry = self._telemetry, None
        if missions is not None:
            await missions.stop()
        if telemetry is not None:
            await telemetry.stop()
            self.telemetry_after = max(self.telemetry_after, telemetry.last_sequence)

    async def _on_mission_event(self, msg: Msg) -> None:
        try:
            self._fold(msg)
        finally:
            self._moved.set()

    def _fold(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            return  # the active one's consumer terminates or skips it
        if not on_its_subject(event, msg.subject, len(msg.data)):
            return
        sequence = delivered_as(msg)[0]
        # What a result carries is folded first, with the result's sequence, as the
        # handler folds it.
        for each in carried_by(event):
            self._handlers.fold(each, sequence)

    async def _on_telemetry(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except (UnknownEventType, msgspec.DecodeError, msgspec.ValidationError):
            return
        if on_its_subject(event, msg.subject, len(msg.data)):
            self._handlers.fold_telemetry(event)
