"""Running trials and reporting them: shared by the command line and the CI test."""

from __future__ import annotations

import random
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg

from .checks import CHECKS, KillRecord
from .trial import NATS, TARGETS, Kill, Reference, Trial, TrialResult, TrialSettings


def random_kills(rng: random.Random, targets: Sequence[str] = TARGETS) -> list[Kill]:
    """One kill, or two with a chance of one in four; a quarter of them at start-up."""
    count = 2 if rng.random() < 0.25 else 1
    return [
        Kill(
            target=rng.choice(targets),
            phase="boot" if rng.random() < 0.25 else "run",
            at=round(rng.uniform(0.05, 0.9), 3),
            down_seconds=round(rng.uniform(0.0, 2.0), 2),
        )
        for _ in range(count)
    ]


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server at ``server_url``; returns its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@dataclass
class Runner:
    """Runs the fault-free reference, then trials, in ``work`` on one PostgreSQL server."""

    work: Path
    database_url: str
    settings: TrialSettings = field(default_factory=TrialSettings)
    out: IO[str] = sys.stdout
    reference: Reference | None = None

    async def run_reference(self) -> TrialResult:
        result = await Trial(
            self.work / "fault-free",
            create_database(self.database_url, "chaos_fault_free"),
            [],
            settings=self.settings,
        ).run()
        self.reference = Reference(
            tree=result.final_tree, events=result.events, ready_seconds=result.ready_seconds
        )
        ready = ", ".join(f"{n} {s:.1f}s" for n, s in sorted(result.ready_seconds.items()))
        status = "ok" if result.passed else "FAILED"
        self.out.write(
            f"fault-free run: {status}, {result.seconds:.1f} s"
            f" (mission {_seconds(result.mission_seconds)}), {result.events} events,"
            f" {result.model_calls.calls} model calls ({result.model_calls.used} recorded),"
            f" longest gap {result.longest_gap:.2f} s; ready after: {ready}\n"
        )
        _problems(result, self.out, self.settings.max_stall)
        self.out.flush()
        return result

    async def run_trial(self, index: int, kills: Sequence[Kill]) -> TrialResult:
        assert self.reference is not None, "run the fault-free reference first"
        return await Trial(
            self.work / f"trial-{index:03d}",
            create_database(self.database_url, f"chaos_trial_{index}"),
            kills,
            reference=self.reference,
            settings=self.settings,
        ).run()


def trial_line(index: int, total: int, result: TrialResult) -> str:
    width = len(str(total))
    verdict = "pass" if result.passed else "FAIL"
    kills = " + ".join(_kill(k, result) for k in result.kills) or "no kill"
    return (
        f"[{index:>{width}}/{total}] {verdict}  {result.seconds:5.1f} s"
        f" (mission {_seconds(result.mission_seconds)}, longest gap {result.longest_gap:.1f} s)"
        f"  {kills}"
    )


def _kill(record: KillRecord, result: TrialResult) -> str:
    if record.killed_at is None:
        return f"{record.planned} (never fired)"
    if record.target == NATS:
        starting = ", ".join(record.starting)
        when = f"{starting} starting" if starting else "all services ready"
    else:
        when = "before ready" if record.was_ready is False else "after ready"
    if record.phase == "run":
        usual = when in ("after ready", "all services ready")
        when = f"{record.events_before} events in" + ("" if usual else f", {when}")
    down = (
        f"down {record.restarted_at - record.killed_at:.2f} s"
        if record.restarted_at is not None
        else "not restarted"
    )
    stall = next((s for s in result.stalls if s.kill is record), None)
    extra = ""
    if stall is not None:
        extra = ", stall " + ("n/a" if stall.seconds is None else f"{stall.seconds:.1f} s")
    return f"{record.planned} ({when}, {down}{extra})"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _problems(result: TrialResult, out: IO[str], max_stall: float | None) -> None:
    for check, problems in result.problems.items():
        for problem in problems[:6]:
            out.write(f"      {check}: {problem}\n")
        if len(problems) > 6:
            out.write(f"      {check}: … and {len(problems) - 6} more\n")
    # A process restarted again and again notes each exit: one line, with the count.
    for note, times in Counter(result.notes).items():
        out.write(f"      note: {note}" + (f" (×{times})" if times > 1 else "") + "\n")
    if not result.passed or worth_a_look(result, max_stall):
        out.write(f"      logs: {result.home / 'stack' / 'logs'}\n")


