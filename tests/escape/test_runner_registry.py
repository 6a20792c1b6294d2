"""The registry of live runners on the bus, against the NATS server ``aether up`` starts
with its generated configuration (auth callout included) and the authorizer connected as
the scheduler's user (``aether_runtime.runners``).

A runner writes its own entry with a credential the authorizer grants for that entry's
subject only, and only to the runner whose secret was derived for the name it asks under:
it cannot write another runner's entry nor ask a credential under another runner's name,
the runners' static user writes none, the gateway and the runners read them, and the entry
of a runner that died expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from aether.stack import Stack
from aether_events import StreamSettings, ensure_streams
from aether_runtime.attempt_auth import AttemptAuthorizer, Grants
from aether_runtime.roles import ROLES
from aether_runtime.runners import (
    RUNNERS_STREAM,
    Announcer,
    RunnerEntry,
    ensure_bucket,
    entry_subject,
    own_connection,
    read_runners,
    runner_inbox,
    runner_user,
)

# Short, so that a dead runner's entry is gone within the test.
ENTRY_SECONDS = 2.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="aether-escape-runners-"))
    stack = Stack(home=home, random_ports=True, prestart=False, env={})
    stack.start_infrastructure()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


async def _connect(stack: Stack, service: str, errors: list[str] | None = None) -> NatsClient:
    async def on_error(error: Exception) -> None:
        if errors is not None:
            errors.append(str(error))

    return await nats.connect(
        stack.nats_server_url,
        user=service,
        password=stack.nats_passwords[service],
        inbox_prefix=f"_INBOX.{service}",
        error_cb=on_error,
    )


@pytest.fixture
async def scheduler(stack: Stack) -> AsyncIterator[NatsClient]:
    async with scheduling(stack) as nc:
        yield nc


@contextlib.asynccontextmanager
async def scheduling(stack: Stack) -> AsyncIterator[NatsClient]:
    """The scheduler's side: it makes the streams and the bucket, and grants credentials."""
    nc = await _connect(stack, "scheduler")
    js = nc.jetstream()
    await ensure_streams(js, StreamSettings())
    await ensure_bucket(js, ENTRY_SECONDS)
    authorizer = AttemptAuthorizer(
        issuer_seed=stack.attempt_issuer_seed,
        master=stack.runner_master_secret,
        grants=Grants(lambda key: False),
        types=ROLES["agent-runner"].attempt_publishes,
    )
    await authorizer.serve(nc)
    try:
        yield nc
    finally:
        await authorizer.stop()
        await nc.close()


@pytest.fixture
async def gateway(stack: Stack, scheduler: NatsClient) -> AsyncIterator[NatsClient]:
    nc = await _connect(stack, "gateway")
    try:
        yield nc
    finally:
        await nc.close()


def entry(runner_id: str, runtimes: tuple[str, ...] = ("builtin",)) -> RunnerEntry:
    return RunnerEntry(
        runner_id=runner_id,
        host="host-1",
        runtimes=list(runtimes),
        default_runtime="builtin",
        lanes=2,
        version="0.1.0",
        announced_at=datetime.now(UTC),
        refresh_seconds=ENTRY_SECONDS / 3,
    )


def announcer(stack: Stack, runner_id: str, runtimes: tuple[str, ...] = ("builtin",)) -> Announcer:
    """The runner ``runner_id``, whose name is its id, writing with its own secret."""
    return Announcer(
        lambda: entry(runner_id, runtimes),
        ENTRY_SECONDS / 3,
        name=runner_id,
        connect=own(stack, runner_id),
    )


def own(
    stack: Stack, name: str, runner_id: str | None = None
) -> Callable[[], Awaitable[NatsClient]]:
    """Connects as runner ``runner_id`` (default: ``name``) of name ``name`` with the secret
    of that name."""
    return own_connection(stack.nats_server_url, name, runner_id or name, stack.runner_secret(name))


async def runner_connection(
    stack: Stack, name: str, runner_id: str, secret: str, errors: list[str] | None = None
) -> NatsClient:
    """A raw connection as runner ``runner_id`` called ``name``, with ``secret``."""

    async def on_error(error: Exception) -> None:
        if errors is not None:
            errors.append(str(error))

    return await nats.connect(
        stack.nats_server_url,
        user=runner_user(name, runner_id),
        password=secret,
        inbox_prefix=runner_inbox(name, runner_id),
        error_cb=on_error,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        # The answer comes from the authorizer, through the server: wait for it.
        connect_timeout=30,
    )


