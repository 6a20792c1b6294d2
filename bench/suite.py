"""The whole test suite's wall time and CPU, next to the machine's own speed in the same run.

A shared two-core machine's speed moves by more than a factor of two within an hour
(the same suite has taken 170 s and 311 s on the same code the same afternoon), so a
suite time alone says little about a change to the suite. This runs a fixed CPU-bound
probe (pure Python, in a fresh interpreter, ``--probes`` times) before and after the
suite and prints the suite's wall time and the machine's busy core-seconds (``/proc/stat``:
everything the tests start, and anything else running; the time the host stole from the
machine's virtual CPUs is printed apart) as multiples of the probe's CPU time. Those
ratios follow the machine's speed roughly (the probe is one process's pure-Python loop,
the suite many processes, forks and system calls: two runs of the same code have been a
sixth apart), far better than seconds do. A probe that moved much between before and
after says the machine's speed changed during the run, and the ratios are then rougher.

    uv run python bench/suite.py [--probes 3] [-- PYTEST ARGS...]

The suite runs as the README says (``uv run pytest``, here with ``-q -p no:cacheprovider``
and whatever follows ``--``). A figure, not a test: it exits with pytest's status, so a
failed run is not taken for a timing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The probe: about 3 s of CPU on the development machine at its quickest.
PROBE = """
import time
t = time.process_time()
x = 0
for i in range(30_000_000):
    x += i * i
print(time.process_time() - t)
"""


def probe() -> float:
    """The probe's CPU seconds, in an interpreter of its own."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    return float(done.stdout)


def busy_jiffies() -> tuple[int, int]:
    """The whole machine's time spent working so far, and the time its virtual CPUs
    wanted to run but the host ran something else (steal), in clock ticks
    (``/proc/stat``). Stolen time is not work done, and a probe's CPU time leaves it
    out too, so it is counted apart."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[1:8])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return user + nice + system + irq + softirq, steal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=3, help="probe runs before and after")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    ticks = 100  # USER_HZ: /proc/stat's unit on Linux
    before = [probe() for _ in range(args.probes)]
    command = ["uv", "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"]
    command += args.pytest_args
    (busy0, steal0), began = busy_jiffies(), time.monotonic()
    status = subprocess.run(command, cwd=ROOT).returncode
    wall = time.monotonic() - began
    busy1, steal1 = busy_jiffies()
    busy, steal = (busy1 - busy0) / ticks, (steal1 - steal0) / ticks
    after = [probe() for _ in range(args.probes)]
    speed = statistics.median(before + after)
    print()
    print(f"bench/suite: pytest exited {status}")
    print(f"  probe, CPU s     before {' '.join(f'{p:.2f}' for p in before)}", end="")
    print(f"   after {' '.join(f'{p:.2f}' for p in after)}   median {speed:.2f}")
    print(f"  suite            wall {wall:.1f} s   busy {busy:.1f} core-s", end="")
    print(f"   ({busy / wall:.2f} cores busy on average; {steal:.1f} core-s stolen by the host)")
    print(f"  in probes        wall {wall / speed:.1f}   busy {busy / speed:.1f}")
    drift = max(statistics.median(after), statistics.median(before))
    drift /= min(statistics.median(after), statistics.median(before))
    if drift > 1.15:
        print(f"  the probe moved {drift:.2f}x during the run: the machine's speed changed")
    return status


if __name__ == "__main__":
    sys.exit(main())
