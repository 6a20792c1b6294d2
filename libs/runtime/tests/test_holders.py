"""Asking the processes of a service what they hold (``reconnect.Holders``), on real NATS.

After a server restart each process reconnects on a timer of its own; the one that asks
must not take a process that comes back later for one that holds nothing (what it holds
would be handed back and delivered twice), nor wait long for one that stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NatsClient

from aether_runtime.reconnect import Held, Holders

WINDOW = 0.2
PATIENCE = 3.0


@pytest.fixture
async def connect(nats_url: str) -> AsyncIterator[Callable[[], Awaitable[NatsClient]]]:
    clients: list[NatsClient] = []

    async def opened() -> NatsClient:
        client = await nats.connect(nats_url)
        clients.append(client)
        return client

    yield opened
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def service_prefix() -> str:
    """A service's own inbox prefix, new for each test."""
    return f"_INBOX.svc{uuid.uuid4().hex[:8]}"


def holders(nc: NatsClient, prefix: str, held: Held) -> Holders:
    return Holders(nc, prefix, lambda: set(held), window=WINDOW, patience=PATIENCE)


async def known(asker: Holders, *others: Holders) -> None:
    """Wait until ``asker`` knows of every one of ``others`` (they introduced
    themselves)."""
    async with asyncio.timeout(10):
        while not {o.ident for o in others} <= asker.peers:
            await asyncio.sleep(0.01)


async def test_a_process_that_comes_back_late_is_waited_for_and_what_it_holds_counted(
    connect: Callable[[], Awaitable[NatsClient]],
) -> None:
    prefix = service_prefix()
    late = holders(await connect(), prefix, {("work", 7)})
    asker = holders(await connect(), prefix, {("work", 9)})
    await late.serve()
    await asker.serve()
    await known(asker, late)
    await known(late, asker)
    # The late one is away (not reconnected yet) when the other asks...
    assert late._sub is not None
    await late._sub.unsubscribe()
    asking = asyncio.create_task(asker.ask())
    await asyncio.sleep(3 * WINDOW)  # well past the window
    assert not asking.done()
    # ...and answers once back.
    await late.serve()
    held, answered = await asking
    assert held == {("work", 7), ("work", 9)}
    assert answered == {late.ident, asker.ident}
    await late.stop()
    await asker.stop()


async def test_a_stopped_process_is_not_waited_for_and_a_killed_one_only_once(
    connect: Callable[[], Awaitable[NatsClient]],
) -> None:
    prefix = service_prefix()
    asker = holders(await connect(), prefix, set())
    stopped = holders(await connect(), prefix, {("work", 1)})
    await asker.serve()
    await stopped.serve()
    await known(asker, stopped)
    await stopped.stop()  # says so
    began = time.monotonic()
    held, answered = await asker.ask()
    assert time.monotonic() - began < PATIENCE
    assert held == set() and answered == {asker.ident}

    killed_nc = await connect()
    killed = holders(killed_nc, prefix, {("work", 2)})
    await killed.serve()
    await known(asker, killed)
    await killed_nc.close()  # says nothing
    began = time.monotonic()
    held, answered = await asker.ask()
    assert time.monotonic() - began >= PATIENCE  # waited for...
    assert held == set() and answered == {asker.ident}
    assert asker.peers == set()
    began = time.monotonic()
    await asker.ask()
    assert time.monotonic() - began < PATIENCE  # ...once: it is off the roster
    await asker.stop()


async def test_a_process_started_later_knows_the_ones_running(
    connect: Callable[[], Awaitable[NatsClient]],
) -> None:
    prefix = service_prefix()
    first = holders(await connect(), prefix, set())
    await first.serve()
    second = holders(await connect(), prefix, set())
    await second.serve()
    # Each learns of the other from the second's introduction: its request, its answers.
    await known(second, first)
    await known(first, second)
    # Another service's processes are not among them.
    other = holders(await connect(), f"{prefix}x", set())
    await other.serve()
    await asyncio.sleep(2 * WINDOW)
    assert other.ident not in first.peers | second.peers
    for one in (first, second, other):
        await one.stop()
