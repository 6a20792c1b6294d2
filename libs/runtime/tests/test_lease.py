"""The lease that makes one process of a service the active one (``lease``), on real NATS.

Two processes are two ``Lease`` objects on their own connections, with clocks of their
own where a test needs one to stand still (a paused process)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.aio.client import Client as NatsClient

from aether_runtime import metrics
from aether_runtime.lease import (
    LEASES_STREAM,
    Leader,
    Lease,
    ensure_leases_bucket,
)


@pytest.fixture
async def js(nc: NatsClient) -> nats.js.JetStreamContext:
    js = nc.jetstream()
    await ensure_leases_bucket(js)
    return js


async def other(nats_url: str) -> NatsClient:
    return await nats.connect(nats_url)


class PausableClock:
    """A monotonic clock that can jump ahead, as a process's does across a SIGSTOP."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


async def test_only_one_of_two_takes_the_lease_and_the_other_takes_it_once_it_expires(
    js: nats.js.JetStreamContext, nats_url: str
) -> None:
    nc2 = await other(nats_url)
    try:
        first = Lease(lambda: js, "svc", ttl=2)
        second = Lease(lambda: nc2.jetstream(), "svc", ttl=2)
        assert await first.take()
        assert not await second.take()
        assert first.held() and not second.held()
        # Renewed, it stays the holder's.
        assert await first.renew()
        assert not await second.take()
        # Unrenewed, the server drops it after its time to live; the holder stopped
        # believing it holds it before then.
        began = time.monotonic()
        while first.held():
            await asyncio.sleep(0.05)
        given_up = time.monotonic()
        while not await second.take():
            await asyncio.sleep(0.1)
        taken = time.monotonic()
        assert given_up <= taken
        assert taken - began < 2 + 2.5  # the TTL and the server's expiry granularity
        # The old holder finds it lost, and cannot take it back.
        assert not await first.renew()
        assert not await first.take()
        assert second.held() and not first.held()
    finally:
        await nc2.close()


async def test_two_taking_at_once_never_both_hold_it(
    js: nats.js.JetStreamContext, nats_url: str
) -> None:
    clients = [await other(nats_url) for _ in range(4)]
    try:
        leases = [Lease(lambda c=c: c.jetstream(), "race", ttl=5) for c in clients]
        results = await asyncio.gather(*(lease.take() for lease in leases))
        assert sum(results) == 1
        assert sum(lease.held() for lease in leases) == 1
    finally:
        for client in clients:
            await client.close()


async def test_a_paused_holder_does_not_hold_it_past_its_deadline_and_finds_it_taken(
    js: nats.js.JetStreamContext, nats_url: str
) -> None:
    nc2 = await other(nats_url)
    try:
        clock = PausableClock()
        paused = Lease(lambda: js, "paused", ttl=2, clock=clock)
        standby = Lease(lambda: nc2.jetstream(), "paused", ttl=2)
        assert await paused.take()
        # Its clock moves past the deadline as across a pause: it stops believing at once,
        # before it has heard anything from the bus.
        clock.skipped = paused.ttl
        assert not paused.held()
        while not await standby.take():
            await asyncio.sleep(0.1)
        assert not await paused.renew()
        assert not paused.held() and standby.held()
    finally:
        await nc2.close()


async def test_a_released_lease_is_taken_at_once_and_an_only_process_takes_over_a_dead_ones(
    js: nats.js.JetStreamContext, nats_url: str
) -> None:
    nc2 = await other(nats_url)
    try:
        first = Lease(lambda: js, "released", ttl=30)
        second = Lease(lambda: nc2.jetstream(), "released", ttl=30)
        assert await first.take()
        await first.release()
        assert not first.held()
        assert await second.take()  # no waiting out the 30 s
        # A process that knows it is the only one takes over from a predecessor that died
        # holding it (``AETHER_ONE_PROCESS``).
        successor = Lease(lambda: js, "released", ttl=30)
        assert not await successor.take()
        assert await successor.take(force=True)
        assert not await second.renew()
    finally:
        await nc2.close()