async def until(check: object, within: float = 20.0) -> None:
    """Wait for ``check()`` (an async predicate) to hold, asking every 50 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never held")


async def ids(nc: NatsClient) -> list[str]:
    return [runner.runner_id for runner in await read_runners(nc.jetstream())]


async def test_a_runner_writes_its_own_entry_and_the_gateway_reads_it(
    stack: Stack, gateway: NatsClient
) -> None:
    own = announcer(stack, "r-own", ("builtin", "claude-code"))
    await own.announce()
    try:
        runners = await read_runners(gateway.jetstream())
        mine = [runner for runner in runners if runner.runner_id == "r-own"]
        assert [runner.runtimes for runner in mine] == [["builtin", "claude-code"]]
        assert mine[0].lanes == 2
    finally:
        await own.stop()
    # Deleted as it stops: gone at once, not when it would have expired.
    assert "r-own" not in await ids(gateway)


async def test_a_runner_cannot_write_another_runners_entry(
    stack: Stack, gateway: NatsClient
) -> None:
    victim = announcer(stack, "r-victim", ("builtin",))
    await victim.announce()
    errors: list[str] = []
    thief = await runner_connection(
        stack, "r-thief", "r-thief", stack.runner_secret("r-thief"), errors
    )
    try:
        forged = msgspec.json.encode(entry("r-victim", ("forged",)))
        victims = entry_subject("r-victim", "r-victim")
        with pytest.raises(nats.errors.TimeoutError):
            await thief.jetstream().publish(victims, forged, timeout=1.0)
        assert any(
            "permissions violation" in error.lower() and "r-victim" in error for error in errors
        ), errors
        # Nor delete it.
        with pytest.raises(nats.errors.TimeoutError):
            await thief.jetstream().publish(
                victims, b"", timeout=1.0, headers={"KV-Operation": "DEL"}
            )
        # Its own entry it may write.
        await thief.jetstream().publish(
            entry_subject("r-thief", "r-thief"), msgspec.json.encode(entry("r-thief"))
        )
        runners = {r.runner_id: r for r in await read_runners(gateway.jetstream())}
        assert runners["r-victim"].runtimes == ["builtin"]
        assert "r-thief" in runners
    finally:
        await thief.close()
        await victim.stop()


async def test_a_runner_cannot_ask_a_credential_under_another_runners_name(
    stack: Stack, gateway: NatsClient
) -> None:
    """A runner's secret is derived for its own name: asked under another runner's name it
    is refused, so the other's entry can be neither overwritten nor deleted; under its own
    name it is granted. (With one secret shared by every runner, the thief was granted the
    victim's credential and replaced its entry.)"""
    victim = announcer(stack, "r-named-victim", ("builtin",))
    victim.start()  # kept written: its entry outlives the test's refusals
    await asyncio.wait_for(victim.written.wait(), 30)
    thiefs = stack.runner_secret("r-named-thief")
    try:
        forged_entry = msgspec.json.encode(entry("r-named-victim", ("forged",)))
        refusals: list[str] = []
        for runner_id in ("r-named-victim", "r-named-thief"):
            try:
                forged = await runner_connection(stack, "r-named-victim", runner_id, thiefs)
            except nats.errors.Error as refusal:
                refusals.append(str(refusal).lower())
                continue
            # Granted: what the credential allows, then the failure that it was.
            await forged.jetstream().publish(
                entry_subject("r-named-victim", runner_id), forged_entry
            )
            await forged.jetstream().publish(
                entry_subject("r-named-victim", "r-named-victim"),
                b"",
                headers={"KV-Operation": "DEL"},
            )
            await forged.close()
            pytest.fail(f"granted runner {runner_id!r} of another runner's name")
        assert len(refusals) == 2 and all("authoriz" in r for r in refusals), refusals
        # Its own name's credential it is granted, for any id of its own.
        mine = await runner_connection(stack, "r-named-thief", "r-named-thief-2", thiefs)
        await mine.jetstream().publish(
            entry_subject("r-named-thief", "r-named-thief-2"),
            msgspec.json.encode(entry("r-named-thief-2")),
        )
        await mine.jetstream().publish(
            entry_subject("r-named-thief", "r-named-thief-2"),
            b"",
            headers={"KV-Operation": "DEL"},
        )
        await mine.close()
        runners = {r.runner_id: r for r in await read_runners(gateway.jetstream())}
        assert runners["r-named-victim"].runtimes == ["builtin"]
    finally:
        await victim.stop()


async def test_no_static_user_writes_the_registry_and_only_the_gateway_and_runners_read_it(
    stack: Stack, scheduler: NatsClient
) -> None:
    for service in ("agent-runner", "planner", "git-broker"):
        errors: list[str] = []
        nc = await _connect(stack, service, errors)
        try:
            js = nc.jetstream()
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish(
                    entry_subject("r-any", "r-any"),
                    msgspec.json.encode(entry("r-any")),
                    timeout=1.0,
                )
            if service == "agent-runner":
                # It reads which runtimes the others have, to hand an attempt on to one.
                await js.stream_info(RUNNERS_STREAM)
                assert isinstance(await read_runners(js), list)
            else:
                with pytest.raises(nats.errors.Error):
                    await js.stream_info(RUNNERS_STREAM)
            assert any("permissions violation" in error.lower() for error in errors), errors
        finally:
            await nc.close()


async def test_a_credential_without_the_runners_secret_is_refused(
    stack: Stack, scheduler: NatsClient
) -> None:
    for secret in (
        "not-the-secret",
        stack.runner_master_secret,
        stack.nats_passwords["agent-runner"],
    ):
        with pytest.raises(nats.errors.Error, match=r"(?i)authoriz"):
            await runner_connection(stack, "r-guess", "r-guess", secret)


async def test_a_dead_runners_entry_expires(stack: Stack, gateway: NatsClient) -> None:
    dead = announcer(stack, "r-dead")
    await dead.announce()
    assert "r-dead" in await ids(gateway)
    # It dies: no deletion, no more writes; the bucket drops the entry once it is old.
    await dead._close()

    async def gone() -> bool:
        return "r-dead" not in await ids(gateway)

    await until(gone, within=ENTRY_SECONDS * 5)


async def test_a_live_runner_keeps_its_entry_past_its_age(
    stack: Stack, gateway: NatsClient
) -> None:
    """The control of the one above: written every third of its age, it stays."""
    live = announcer(stack, "r-live")
    live.start()
    try:
        await asyncio.wait_for(live.written.wait(), 30)
        loop = asyncio.get_running_loop()
        past = loop.time() + ENTRY_SECONDS * 2
        while loop.time() < past:
            assert "r-live" in await ids(gateway)
            await asyncio.sleep(0.2)
    finally:
        await live.stop()


async def test_a_runner_started_before_the_scheduler_is_announced_soon_after_it(
    stack: Stack,
) -> None:
    """A stack starts its services together: the runner's first writes are refused until
    the scheduler answers for its credential. It writes again soon, not a refresh later."""
    early = Announcer(
        lambda: entry("r-early"),
        60.0,
        name="r-early",
        connect=own(stack, "r-early"),
    )
    early.start()
    try:
        await asyncio.wait_for(early.failed.wait(), 30)
        assert not early.written.is_set()
        async with scheduling(stack):
            await asyncio.wait_for(early.written.wait(), 15)
    finally:
        await early.stop()


async def test_a_runner_cannot_roll_the_whole_registry_up_from_its_own_entry(
    stack: Stack, gateway: NatsClient
) -> None:
    """``Nats-Rollup: all`` on a runner's own subject would have the server purge every
    other message of the stream, every other runner's entry with them; ``sub`` would
    only roll up its own subject, but neither is needed by a runner."""
    victim = announcer(stack, "r-rolled", ("builtin",))
    await victim.announce()
    thief = await runner_connection(stack, "r-roller", "r-roller", stack.runner_secret("r-roller"))
    try:
        own_subject = entry_subject("r-roller", "r-roller")
        for rollup in ("all", "sub"):
            with contextlib.suppress(nats.js.errors.APIError):
                await thief.jetstream().publish(
                    own_subject,
                    msgspec.json.encode(entry("r-roller")),
                    timeout=5.0,
                    headers={"Nats-Rollup": rollup},
                )
        runners = {r.runner_id: r for r in await read_runners(gateway.jetstream())}
        assert "r-rolled" in runners, sorted(runners)
        assert runners["r-rolled"].runtimes == ["builtin"]
        # The server refuses the header on this stream outright.
        with pytest.raises(nats.js.errors.APIError, match="rollup"):
            await thief.jetstream().publish(
                own_subject, b"{}", timeout=5.0, headers={"Nats-Rollup": "all"}
            )
        # Its own plain writes still go through.
        await thief.jetstream().publish(own_subject, msgspec.json.encode(entry("r-roller")))
    finally:
        await thief.close()
        await victim.stop()
