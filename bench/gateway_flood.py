"""How long the gateway takes to answer while it folds a flood of transcript entries.

Starts embedded NATS and PostgreSQL and the gateway (its own process), makes a mission
with a task under way, then measures the time to answer ``GET /board/`` (the board's
page, static), ``GET /healthz`` and ``GET /missions`` (a cheap read of the read model):
first with nothing to fold, then while the gateway folds each flood of ``--floods``
transcript entries (``TranscriptEntries`` of ``--batch`` entries each, published on the
administrator's connection as an attempt's credential could publish them), and how long
a mission event published at the flood's start takes to reach the read model. The
requests are made one after another from a thread of their own (its own connection, as
a browser's), so the publishing does not delay them.

    uv run python bench/gateway_flood.py [--floods 2600,20000] [--batch 64] [--quiet-seconds 5]

A figure, not a test: it prints numbers and never fails on them. The machine's load
shows in them (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats

from aether import prestart
from aether.stack import Stack
from aether_events import (
    AgentStarted,
    EventPublisher,
    MissionMessagePosted,
    MissionRequested,
    PlanApproved,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskReady,
    TranscriptEntries,
    TranscriptRecorded,
    derived_id,
    ensure_streams,
    new_mission_id,
)
from aether_events.publisher import send_in_order

PATHS = ("/board/", "/healthz", "/missions")


class Script:
    def __init__(self, mission_id: str) -> None:
        self.mission_id = mission_id
        self.n = 0
        self.now = datetime.now(UTC)

    def meta(self) -> dict[str, Any]:
        self.n += 1
        self.now += timedelta(milliseconds=1)
        return {
            "event_id": derived_id(self.mission_id, "flood", self.n),
            "mission_id": self.mission_id,
            "occurred_at": self.now,
            "correlation_id": derived_id("request", self.mission_id),
        }


def started(s: Script) -> list[Any]:
    task = PlannedTask(id="t1", title="flooded", files=["big.txt"])
    return [
        MissionRequested(**s.meta(), repository="/srv/bench", requirement="bench", budget_usd=50),
        RepositoryPrepared(
            **s.meta(),
            repository_path="/srv/bench",
            base_branch="main",
            base_sha="a" * 40,
            integration_branch=f"aether/{s.mission_id}",
        ),
        PlanProduced(**s.meta(), version=1, tasks=[task], rationale="bench", model="bench"),
        PlanApproved(**s.meta(), version=1),
        TaskReady(**s.meta(), task=task, attempt=1, model="bench", wave=0),
        AgentStarted(**s.meta(), task_id="t1", attempt=1, runner_id="r1", model="bench"),
    ]


def flood(s: Script, first: int, count: int, batch: int) -> list[TranscriptEntries]:
    entries = [
        TranscriptRecorded(
            **s.meta(),
            task_id="t1",
            attempt=1,
            runner_id="r1",
            sequence=n,
            kind="command",
            runtime="builtin",
            tool="run_command",
            arguments='{"command": "yes"}',
            result=f"line {n}\n" * 8,
            exit_code=0,
        )
        for n in range(first, first + count)
    ]
    return [
        TranscriptEntries(
            **s.meta(), task_id="t1", attempt=1, runner_id="r1", entries=entries[at : at + batch]
        )
        for at in range(0, count, batch)
    ]


class Prober:
    """Asks each of ``PATHS`` in turn, one request at a time, until stopped."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self._client = httpx.Client(base_url=base_url, headers=headers, timeout=120)
        self._stop = threading.Event()
        self.times: dict[str, list[float]] = {path: [] for path in PATHS}
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in PATHS:
                began = time.perf_counter()
                answer = self._client.get(path)
                took = time.perf_counter() - began
                answer.raise_for_status()
                self.times[path].append(took)
            self._stop.wait(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


def line(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"  {label:<10} n={len(times):<5} p50 {1000 * statistics.median(ordered):8.1f} ms"
        f"   p99 {1000 * p99:8.1f} ms   max {1000 * ordered[-1]:8.1f} ms"
    )


async def last_stored(http: httpx.AsyncClient, mission_id: str, sequence: int) -> bool:
    page = await http.get(
        f"/missions/{mission_id}/tasks/t1/transcript",
        params={"after_attempt": 1, "after": sequence - 1},
    )
    return bool(page.json().get("entries"))


async def message_seen(http: httpx.AsyncClient, mission_id: str, text: str) -> bool:
    page = await http.get(
        "/events", params={"mission_id": mission_id, "type": "mission_message_posted"}
    )
    return text in page.text


async def run(floods: list[int], batch: int, quiet_seconds: float) -> None:
    home = Path(tempfile.mkdtemp(prefix="aether-bench-flood-"))
    stack = Stack(home=home / "stack", random_ports=True, prestart=prestart.shared())
    await asyncio.to_thread(stack.start_infrastructure)
    nc = await nats.connect(stack.nats_url)
    await ensure_streams(nc.jetstream())
    stack.start_service("gateway")
    try:
        publisher = EventPublisher(nc.jetstream())
        async with httpx.AsyncClient(
            base_url=stack.gateway_url, headers=stack.auth_headers, timeout=120
        ) as http:
            for _ in range(600):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            s = Script(new_mission_id())
            await publisher.publish_all(started(s))
            for _ in range(600):
                if (await http.get(f"/missions/{s.mission_id}")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            with Prober(stack.gateway_url, stack.auth_headers) as quiet:
                await asyncio.sleep(quiet_seconds)
            print(
                f"gateway answers ({os.cpu_count()} cores, load average "
                f"{os.getloadavg()[0]:.1f}), one request at a time"
            )
            print(f"nothing to fold ({quiet_seconds:.0f} s):")
            for path in PATHS:
                print(line(path, quiet.times[path]))
            first = 0
            for count in floods:
                events = flood(s, first, count, batch)
                first += count
                text = f"flood of {count} at {time.time()}"
                posted = MissionMessagePosted(**s.meta(), text=text, author="bench")
                with Prober(stack.gateway_url, stack.auth_headers) as busy:
                    began = time.perf_counter()
                    sending = await send_in_order(publisher, events)
                    await asyncio.gather(*sending)
                    published = time.perf_counter() - began
                    await publisher.publish(posted)
                    message_at: float | None = None
                    while not await last_stored(http, s.mission_id, first - 1):
                        if message_at is None and await message_seen(http, s.mission_id, text):
                            message_at = time.perf_counter() - began
                        await asyncio.sleep(0.2)
                    folded = time.perf_counter() - began
                    while message_at is None:
                        if await message_seen(http, s.mission_id, text):
                            message_at = time.perf_counter() - began
                        else:
                            await asyncio.sleep(0.05)
                print(
                    f"while folding {count} entries ({len(events)} messages, published in "
                    f"{published:.1f} s, folded {folded:.1f} s after the first was sent; "
                    f"a mission event published after them in the read model at "
                    f"{message_at:.1f} s; load average {os.getloadavg()[0]:.1f}):"
                )
                for path in PATHS:
                    print(line(path, busy.times[path]))
        await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--floods", default="2600,20000", help="entries per flood, comma-separated")
    parser.add_argument(
        "--batch", type=int, default=64, help="entries per message (the runner sends 64 at most)"
    )
    parser.add_argument("--quiet-seconds", type=float, default=5.0)
    args = parser.parse_args()
    floods = [int(n) for n in args.floods.split(",") if n]
    asyncio.run(run(floods, args.batch, args.quiet_seconds))


if __name__ == "__main__":
    main()
