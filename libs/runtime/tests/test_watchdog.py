"""A process whose event loop is stuck ends itself (``watchdog``): one whose loop turns,
or that stopped watching, does not."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY

from aether_events import ensure_streams
from aether_runtime import RuntimeSettings, Service
from aether_runtime.watchdog import STUCK_EXIT_CODE, LoopWatchdog


def blocking_call(seconds: float) -> None:
    """What a stuck loop runs: a call that does not give the loop back."""
    time.sleep(seconds)


async def test_a_loop_that_does_not_turn_ends_the_process(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    ended: list[int] = []
    caplog.set_level(logging.CRITICAL, logger="aether.runtime")
    watchdog = LoopWatchdog(0.5, service="stuck", every=0.05, end=ended.append)
    watchdog.start()
    try:
        blocking_call(2.0)
        await asyncio.sleep(0)
    finally:
        watchdog.stop()
    assert ended == [STUCK_EXIT_CODE]
    # Where the loop was stuck, and why the process ends.
    assert "blocking_call" in capfd.readouterr().err
    (record,) = [r for r in caplog.records if "event loop stuck" in r.getMessage()]
    assert record.exit_code == STUCK_EXIT_CODE  # type: ignore[attr-defined]
    assert record.stuck_seconds >= 0.5  # type: ignore[attr-defined]


async def test_a_loop_that_turns_is_left_alone() -> None:
    ended: list[int] = []
    watchdog = LoopWatchdog(1.0, service="turning", every=0.05, end=ended.append)
    watchdog.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            # Busy, in steps shorter than the limit.
            blocking_call(0.1)
            await asyncio.sleep(0.01)
    finally:
        watchdog.stop()
    assert ended == []


async def test_a_stopped_watchdog_ends_nothing() -> None:
    ended: list[int] = []
    watchdog = LoopWatchdog(0.3, service="stopped", every=0.05, end=ended.append)
    watchdog.start()
    await asyncio.sleep(0.1)
    watchdog.stop()
    blocking_call(0.8)
    assert ended == []


def test_a_watchdog_whose_loop_closed_ends_nothing() -> None:
    """A service started on a loop that closed without stopping it (a test's loop): the
    loop no longer runs, so nothing is stuck."""
    ended: list[int] = []
    watchdog = LoopWatchdog(0.3, service="stopped", every=0.05, end=ended.append)

    async def start() -> None:
        watchdog.start()

    asyncio.run(start())
    time.sleep(0.8)
    assert ended == []
    assert watchdog._thread is not None
    watchdog._thread.join(1.0)
    assert not watchdog._thread.is_alive()


def lag_sum(service: str) -> float | None:
    return REGISTRY.get_sample_value("aether_event_loop_lag_seconds_sum", {"service": service})


async def test_the_loops_lag_is_how_late_it_ran_what_was_due() -> None:
    watchdog = LoopWatchdog(0, service="lagging", every=0.05)
    watchdog.start()
    try:
        await asyncio.sleep(0.3)
        before = lag_sum("lagging") or 0.0
        assert before < 0.1  # an idle loop runs what is due on time
        blocking_call(0.4)
        await asyncio.sleep(0.2)
        after = lag_sum("lagging") or 0.0
    finally:
        watchdog.stop()
    assert 0.3 <= after - before < 1.0
    assert watchdog._thread is None  # 0: it never ends the process


def test_a_stuck_process_exits_with_its_stacks_and_a_log_line() -> None:
    """The real ending, in a process of its own: the exit code a supervisor sees, the
    stacks on standard error and the JSON log line."""
    script = textwrap.dedent(
        """
        import asyncio, time
        from aether_runtime.logs import configure_logging
        from aether_runtime.watchdog import LoopWatchdog

        def stuck_in_here():
            time.sleep(30)

        async def main():
            LoopWatchdog(0.5, service="watched", every=0.1).start()
            stuck_in_here()

        configure_logging("watched")
        asyncio.run(main())
        """
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == STUCK_EXIT_CODE
    assert time.monotonic() - began < 20
    assert "stuck_in_here" in done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (line,) = [entry for entry in lines if "event loop stuck" in entry.get("msg", "")]
    assert line["level"] == "critical"
    assert line["service"] == "watched"


def test_a_process_paused_whole_is_not_stuck() -> None:
    """SIGSTOP stops the watchdog's thread with the loop: once continued, the loop gets
    its time again rather than the process ending. The loop works in steps of 0.3 s of
    CPU, which a pause does not shorten: continued mid-step, it pats the watchdog only
    once the step is done, after the watchdog has looked."""
    script = textwrap.dedent(
        """
        import asyncio, time
        from aether_runtime.watchdog import LoopWatchdog

        def step():
            began = time.process_time()
            while time.process_time() - began < 0.3:
                pass

        async def main():
            LoopWatchdog(3.0, service="paused", every=0.05).start()
            print("watching", flush=True)
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                step()
                await asyncio.sleep(0)

        asyncio.run(main())
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "watching"
        time.sleep(0.7)
        process.send_signal(signal.SIGSTOP)
        time.sleep(3.5)  # longer than the limit
        process.send_signal(signal.SIGCONT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err


async def test_a_service_watches_its_loop_while_it_runs(nats_url: str, nc: NatsClient) -> None:
    await ensure_streams(nc.jetstream())
    watched = Service(
        name="watched",
        settings=RuntimeSettings(nats_url=nats_url, port=0, loop_stall_seconds=30),
        bus_poll_seconds=0,
    )
    unwatched = Service(
        name="unwatched",
        settings=RuntimeSettings(nats_url=nats_url, port=0, loop_stall_seconds=0),
        bus_poll_seconds=0,
    )
    for service in (watched, unwatched):
        await service.start()
    try:
        assert watched._watchdog is not None
        assert watched._watchdog.stall_seconds == 30
        assert watched._watchdog._thread is not None
        # Told never to end the process: no thread, the loop's lag still reported.
        assert unwatched._watchdog is not None
        assert unwatched._watchdog._thread is None
        # Longer than a pat's interval (a second): one falls due while the loop is held.
        blocking_call(1.2)
        await asyncio.sleep(0.1)
        assert (lag_sum("unwatched") or 0.0) >= 0.15
    finally:
        for service in (watched, unwatched):
            await service.stop()
    assert watched._watchdog is None
