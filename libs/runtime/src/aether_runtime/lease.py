"""One active process of a service among any number: a lease on a key of a bucket.

A service that must have exactly one process acting at a time (the scheduler) may run
several; the one that holds the lease acts, the others stand by. The lease is one key of
the JetStream key-value bucket ``AETHER_LEASES`` (the key: the service's name), whose
value names the holder (a name made for the process at its start: host, pid and a
random part).

- **Taking it**: a write with the expected last revision of the key, 0 when it is absent
  (never written, or expired), or the revision of a delete marker (released). Two
  processes writing at once cannot both succeed: the stream checks the expected
  revision, in order, on its leader.
- **Keeping it**: the holder writes again every third of the lease's time to live, with
  its own last revision as the expected one; every write carries that time to live as
  the message's own (``Nats-TTL``), so the server drops the entry that long after it
  stored it, whatever another process's setting says.
- **Fencing by time, on the holder's side**: the holder believes it holds the lease only
  until ``sent + ttl - margin``, ``sent`` being its monotonic clock *before* it sent its
  last write that the server confirmed. The server stored that write after ``sent``, so
  it drops it after ``sent + ttl``; nobody can take the lease before then. So after each
  renewal, two processes can never both believe they hold it: the old holder's belief
  ends ``margin`` before the server lets another one in. A holder that cannot renew
  (the bus away, the process paused) stops acting when its own deadline passes, whether
  or not it has heard anything; and every act checks ``held()`` first, so a process that
  resumes after a pause does nothing before it finds out.
- **Letting it go**: a graceful stop writes a delete marker with its revision expected,
  so a standby takes over at its next look instead of waiting out the time to live.

What remains is the moment between a check of ``held()`` and the bus receiving what it
allowed: a paused process can send one act late. The acts are idempotent (event ids
derived from their step, stored once by the stream's duplicate window), which is what
makes that harmless (docs/decisions/0027-scheduler-standby-by-lease.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from aether_events.streams import ensure_stream
from aether_runtime import metrics
from aether_runtime.roles import LEASES_BUCKET

log = logging.getLogger("aether.lease")

LEASES_STREAM = f"KV_{LEASES_BUCKET}"
LEASE_PREFIX = f"$KV.{LEASES_BUCKET}"
DEFAULT_LEASE_SECONDS = 6
_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
_OPERATION = "KV-Operation"
# JetStream's "wrong last sequence" (two spellings of it).
_WRONG_LAST_SEQUENCE = (10071, 10164)


def bucket_config(replicas: int = 1) -> StreamConfig:
    """The bucket's stream: one message per key, each dropped its own time to live after
    the server stored it (``Nats-TTL``, so no process's setting decides another's).
    File storage and the streams' replicas: an entry lost with a server restart would let
    a second process take a lease the first still believes it holds."""
    return StreamConfig(
        name=LEASES_STREAM,
        description="Aether's leases: which process of a service is the active one",
        subjects=[f"{LEASE_PREFIX}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        # No write carries a message id: the window only has to be a valid one.
        duplicate_window=1.0,
        deny_delete=True,
        max_consumers=-1,
        max_msgs=-1,
    )


async def ensure_leases_bucket(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the bucket, or bring its replicas up to date."""
    await ensure_stream(js, bucket_config(replicas))


def lease_subject(key: str) -> str:
    return f"{LEASE_PREFIX}.{key}"


class Holder(msgspec.Struct, frozen=True, kw_only=True):
    """What a lease's value says: who holds it (for people and for the holder itself)."""

    holder: str
    host: str = ""
    pid: int = 0
    # When it wrote the entry, by its own clock (for people only: nothing trusts it).
    written_at: datetime | None = None


_DECODER = msgspec.json.Decoder(Holder)


