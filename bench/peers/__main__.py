"""Aether next to LangGraph and Prefect 3 doing the same git work, in one run.

    uv run python -m bench.peers [--tasks 50] [--venv DIR] [--model-calls] [--rounds 1]

Builds the peers' own environment first (``uv venv`` in a temporary directory, then
LangGraph with its SQLite checkpointer, Prefect 3, and the product's git adapters with the
product's dulwich), unless ``--venv`` names one built before. None of it becomes a
dependency of the product. Then, on this machine and in this run:

* the plain git loop (the floor: ``bench/peers/work.py`` one task after another), run
  right before each system so that each is compared with a floor measured under the same
  machine load;
* Aether: missions of N chained tasks and of N independent tasks four at a time through
  the five services (``bench/overhead.py``'s stack and no-work agent);
* LangGraph and Prefect 3 running the same ``GitWork`` per task (``peers.py``);
* the durable messaging floor, chained only: ``bench/bus_floor.py``'s ring of three
  processes passing each task over a JetStream work queue in the four hops Aether's
  services make (ready → workspace → completed → merged), each doing its part of the
  same git work (and, with ``--model-calls``, the runner its two model calls), with no
  orchestrator: what any design of separate services over a durable bus costs at least;

and prints ms per task (mission wall time / N), each one's ratio to its floor, and
Aether's ratio to each peer, over their floors and as measured. With ``--rounds R`` the
whole set runs R times, one system after the other in each round, and each figure is the
median of its R (the range beside it, and Aether's ratio to each peer in every round):
the machine's pace moves every system's time from one minute to the next, and one round
can put a system in a slow minute its peers missed. A figure, not a test: it never fails
on the numbers.

Aether's no-work agent makes two model calls a task (to a local Messages API server);
the peers and the plain loops make none by default, as the figures were first asked for.
With ``--model-calls`` they make the same two (``work.ModelCalls``, through the anthropic
SDK to a server of their own), so every system does the same agent work too and each
floor is the git work with the two calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from aether.gitview import create_sample_repository
from aether.infra import EmbeddedNats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bus_floor import ring
from model_call import served
from overhead import WorkDirectory, run_shape
from work import GitWork, ModelCalls

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = [
    "libs/events",
    "libs/runtime",
    "libs/llm",
    "services/git-broker",
    "services/agent-runner",
]
PEERS = ["langgraph", "langgraph-checkpoint-sqlite", "prefect>=3,<4"]


def build_venv(where: Path) -> Path:
    """A fresh environment with the peers and the product's git adapters; its python."""
    subprocess.run(["uv", "venv", "-q", "-p", sys.executable, str(where)], check=True)
    python = where / "bin" / "python"
    packages = [*PEERS, f"dulwich=={version('dulwich')}"]
    for member in PRODUCT_PACKAGES:
        packages += ["-e", str(ROOT / member)]
    print(f"  installing {', '.join(PEERS)} into {where} …", flush=True)
    subprocess.run(["uv", "pip", "install", "-q", "-p", str(python), *packages], check=True)
    return python


def plain_loop(work: Path, n: int, label: str, agent: ModelCalls | None = None) -> float:
    repo = work / f"plain-{label}"
    create_sample_repository(repo)
    git = GitWork.prepare(repo, work / f"wt-plain-{label}", agent)
    began = time.perf_counter()
    for i in range(1, n + 1):
        git.task(i)
    return time.perf_counter() - began


