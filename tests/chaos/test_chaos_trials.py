"""The chaos benchmark's CI subset: the fault-free run, then a nats-server kill during the
mission, and a planner kill and a scheduler kill during their start-up (with the mission
submitted meanwhile), each followed by a restart, with fixed moments. Each trial must
pass every check of ``bench/chaos``; the full benchmark runs 50 random ones
(``python -m bench.chaos``)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from bench.chaos import Kill, TrialSettings
from bench.chaos.run import Runner, report_trial

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

SEED = 11
# Generous next to the 5 s goal, so a loaded CI machine does not fail it, but far below
# the ack wait a consumer would otherwise sit out after the restart.
MAX_STALL_SECONDS = 10.0


def kills() -> list[list[Kill]]:
    rng = random.Random(SEED)
    return [
        [Kill("nats", "run", at=round(rng.uniform(0.2, 0.6), 3), down_seconds=0.5)],
        [Kill("planner", "boot", at=round(rng.uniform(0.2, 0.6), 3), down_seconds=0.5)],
        [Kill("scheduler", "boot", at=round(rng.uniform(0.2, 0.5), 3), down_seconds=0.5)],
    ]


async def test_chaos_trials_survive_a_bus_restart_and_kills_at_start_up(
    database_url: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    settings = TrialSettings(timeout=90.0, read_model_wait=10.0, max_stall=MAX_STALL_SECONDS)
    runner = Runner(tmp_path, database_url, settings, out=out)
    reference = await runner.run_reference()
    assert reference.passed, out.getvalue()
    plans = kills()
    results = []
    for index, plan in enumerate(plans, start=1):
        result = await runner.run_trial(index, plan)
        report_trial(index, len(plans), result, out)
        results.append(result)
    nats_kill, *boot_kills = (r.kills[0] for r in results)
    assert nats_kill.killed_at is not None and nats_kill.restarted_at is not None, out.getvalue()
    for kill in boot_kills:
        assert kill.killed_at is not None and kill.was_ready is False, out.getvalue()
    assert [s.seconds is not None for s in results[0].stalls] == [True], out.getvalue()
    assert all(r.passed for r in results), out.getvalue()