def holder_name() -> str:
    """A name for this process that no other process has: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaseLost(Exception):
    """An act was refused: this process does not hold the lease (any more)."""


class Lease:
    """One process's side of the lease on ``key``: take, renew, check, release.

    ``ttl`` is in whole seconds (the header's unit). ``held()`` is true from a confirmed
    write until ``ttl - margin`` after it was sent, by ``clock`` (monotonic)."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        key: str,
        ttl: int,
        *,
        holder: str | None = None,
        margin: float | None = None,
        request_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 1:
            raise ValueError("a lease lives at least a second")
        self._js = js
        self.key = key
        self.ttl = ttl
        self.holder = holder or holder_name()
        self.margin = margin if margin is not None else max(ttl / 6, 0.25)
        self._request_seconds = request_seconds
        self.clock = clock
        # Counts the takes that replaced an entry not ours (or none): each may follow
        # another process's acts.
        self.term = 0
        self.revision = 0  # of our last confirmed write (0: not held)
        self.deadline = 0.0
        self.renewed_at = 0.0  # when our last confirmed write was sent

    @property
    def subject(self) -> str:
        return lease_subject(self.key)

    def held(self) -> bool:
        """Whether this process may act now: its last confirmed write is recent enough."""
        return self.revision > 0 and self.clock() < self.deadline

    async def current(self) -> tuple[int, Holder | None]:
        """The key's last revision (0 when none) and its holder (None when absent or
        released)."""
        try:
            stored = await self._js().get_last_msg(LEASES_STREAM, self.subject, direct=True)
        except NotFoundError:
            return 0, None
        if (stored.headers or {}).get(_OPERATION):
            return stored.seq or 0, None
        try:
            return stored.seq or 0, _DECODER.decode(stored.data or b"")
        except msgspec.MsgspecError:
            # Not ours to read: taken for held by someone, until it expires.
            return stored.seq or 0, Holder(holder="?")

    async def take(self, *, force: bool = False) -> bool:
        """Take the lease when nobody holds it (or when its entry names this process: one
        of our writes was stored though its answer was lost). With ``force``, take it
        from whoever holds it: only for a process that knows it is the only one of its
        service (``AETHER_ONE_PROCESS``: the holder can only be a predecessor that died).
        False when another holds it or took it first."""
        revision, holder = await self.current()
        ours = holder is not None and holder.holder == self.holder
        if holder is not None and not ours and not force:
            self.lost()
            return False
        if not await self._write(revision):
            return False
        if not ours:
            self.term += 1
        return True

    async def renew(self) -> bool:
        """Write again with our last revision expected. False when the entry is not ours
        any more (expired and taken, or taken over); raises what the bus raises when it
        cannot say (the lease is then still held until its deadline)."""
        if self.revision == 0:
            return False
        if await self._write(self.revision):
            return True
        # Our revision is not the last: a write of ours whose answer was lost may be.
        return await self.take()

    async def release(self) -> None:
        """Let the lease go now (a delete marker, our revision expected): a standby takes
        it at its next look. Best effort: when this fails, the entry expires."""
        revision, self.revision, self.deadline = self.revision, 0, 0.0
        if revision == 0:
            return
        try:
            await self._js().publish(
                self.subject,
                b"",
                timeout=self._request_seconds,
                headers={_OPERATION: "DEL", _EXPECTED: str(revision)},
            )
        except (nats.errors.Error, OSError) as error:
            log.info("lease left to expire", extra={"key": self.key, "error": repr(error)})

    async def _write(self, expected: int) -> bool:
        value = Holder(
            holder=self.holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            written_at=datetime.now(UTC),
        )
        sent = self.clock()
        try:
            ack = await self._js().publish(
                self.subject,
                msgspec.json.encode(value),
                timeout=self._request_seconds,
                headers={_EXPECTED: str(expected)},
                msg_ttl=self.ttl,
            )
        except APIError as error:
            if error.err_code in _WRONG_LAST_SEQUENCE:
                self.lost()
                return False
            raise
        self.revision = ack.seq
        self.renewed_at = sent
        self.deadline = sent + self.ttl - self.margin
        return True

    def lost(self) -> None:
        """Believe the lease is not held (until ``take`` or ``renew`` says otherwise)."""
        self.revision, self.deadline = 0, 0.0


Hook = Callable[[], Awaitable[None]]


class Leader:
    """Keeps taking or renewing ``lease`` and runs ``lead`` when this process becomes the
    active one, ``follow`` when it stops being it (and at start, as a standby).

    Two tasks: one writes the lease (takes it every ``poll`` seconds while another holds
    it; renews it every third of its time to live, and again every ``retry`` seconds
    after a renewal that failed, until its deadline), the other runs the hooks one at a
    time, so a slow ``lead`` (a standby catching up) never delays a renewal. Acts are
    gated by ``acting()``, true only while the lease is held: the hooks make the process
    stop consuming and serving, the gate makes sure nothing slips through meanwhile."""

    def __init__(
        self,
        lease: Lease,
        service: str,
        lead: Hook,
        follow: Hook,
        *,
        force_first: bool = False,
        poll: float | None = None,
    ) -> None:
        self.lease = lease
        self.service = service
        self._lead = lead
        self._follow = follow
        self._force_first = force_first
        self.poll = poll if poll is not None else max(lease.ttl / 6, 0.1)
        self.retry = max(lease.ttl / 12, 0.05)
        self.active = False  # whether ``lead`` ran last (``follow``: False)
        self._led_term = -1
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.gauge = metrics.LEADER.labels(service)
        self.gauge.set(0)
        self.takeovers = metrics.LEASE_TAKEOVERS.labels(service)

    def acting(self) -> bool:
        """Whether this process may act now (it holds the lease)."""
        return self.lease.held()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep(), name=f"{self.service}-lease"),
            asyncio.create_task(self._turn(), name=f"{self.service}-leadership"),
        ]

    async def stop(self) -> None:
        """Stop writing and turning (the service then stops what it runs); the lease is
        held until ``release`` or its deadline."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def release(self) -> None:
        was = self.lease.revision > 0
        await self.lease.release()
        self.gauge.set(0)
        if was:
            log.info("lease released", extra={"key": self.lease.key})

    async def _keep(self) -> None:
        clock = self.lease.clock
        next_at = 0.0
        while True:
            if self.lease.revision == 0:
                force, self._force_first = self._force_first, False
                term = self.lease.term
                try:
                    took = await self.lease.take(force=force)
                except Exception as error:
                    log.warning("lease not taken", extra={"error": repr(error)})
                    took = False
                if took:
                    next_at = self.lease.renewed_at + self.lease.ttl / 3
                    if self.lease.term != term:
                        self.takeovers.inc()
                        log.info(
                            "lease taken: this process is the active one",
                            extra={"key": self.lease.key, "holder": self.lease.holder},
                        )
                    self._changed.set()
                    continue
                await asyncio.sleep(self.poll)
                continue
            await asyncio.sleep(max(0.0, min(next_at, self.lease.deadline) - clock()))
            if not self.lease.held():
                self._fenced("its deadline passed before it was renewed")
                continue
            try:
                async with asyncio.timeout(max(self.lease.deadline - clock(), 0.01)):
                    kept = await self.lease.renew()
            except Exception as error:
                if not self.lease.held():
                    self._fenced(f"not renewed: {error!r}")
                else:
                    log.warning("lease not renewed; trying again", extra={"error": repr(error)})
                    next_at = clock() + self.retry
                continue
            if not kept:
                self._fenced("another process holds it")
            elif not self.lease.held():
                # Confirmed only after the deadline it set (a pause): look again.
                self._fenced("renewed too late")
            else:
                next_at = self.lease.renewed_at + self.lease.ttl / 3

    def _fenced(self, why: str) -> None:
        self.lease.lost()
        log.warning("lease lost: this process stops acting", extra={"why": why})
        self._changed.set()

    async def _turn(self) -> None:
        self.gauge.set(0)
        await self._follow()  # a standby until it holds the lease
        while True:
            await self._changed.wait()
            self._changed.clear()
            held, term = self.lease.held(), self.lease.term
            try:
                if self.active and (not held or term != self._led_term):
                    # Lost (or lost and taken again: another may have acted meanwhile).
                    self.active = False
                    self.gauge.set(0)
                    await self._follow()
                if held and not self.active:
                    self.active = True
                    self._led_term = term
                    self.gauge.set(1)
                    await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the change of roles failed; letting the lease go")
                # Not acting as it should: another process may.
                await self.lease.release()
                self._changed.set()
                await asyncio.sleep(self.poll)
