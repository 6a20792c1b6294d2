"""Command line: ``uv run python -m bench.chaos [--trials 50] [--seed N]``.

Exits 0 when every trial passed, 1 when one failed, 2 when the fault-free run failed (its
final tree is what the trials are compared with).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

from aether.infra import EmbeddedPostgres

from .run import Runner, random_kills, report_trial, summary, worth_a_look
from .trial import TARGETS, TrialResult, TrialSettings


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="SIGKILL services and nats-server during a 20-task mission, and check.",
    )
    parser.add_argument("--trials", type=int, default=50, help="how many trials (50)")
    parser.add_argument("--seed", type=int, help="for the kill plans (default: a random one)")
    parser.add_argument(
        "--only", help="run only these trials of the seed's plan (e.g. 3,7), to reproduce one"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"what may be killed, comma-separated (default: {','.join(TARGETS)})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds from launch to the mission's end (300)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=150.0,
        help="seconds without a new event after which a mission counts as stuck (150)",
    )
    parser.add_argument(
        "--read-model-wait",
        type=float,
        default=15.0,
        help="seconds the read model may take to agree with the stream after the end (15)",
    )
    parser.add_argument(
        "--max-stall",
        type=float,
        help="also fail a trial whose stall after a nats-server kill is longer (seconds)",
    )
    parser.add_argument(
        "--command",
        help="a command each task's agent runs beside its write, {} for its task id (e.g."
        " 'mkdir -p build/{}'): the finish check then scans every file",
    )
    parser.add_argument("--work", type=Path, help="where trials run (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep passed trials' directories")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        print(f"unknown targets {unknown}; choose among {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    plans = [random_kills(rng, targets) for _ in range(args.trials)]
    chosen = [int(i) for i in args.only.split(",")] if args.only else range(1, args.trials + 1)
    work = args.work or Path(tempfile.mkdtemp(prefix="aether-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench/chaos: {len(chosen)} trials, seed {seed}, work dir {work}", flush=True)
    settings = TrialSettings(
        timeout=args.timeout,
        idle_timeout=args.idle_timeout,
        read_model_wait=args.read_model_wait,
        max_stall=args.max_stall,
        command=args.command,
    )
    postgres = EmbeddedPostgres(work / "postgres").start()
    results: dict[int, TrialResult] = {}
    try:
        runner = Runner(work, postgres.url, settings)
        reference = await runner.run_reference()
        if not reference.passed:
            print("the fault-free run failed: no reference to compare with", file=sys.stderr)
            return 2
        _tidy(reference, args.keep, args.max_stall)
        for index in chosen:
            result = await runner.run_trial(index, plans[index - 1])
            results[index] = result
            report_trial(index, args.trials, result, sys.stdout, args.max_stall)
            _tidy(result, args.keep, args.max_stall)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        summary(results, seed, sys.stdout)
        postgres.stop()
        shutil.rmtree(work / "postgres", ignore_errors=True)
    return 0 if results and all(r.passed for r in results.values()) else 1


def _tidy(result: TrialResult, keep: bool, max_stall: float | None) -> None:
    """A passed trial's directory goes; a failed one stays, with its logs, and so does
    a passed one that is ``worth_a_look``."""
    if result.passed and not keep and not worth_a_look(result, max_stall):
        shutil.rmtree(result.home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