# How long the stream may stay quiet in a passed trial before its logs are kept, when no
# ``--max-stall`` is given.
QUIET_WORTH_A_LOOK_SECONDS = 30.0


def worth_a_look(result: TrialResult, max_stall: float | None) -> bool:
    """Whether a trial that passed still wants its logs read: a service exited by itself
    (it could not start again, say), or the stream went quiet for longer than
    ``max_stall`` (else ``QUIET_WORTH_A_LOOK_SECONDS``). Its directory is kept, as a failed
    trial's is."""
    exited = any(note.endswith("by itself") for note in result.notes)
    quiet = QUIET_WORTH_A_LOOK_SECONDS if max_stall is None else max_stall
    return exited or result.longest_gap > quiet


def report_trial(
    index: int, total: int, result: TrialResult, out: IO[str], max_stall: float | None = None
) -> None:
    out.write(trial_line(index, total, result) + "\n")
    _problems(result, out, max_stall)
    out.flush()


def summary(numbered: dict[int, TrialResult], seed: int, out: IO[str]) -> None:
    """The totals of a run; ``numbered`` maps each trial's number to its result."""
    results = list(numbered.values())
    passed = sum(r.passed for r in results)
    out.write(
        f"\nchaos: {len(results)} trials, {passed} passed, {len(results) - passed} failed"
        f" (seed {seed})\n"
    )
    failed = [str(i) for i, r in numbered.items() if not r.passed]
    if failed:
        out.write(
            f"  failed: {', '.join(failed)} (again: --seed {seed} --only {','.join(failed)})\n"
        )
    names = list(dict.fromkeys([*CHECKS, *(c for r in results for c in r.problems)]))
    failures = {c: sum(1 for r in results if r.problems.get(c)) for c in names}
    out.write("  failed trials per check: " + ", ".join(f"{c} {n}" for c, n in failures.items()))
    out.write("\n")
    times = [r.seconds for r in results]
    if times:
        out.write(
            f"  time per trial: mean {statistics.fmean(times):.1f} s,"
            f" median {statistics.median(times):.1f} s, max {max(times):.1f} s,"
            f" total {sum(times) / 60:.1f} min\n"
        )
    gaps = [r.longest_gap for r in results]
    if gaps:
        out.write(
            f"  longest time without an event, per trial: median {statistics.median(gaps):.1f} s,"
            f" max {max(gaps):.1f} s\n"
        )
    stalls = [s.seconds for r in results for s in r.stalls if s.seconds is not None]
    if stalls:
        under = sum(1 for s in stalls if s < 5.0)
        out.write(
            f"  stall after a nats-server kill: {len(stalls)} measured, median"
            f" {statistics.median(stalls):.1f} s, max {max(stalls):.1f} s;"
            f" {under} of {len(stalls)} under the 5 s goal\n"
        )
    excused = sum(r.model_calls.excused for r in results)
    dropped = sum(r.model_calls.dropped for r in results)
    out.write(
        f"  model calls repeated because their caller died with them in flight: {excused};"
        f" calls of attempts that ended before using the reply: {dropped}\n"
    )
    kills = [k for r in results for k in r.kills if k.killed_at is not None]
    by_target = {t: sum(1 for k in kills if k.target == t) for t in TARGETS}
    boot = sum(1 for k in kills if k.was_ready is False or (k.target == NATS and k.starting))
    out.write(
        f"  kills: {len(kills)} ({boot} during start-up): "
        + ", ".join(f"{t} {n}" for t, n in by_target.items())
        + "\n"
    )
    out.flush()
