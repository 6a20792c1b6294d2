"""The gateway's CPU per folded event, in one process, with no bus and no other service.

Chained missions (the events ``scheduler_fold`` plays through the scheduler's core) are
folded into a fresh read model in an embedded PostgreSQL the way the live consumer
folds them: each event alone (``ReadModel.take_items`` with one item), or in runs of
``--run`` consecutive events (a burst the mission linger gathers); and the telemetry of
each task (a heartbeat, a progress report and four transcript entries, about what a
chained task sends in ``bench/overhead.py``) alone, as it is folded live. The figure is the
gateway process's own CPU time (``time.process_time``) per event; PostgreSQL's work is
in its own process and not counted. Alternating ``--rounds`` keeps the two modes under
the same load.

    uv run python bench/gateway_fold.py [--missions 4] [--tasks 30] [--run 3]
        [--rounds 3] [--profile FILE]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scheduler_fold import finished_missions

from aether.infra import EmbeddedPostgres
from aether_events import (
    AgentCompleted,
    AgentHeartbeat,
    AgentProgress,
    Event,
    TranscriptRecorded,
)
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.read_model import ReadModel
from aether_gateway.adapters.stream import Incoming


def telemetry_of(events: list[Event]) -> list[Incoming]:
    """Per finished agent: a heartbeat, a progress report and four transcript entries."""
    out: list[Event] = []
    for done in events:
        if not isinstance(done, AgentCompleted):
            continue
        meta = {
            "mission_id": done.mission_id,
            "occurred_at": done.occurred_at,
            "correlation_id": done.correlation_id,
        }
        agent = {"task_id": done.task_id, "attempt": done.attempt, "runner_id": "r"}
        out.append(AgentHeartbeat(**meta, **agent, event_id=f"{done.event_id}-h"))
        out.append(
            AgentProgress(**meta, **agent, event_id=f"{done.event_id}-p", turns=1, last_action="x")
        )
        for n, kind in enumerate(("prompt", "turn", "tool_call", "output")):
            out.append(
                TranscriptRecorded(
                    **meta,
                    **agent,
                    event_id=f"{done.event_id}-t{n}",
                    sequence=n,
                    kind=kind,
                    text=f"entry {n} of {done.task_id}: " + "words " * 40,
                )
            )
    return [Incoming.of_event(event, seq) for seq, event in enumerate(out, 1)]


async def fold_telemetry(read_model: ReadModel, items: list[Incoming]) -> float:
    """CPU seconds to fold telemetry ``items`` one at a time."""
    await read_model.reset()
    began = time.process_time()
    for item in items:
        await read_model.take_telemetry([item])
    return time.process_time() - began


async def fold(read_model: ReadModel, items: list[Incoming], run: int) -> float:
    """CPU seconds to fold ``items`` in runs of ``run`` (1: one at a time)."""
    await read_model.reset()
    began = time.process_time()
    for start in range(0, len(items), run):
        await read_model.take_items(items[start : start + run])
    return time.process_time() - began


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missions", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--run", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile", help="save a CPU profile of one lone-event fold (mission, telemetry) here"
    )
    args = parser.parse_args()

    _, events = finished_missions(args.missions, args.tasks)
    items = [Incoming.of_event(event, seq) for seq, event in enumerate(events, 1)]
    telemetry = telemetry_of(events)
    with tempfile.TemporaryDirectory(prefix="aether-gateway-fold-") as work:
        server = EmbeddedPostgres(Path(work) / "pg").start()
        db = Database(server.url)
        try:
            await db.open()
            await db.migrate()
            read_model = ReadModel(db)
            await fold(read_model, items[:50], 1)  # warm: pool, prepared statements
            lone: list[float] = []
            runs: list[float] = []
            lone_telemetry: list[float] = []
            for _ in range(args.rounds):
                lone.append(await fold(read_model, items, 1) / len(items))
                runs.append(await fold(read_model, items, args.run) / len(items))
                lone_telemetry.append(await fold_telemetry(read_model, telemetry) / len(telemetry))
            if args.profile:
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                await fold(read_model, items, 1)
                await fold_telemetry(read_model, telemetry)
                profiler.disable()
                profiler.dump_stats(args.profile)
        finally:
            await db.close()
            server.stop()
    one, five, _ = os.getloadavg()
    print(
        f"gateway fold: {len(items)} mission events ({args.missions} chains of"
        f" {args.tasks} tasks), {len(telemetry)} telemetry events"
    )
    print(f"  load {one:.2f}/{five:.2f}")
    for label, values in (
        ("alone", lone),
        (f"runs of {args.run}", runs),
        ("telemetry", lone_telemetry),
    ):
        shown = " ".join(f"{v * 1e3:.3f}" for v in values)
        print(
            f"  {label:<12} CPU ms per event  median {statistics.median(values) * 1e3:.3f}"
            f"  [{shown}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