def run_peers(python: Path, work: Path, n: int, model_url: str | None) -> dict[str, float]:
    repos = []
    for i in range(12):
        repo = work / f"peer-repo-{i}"
        create_sample_repository(repo)
        repos.append(str(repo))
    out = subprocess.run(
        [
            str(python),
            str(Path(__file__).with_name("peers.py")),
            *("--tasks", str(n), "--work", str(work / "peers"), "--repos", *repos),
            *(["--model-url", model_url] if model_url else []),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    results: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


FLOOR = "asyncio over a JetStream work queue (four hops)"


async def messaging_floor(
    work: Path, n: int, agent: ModelCalls | None, model_url: str | None
) -> dict[str, float]:
    """The durable messaging floor's ring, chained, on a NATS server of its own: the
    sum of its tasks' times (each from its ready event's publication to its merged
    event's delivery), and the plain loop right before it."""
    key = f"{FLOOR}|chain"
    results = {f"{key}|floor": await asyncio.to_thread(plain_loop, work, n, "ring", agent)}
    server = await asyncio.to_thread(EmbeddedNats(work / "ring-nats").start)
    try:
        durations = await ring(server.url, work / "ring", n, True, False, model_url)
    finally:
        await asyncio.to_thread(server.stop)
    results[key] = sum(durations)
    return results


async def aether(work: Path, n: int, agent: ModelCalls | None) -> dict[str, float]:
    results = {}
    for shape, label in (("chain", "chain"), ("independent", "4 at a time")):
        key = f"Aether (five services)|{label}"
        results[f"{key}|floor"] = await asyncio.to_thread(plain_loop, work, n, shape, agent)
        results[key] = (await run_shape(work, f"peers-{shape}", shape, n, 4)).wall
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--venv", type=Path, help="a peers' environment built before")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--model-calls",
        action="store_true",
        help="the peers and every plain loop make the no-work agent's two model calls too",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the set this many times; print medians"
    )
    args = parser.parse_args()
    n = args.tasks
    rounds: list[dict[str, float]] = []
    # The peers' environment built here is kept for ``--venv`` next time.
    with WorkDirectory("aether-peers-", keep=args.keep, spare=["venv"]) as work:
        print(f"bench/peers: N={n} tasks, work dir {work}", flush=True)
        python = args.venv / "bin" / "python" if args.venv else build_venv(work / "venv")
        with served() if args.model_calls else contextlib.nullcontext() as model_url:
            agent = ModelCalls(model_url) if model_url else None
            for index in range(max(args.rounds, 1)):
                here = work / f"round-{index + 1}"
                (here / "peers").mkdir(parents=True)
                walls = asyncio.run(aether(here, n, agent))
                walls.update(asyncio.run(messaging_floor(here, n, agent, model_url)))
                walls.update(run_peers(python, here, n, model_url))
                rounds.append(walls)
                if args.rounds > 1:
                    print(f"  round {index + 1} of {args.rounds} done", flush=True)
    print_table(rounds, n, args.model_calls)
    return 0


def print_table(rounds: list[dict[str, float]], n: int, model_calls: bool) -> None:
    """Each system's ms a task and ratios, from the median of the rounds' wall times."""
    walls = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    spread = len(rounds) > 1
    work_done = "same git work, two model calls" if model_calls else "same git work"
    print(f"\n  {f'orchestrator ({work_done}), ms/task':<50} {'chain':>16} {'4 at a time':>16}")
    print(f"  {'':<50} {'(× its floor)':>16} {'(× its floor)':>16}")
    systems = dict.fromkeys(key.split("|")[0] for key in walls)
    ratios: dict[str, dict[str, float]] = {}
    for system in systems:
        cells = []
        for shape in ("chain", "4 at a time"):
            wall = walls.get(f"{system}|{shape}")
            floor = walls.get(f"{system}|{shape}|floor")
            if wall is None or floor is None:
                cells.append(f"{'—':>16}")
                continue
            ratios.setdefault(system, {})[shape] = wall / floor
            cells.append(f"{wall / n * 1000:7.1f} ({wall / floor:4.2f}×)")
        print(f"  {system:<50} {cells[0]:>16} {cells[1]:>16}")
        if spread:
            ranges = []
            for shape in ("chain", "4 at a time"):
                each = [
                    r[f"{system}|{shape}"] / n * 1000 for r in rounds if f"{system}|{shape}" in r
                ]
                ranges.append(f"{min(each):.1f}–{max(each):.1f}" if each else "—")
            print(f"  {'  the rounds, ms/task':<50} {ranges[0]:>16} {ranges[1]:>16}")
    floors = [wall / n * 1000 for key, wall in walls.items() if key.endswith("|floor")]
    print(f"  plain git loop, ms/task, beside each: {', '.join(f'{f:.1f}' for f in floors)}")
    ours = ratios.get("Aether (five services)", {})
    for system, figures in ratios.items():
        if system.startswith("Aether"):
            continue
        compared = [
            f"{shape} {ours[shape] / figures[shape]:.2f}×"
            for shape in ("chain", "4 at a time")
            if shape in ours and shape in figures
        ]
        print(f"  Aether ÷ {system} (each over its floor): {', '.join(compared)}")
        # The floors move with the disk's load from one minute to the next (a fresh
        # checkout a task writes every file): the times as measured, side by side.
        direct = [
            f"{shape} {walls[f'Aether (five services)|{shape}'] / walls[f'{system}|{shape}']:.2f}×"
            for shape in ("chain", "4 at a time")
            if f"Aether (five services)|{shape}" in walls and f"{system}|{shape}" in walls
        ]
        print(f"  Aether ÷ {system} (ms a task as measured): {', '.join(direct)}")
        if spread:
            per_round = [
                f"{shape} "
                + ", ".join(
                    f"{r[f'Aether (five services)|{shape}'] / r[f'{system}|{shape}']:.2f}×"
                    for r in rounds
                )
                for shape in ("chain", "4 at a time")
                if f"Aether (five services)|{shape}" in walls and f"{system}|{shape}" in walls
            ]
            print(f"    in each round: {'; '.join(per_round)}")
    # Where the floor of any design of separate services over a durable bus stands
    # against each in-process peer: a ratio to that peer below this one no such design
    # reaches on this machine.
    floor = walls.get(f"{FLOOR}|chain")
    for system in systems:
        peer = walls.get(f"{system}|chain")
        if floor is None or peer is None or system.startswith("Aether") or system == FLOOR:
            continue
        print(
            f"  the messaging floor ÷ {system} (ms a task as measured): chain {floor / peer:.2f}×"
        )


if __name__ == "__main__":
    sys.exit(main())