async def test_a_write_whose_answer_was_lost_is_recognised_as_the_holders_own(
    js: nats.js.JetStreamContext,
) -> None:
    lease = Lease(lambda: js, "lost-answer", ttl=5)
    assert await lease.take()
    stale = lease.revision
    assert await lease.renew()
    # As if the second write's answer never came: the holder still expects the first.
    lease.revision = stale
    assert await lease.renew()
    assert lease.held()


async def test_the_entry_expires_by_the_writers_own_time_to_live(
    js: nats.js.JetStreamContext,
) -> None:
    """No process's setting decides another's expiry: each write carries its own."""
    lease = Lease(lambda: js, "ttl", ttl=2)
    assert await lease.take()
    info = await js.stream_info(LEASES_STREAM)
    assert info.config.allow_msg_ttl
    assert not info.config.max_age
    stored = await js.get_last_msg(LEASES_STREAM, lease.subject, direct=True)
    assert (stored.headers or {}).get("Nats-TTL") == "2"


async def test_a_leader_leads_follows_and_hands_over_when_it_stops(
    js: nats.js.JetStreamContext, nats_url: str
) -> None:
    nc2 = await other(nats_url)
    roles: dict[str, list[str]] = {"a": [], "b": []}
    changed = asyncio.Event()

    def leader(name: str, client: NatsClient) -> Leader:
        async def lead() -> None:
            roles[name].append("lead")
            changed.set()

        async def follow() -> None:
            roles[name].append("follow")
            changed.set()

        lease = Lease(lambda: client.jetstream(), "leader", ttl=3)
        return Leader(lease, f"test-{name}", lead, follow)

    async def until(predicate: object, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                changed.clear()
                await changed.wait()

    nc1 = await other(nats_url)
    a = leader("a", nc1)
    b = leader("b", nc2)
    try:
        a.start()
        await until(lambda: roles["a"] == ["follow", "lead"])
        b.start()
        await until(lambda: roles["b"] == ["follow"])
        assert a.acting() and not b.acting()
        takeovers = metrics.LEASE_TAKEOVERS.labels("test-b")._value.get()
        assert metrics.LEADER.labels("test-a")._value.get() == 1
        assert metrics.LEADER.labels("test-b")._value.get() == 0
        await a.stop()
        await a.release()
        await until(lambda: roles["b"] == ["follow", "lead"], timeout=5)
        assert b.acting() and not a.acting()
        assert metrics.LEASE_TAKEOVERS.labels("test-b")._value.get() == takeovers + 1
        assert metrics.LEADER.labels("test-b")._value.get() == 1
    finally:
        await b.stop()
        await a.stop()
        await nc1.close()
        await nc2.close()


async def test_a_leader_past_its_deadline_stops_acting_at_once_and_stands_by(
    js: nats.js.JetStreamContext, nats_url: str
) -> None:
    nc2 = await other(nats_url)
    roles: list[str] = []
    changed = asyncio.Event()

    async def lead() -> None:
        roles.append("lead")
        changed.set()

    async def follow() -> None:
        roles.append("follow")
        changed.set()

    clock = PausableClock()
    paused = Leader(Lease(lambda: js, "fence", ttl=3, clock=clock), "test-fence", lead, follow)
    other_one = Lease(lambda: nc2.jetstream(), "fence", ttl=3)
    try:
        paused.start()
        async with asyncio.timeout(10):
            while roles != ["follow", "lead"]:
                changed.clear()
                await changed.wait()
        # Paused past its deadline, and another took the lease meanwhile.
        await paused.lease.release()  # (the entry gone, as once expired)
        assert await other_one.take()
        clock.skipped = 10.0
        assert not paused.acting()
        async with asyncio.timeout(10):
            while roles != ["follow", "lead", "follow"]:
                changed.clear()
                await changed.wait()
        assert not paused.acting() and other_one.held()
    finally:
        await paused.stop()
        await nc2.close()
