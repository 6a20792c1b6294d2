"""The cost of confinement: one command in the sandbox against a bare run of it.

For a few short commands (the ones where a fixed cost shows most) it times, interleaved
round by round so that machine load hits every variant alike:

- bare:        the program started directly (asyncio subprocess, output read, waited for);
- limits only: the same through ``aether_sandbox.execute`` unconfined (cgroup or rlimits,
               the watch, the kill of the process group): the executor's own cost, with
               the ``sh``/``prlimit`` pair an unconfined command starts behind (a held
               bubblewrap is limited from outside instead);
- bubblewrap:  the same through ``execute`` in a bubblewrap of its own (a cold sandbox:
               what ``run_command`` paid before the warm one, and still pays with
               ``AETHER_SANDBOX_WARM=off``), and the raw ``bwrap`` launch without the executor;
- warm:        the same through ``execute`` in the attempt's kept bubblewrap
               (``WarmSandbox``: what an agent's ``run_command`` pays by default).

    uv run python bench/sandbox.py [--rounds 30] [--runs 1]

With ``--runs N`` the whole measurement is repeated and the medians of the runs' p50
overheads are printed last (for a loaded machine).

A figure, not a test: it prints numbers and never fails on them. The goal is an overhead
under 20 ms per command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aether_sandbox import (
    Bubblewrap,
    Limits,
    Request,
    Sandbox,
    SandboxSettings,
    Unconfined,
    WarmSandbox,
    enforcement,
    execute,
    open_sandbox,
    seccomp,
)

COMMANDS: list[list[str]] = [
    ["true"],
    ["ls", "-la"],
    [sys.executable, "-c", "pass"],
]


async def bare(
    argv: list[str], cwd: Path, env: dict[str, str], filter_program: bytes | None = None
) -> None:
    """``argv`` started and waited for; ``filter_program``: the seccomp filter a raw
    bubblewrap launch is given (as ``execute`` gives it)."""
    with seccomp.passed(argv, filter_program) as (argv, fds):
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=fds,
        )
    await process.communicate()


async def timed(run: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await run()
    return (time.perf_counter() - began) * 1000


async def main(rounds: int, runs: int) -> None:
    settings = SandboxSettings()
    sandbox = open_sandbox(settings)
    print(f"limits enforced by: {enforcement(sandbox)}")
    print(f"{rounds} rounds per command, interleaved; times in ms (mean, p50)\n")
    overheads: dict[tuple[str, str], list[float]] = {}
    for run in range(runs):
        if runs > 1:
            print(f"--- run {run + 1} of {runs}")
        for key, value in (await measure(sandbox, rounds)).items():
            overheads.setdefault(key, []).append(value)
    if runs > 1:
        print(f"median over {runs} runs of the p50 overhead against bare (ms):")
        for (label, name), values in overheads.items():
            print(f"  {label:<18} {name:<12} {statistics.median(values):+7.1f}")


async def measure(sandbox: Sandbox, rounds: int) -> dict[tuple[str, str], float]:
    """One interleaved measurement; the p50 overhead of each variant against bare."""
    unconfined = Unconfined(SandboxSettings(backend="unconfined"))
    assert isinstance(sandbox, Bubblewrap)
    warm = WarmSandbox(sandbox)
    limits = Limits(wall_seconds=60)
    overheads: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="aether-bench-sandbox-") as directory:
        workdir = Path(directory)
        (workdir / "file.txt").write_text("x\n")
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"}
        for argv in COMMANDS:
            request = Request(argv, workdir, workdir, env, limits)
            launch = sandbox.launch(request)
            variants: dict[str, Callable[[], Awaitable[object]]] = {
                "bare": lambda argv=argv: bare(argv, workdir, env),
                "limits only": lambda r=request: execute(unconfined, r),
                "bwrap launch": lambda a=launch.argv, e=launch.env, f=launch.seccomp: bare(
                    a, workdir, e, f
                ),
                "bubblewrap": lambda r=request: execute(sandbox, r),
                "warm": lambda r=request: execute(warm, r),
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            for run in variants.values():  # warm-up: page cache, imports
                await run()
            for _ in range(rounds):
                for name, run in variants.items():
                    times[name].append(await timed(run))
            base = statistics.mean(times["bare"])
            base_p50 = statistics.median(times["bare"])
            label = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))
            print(f"$ {label}")
            for name, values in times.items():
                mean = statistics.mean(values)
                extra = (
                    ""
                    if name == "bare"
                    else (f"   overhead {mean - base:+7.1f} ms   ratio {mean / base:5.2f}x")
                )
                p50 = statistics.median(values)
                print(f"  {name:<12} mean {mean:7.1f}  p50 {p50:7.1f}{extra}")
                if name != "bare":
                    overheads[(label, name)] = p50 - base_p50
            print()
    warm.close()
    return overheads


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=1)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.runs))
