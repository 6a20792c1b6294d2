"""Does Aether's cost stay flat as work and history grow?

Three measurements, in one run, on embedded NATS and PostgreSQL with the five services as
separate processes and an agent that does no model work (the model server of
``bench/overhead.py``):

1. **Per-task overhead against mission size**: chained missions of N = 10, 50 and 200
   tasks on a fresh stack per run, ``--repeats`` runs of each size interleaved; a run
   is as many missions of N, one after the other, as make ``--tasks`` tasks (200: twenty
   missions of ten, four of fifty, one of two hundred), so that every size's figure is a
   mean over as many tasks, not N = 10's over nine cycles. Per N it prints the
   median (and the range) of the mean TaskReady → BranchMerged latency and of the
   chain's cycle time (one TaskReady to the next, which is what a chain of N pays N
   times), the cycle less the same git work timed in a plain loop of N tasks (the
   orchestration's own cost), as ratios against N = 10; per mission, the median cycle
   of its last quarter against its first (growth within one mission, which a change of
   load between runs does not blur); and **each service's CPU time per task** (its
   process's user + system time over the mission, divided by N), the figure a busy
   machine moves least, which says which service's cost grows with N.
2. **Idle memory**: each service's resident set (``VmRSS``) a few seconds after it is
   ready, on an empty stream.
3. **Start-up with history**: one real mission (a chain of ``--template-tasks`` tasks)
   runs through the stack; its stored events are then published again, through the real
   ``EventPublisher``, as ``--missions - 1`` more missions (every id, and the mission id
   wherever it appears in subjects, branch names and paths, replaced by a fresh one), so
   the stream holds that many finished missions of exactly the shape the services write.
   All five services are stopped before that; each is then started alone and the script
   prints the time from process start to ``/readyz``, the replay time the service logs
   ("projection rebuilt"), and its resident set once ready.

The load average is printed with every figure: the machine is shared, compare the ratios
within a run.

    uv run python bench/scale.py [--sizes 10,50,200] [--repeats 3] [--tasks 200] [--missions 1000]
        [--template-tasks 3] [--services gateway,...] [--skip-sizes] [--skip-history]
        [--profile]

``--profile`` runs the services started with history under cProfile and saves
``<work dir>/<service>.prof`` when they stop (the replay's profile).

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.api import DeliverPolicy

sys.path.insert(0, str(Path(__file__).parent))

import itertools

from overhead import (
    WARM_UP,
    NoWorkModel,
    WorkDirectory,
    per_task,
    plain_git_loop,
    plan_of,
    run_mission,
    service_cpu,
    warm_up_stack,
)

from aether.gitview import create_sample_repository
from aether.stack import SERVICES, Stack
from aether_events import (
    BranchMerged,
    EventPublisher,
    MissionCompleted,
    TaskReady,
    decode,
    mission_subject,
)
from aether_llm import MessagesServer

_ID_KEYS = ("event_id", "causation_id", "correlation_id", "mission_id")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_stack(work: Path, label: str, model_url: str, profiled: list[str] | None = None) -> Stack:
    """``profiled`` services run under cProfile (``bench/profiled.py``), saving
    ``<work>/<name>.prof`` when stopped."""
    wrapper = str(Path(__file__).with_name("profiled.py"))
    return Stack(
        home=work / f"stack-{label}",
        random_ports=True,
        env={"ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": model_url},
        python_options={name: [wrapper, str(work / f"{name}.prof")] for name in profiled or []},
        # Each service its own interpreter, as in its container: its resident set is its
        # own, not the pages it shares with the prestarter (``aether.prestart``).
        prestart=False,
    )


def cycle_times(events: list[Any]) -> list[float]:
    """Seconds from each TaskReady to the next one (a chain's period)."""
    readies = sorted(e.occurred_at for e in events if isinstance(e, TaskReady))
    return [(b - a).total_seconds() for a, b in itertools.pairwise(readies)]


class SizeRun:
    """One chained mission of N tasks: mean TaskReady→BranchMerged, mean cycle, the mean
    of the same git work in a plain loop (which grows with the tree: each task adds a
    file), and each service's CPU seconds per task over the mission."""

    def __init__(self, latency: float, cycle: float, floor: float, cpu: dict[str, float]):
        self.latency, self.cycle, self.floor, self.cpu = latency, cycle, floor, cpu


async def one_size(work: Path, n: int, run: int, tasks: int) -> SizeRun | None:
    """One run of size ``n``: as many chained missions of ``n`` tasks, one after the other
    on one fresh stack, as make ``tasks`` tasks (at least one), and their means over every
    task of them. A mission of ten tasks has nine cycles, and one slow moment of the
    machine moved a run of one such mission by a quarter; twenty give it as many samples
    as one mission of two hundred."""
    floor = await asyncio.to_thread(plain_git_loop, work / f"plain-n{n}-{run}", n)
    plans = {WARM_UP: plan_of(2, "chain")}
    model = MessagesServer(NoWorkModel(plan_of(n, "chain"), plans)).start()
    stack = make_stack(work, f"n{n}-{run}", model.url)
    missions = max(1, -(-tasks // n))
    latencies: list[float] = []
    cycles: list[float] = []
    drifts: list[float] = []
    cpus: list[dict[str, float]] = []
    try:
        await asyncio.to_thread(stack.start)
        # Not on the stack's first mission: that one's first task waits for the SDK's
        # import in the runner, which would weigh on N = 10 twenty times more than on 200.
        if not await warm_up_stack(stack, work, f"n{n}-{run}", 2, 1):
            return None
        repo = work / f"repo-n{n}-{run}"
        create_sample_repository(repo)
        for _ in range(missions):
            samples: list[tuple[float, dict[str, float]]] = []
            sampler = asyncio.create_task(sample_cpu(stack, samples))
            try:
                events = await run_mission(stack, repo, n, 1)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            samples.append((time.time(), service_cpu(stack)))
            if not any(isinstance(e, MissionCompleted) for e in events):
                return None
            latencies += per_task(events)["ready_to_merged"]
            mission_cycles = cycle_times(events)
            cycles += mission_cycles
            quarter = max(len(mission_cycles) // 4, 1)
            drifts.append(
                statistics.median(mission_cycles[-quarter:])
                / statistics.median(mission_cycles[:quarter])
            )
            cpus.append(chain_cpu(events, samples, n))
    finally:
        await asyncio.to_thread(stack.stop)
        model.stop()
    print(
        f"  N={n:<4} run {run + 1}: {missions} mission(s); last quarter's cycles / first"
        f" quarter's {statistics.median(drifts):.2f}x (median of the missions)"
    )
    cpu = {name: statistics.fmean(c.get(name, 0.0) for c in cpus) for name in cpus[0]}
    return SizeRun(
        statistics.fmean(latencies), statistics.fmean(cycles), statistics.fmean(floor), cpu
    )


async def sample_cpu(stack: Stack, into: list[tuple[float, dict[str, float]]]) -> None:
    """Each service's CPU seconds so far, with the wall time, every 100 ms."""
    while True:
        into.append((time.time(), service_cpu(stack)))
        await asyncio.sleep(0.1)


def chain_cpu(
    events: list[Any], samples: list[tuple[float, dict[str, float]]], n: int
) -> dict[str, float]:
    """Each service's CPU seconds per task while the chain ran: from the last sample
    before the first TaskReady to the first after the last BranchMerged (planning and
    start-up, paid once per mission, left out), over the tasks merged in between."""
    readies = [e.occurred_at.timestamp() for e in events if isinstance(e, TaskReady)]
    merges = [e.occurred_at.timestamp() for e in events if isinstance(e, BranchMerged)]
    if not readies or not merges:
        return {}
    start = max((s for s in samples if s[0] <= min(readies)), default=samples[0], key=_at)
    end = min((s for s in samples if s[0] >= max(merges)), default=samples[-1], key=_at)
    return {name: (end[1][name] - start[1].get(name, 0.0)) / n for name in end[1]}


def _at(sample: tuple[float, dict[str, float]]) -> float:
    return sample[0]


def _ms(values: list[float]) -> str:
    """Median and range, in milliseconds."""
    low, high = min(values) * 1000, max(values) * 1000
    return f"{statistics.median(values) * 1000:6.1f} ms ({low:.0f}–{high:.0f})"


async def sizes(work: Path, ns: list[int], repeats: int, tasks: int) -> None:
    print(
        f"per-task overhead, chained missions, {repeats} run(s) per size, each of at least"
        f" {tasks} tasks ({load()})"
    )
    found: dict[int, list[SizeRun]] = {n: [] for n in ns}
    loads: list[float] = []
    # Interleaved (10, 50, 200, 10, 50, 200, …) so a change of load hits every size.
    for run in range(repeats):
        for n in ns:
            figures = await one_size(work, n, run, tasks)
            loads.append(os.getloadavg()[0])
            if figures is None:
                print(f"  N={n} run {run + 1}: the mission did not complete", file=sys.stderr)
                continue
            found[n].append(figures)
            cpu = "  ".join(f"{k} {v * 1000:.1f}" for k, v in figures.cpu.items())
            print(
                f"  N={n:<4} run {run + 1}: ready→merged {figures.latency * 1000:6.1f} ms,"
                f" cycle {figures.cycle * 1000:6.1f} ms, plain git {figures.floor * 1000:6.1f} ms;"
                f" CPU ms/task {cpu} ({load()})"
            )
    base = found[ns[0]]
    if not base:
        return
    base_latency = statistics.median(f.latency for f in base)
    base_cycle = statistics.median(f.cycle for f in base)
    base_over = statistics.median(f.cycle - f.floor for f in base)
    print(
        f"  medians (range), ratios against N={ns[0]}; 1-minute load over the runs"
        f" {min(loads):.1f}–{max(loads):.1f}:"
    )
    for n in ns:
        runs = found[n]
        if not runs:
            continue
        latency = statistics.median(f.latency for f in runs)
        cycle = statistics.median(f.cycle for f in runs)
        over = statistics.median(f.cycle - f.floor for f in runs)
        print(
            f"    N={n:<4} ready→merged {_ms([f.latency for f in runs])}"
            f" {latency / base_latency:.2f}x"
            f"   cycle {_ms([f.cycle for f in runs])} {cycle / base_cycle:.2f}x"
            f"   cycle minus plain git {over * 1000:6.1f} ms {over / base_over:.2f}x"
        )
    print(f"  CPU ms per task by service, median of runs (ratio against N={ns[0]}):")
    print("    " + f"{'service':<14}" + "".join(f"{'N=' + str(n):>18}" for n in ns))
    for name in SERVICES:
        base_cpu = statistics.median(f.cpu.get(name, 0.0) for f in base)
        cells = []
        for n in ns:
            if not found[n]:
                cells.append(f"{'-':>18}")
                continue
            value = statistics.median(f.cpu.get(name, 0.0) for f in found[n])
            ratio = f"({value / base_cpu:.2f}x)" if base_cpu else ""
            cells.append(f"{value * 1000:9.1f} {ratio:>8}")
        print(f"    {name:<14}" + "".join(cells))


def idle_rss(stack: Stack, label: str, settle: float = 3.0) -> None:
    time.sleep(settle)
    figures = "  ".join(f"{name} {rss_mib(stack.processes[name].pid):5.1f}" for name in SERVICES)
    print(f"  idle RSS MiB, {label}: {figures} ({load()})")


async def template_messages(stack: Stack, mission_id: str) -> list[bytes]:
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            mission_subject(mission_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        out: list[bytes] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break
            out.append(msg.data)
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def _ids(raw: list[bytes]) -> set[str]:
    """Every id the stored events name, those an attempt's result carries included: a
    clone that kept a carried event's id would be the template's event again, counted
    once across the missions by whoever folds them."""
    found: set[str] = set()
    for data in raw:
        message = json.loads(data)
        for payload in (message, *message.get("carried", [])):
            for key in _ID_KEYS:
                if isinstance(payload.get(key), str) and payload[key]:
                    found.add(payload[key])
    return found


async def publish_history(stack: Stack, raw: list[bytes], copies: int) -> float:
    """Publish ``copies`` clones of one mission's stored events; returns the seconds taken."""
    ids = sorted(_ids(raw), key=len, reverse=True)
    began = time.perf_counter()
    nc = await nats.connect(stack.nats_url)
    try:
        publisher = EventPublisher(nc.jetstream())

        async def clone(_: int) -> None:
            fresh = {
                old: uuid.uuid4().hex[: len(old)] if len(old) <= 32 else str(uuid.uuid4())
                for old in ids
            }
            for data in raw:
                text = data.decode()
                for old in ids:
                    text = text.replace(old, fresh[old])
                await publisher.publish(decode(text.encode()))

        done = 0
        while done < copies:
            batch = min(25, copies - done)
            await asyncio.gather(*(clone(done + i) for i in range(batch)))
            done += batch
    finally:
        await nc.close()
    return time.perf_counter() - began


def rebuilt_seconds(stack: Stack, name: str) -> str:
    """The replay time the service logged last ("projection rebuilt")."""
    path = stack.home / "logs" / f"{name}.log"
    seconds = "?"
    for line in path.read_text(errors="replace").splitlines():
        if "projection rebuilt" in line:
            try:
                seconds = f"{json.loads(line).get('seconds', '?')}"
            except ValueError:
                continue
    return seconds


async def history(
    work: Path,
    missions: int,
    template_tasks: int,
    only: list[str],
    ready_within: float,
    profile: bool = False,
) -> None:
    model = MessagesServer(NoWorkModel(plan_of(template_tasks, "chain"))).start()
    stack = make_stack(work, "history", model.url, only if profile else None)
    try:
        began = time.perf_counter()
        await asyncio.to_thread(stack.start)
        print(f"memory and start-up with history ({load()})")
        print(f"  stack ready in {time.perf_counter() - began:.1f} s")
        idle_rss(stack, "fresh start, empty stream")
        repo = work / "repo-history"
        create_sample_repository(repo)
        events = await run_mission(stack, repo, template_tasks, 1)
        if not any(isinstance(e, MissionCompleted) for e in events):
            print("  the template mission did not complete", file=sys.stderr)
            return
        raw = await template_messages(stack, events[0].mission_id)
        for name in reversed(list(SERVICES)):
            stack.stop_service(name)
        took = await publish_history(stack, raw, missions - 1)
        print(
            f"  history: {missions} finished missions of {len(raw)} events each"
            f" ({len(raw) * missions} events; {template_tasks}-task chains), the clones"
            f" published in {took:.1f} s ({load()})"
        )
        for name in only:
            began = time.perf_counter()
            stack.start_service(name)
            try:
                await asyncio.to_thread(stack.wait_ready, [name], ready_within)
            except TimeoutError:
                print(f"  {name:<13} not ready after {ready_within:.0f} s ({load()})")
                continue
            ready = time.perf_counter() - began
            await asyncio.sleep(3.0)
            replayed = rebuilt_seconds(stack, name)
            print(
                f"  {name:<13} start→ready {ready:6.2f} s, replay {replayed:>6} s,"
                f" RSS {rss_mib(stack.processes[name].pid):6.1f} MiB ({load()})"
            )
    finally:
        await asyncio.to_thread(stack.stop)
        model.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tasks",
        type=int,
        default=200,
        help="the tasks of each run of a size: that many divided by N missions of N tasks",
    )
    parser.add_argument("--missions", type=int, default=1000)
    parser.add_argument("--template-tasks", type=int, default=3)
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--skip-history", action="store_true")
    parser.add_argument(
        "--services", default=",".join(SERVICES), help="the services to start with history"
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the services started with history under cProfile (<work dir>/<name>.prof)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (kept with --profile)"
    )
    args = parser.parse_args()
    with WorkDirectory("aether-scale-", keep=args.keep or args.profile) as work:
        print(f"bench/scale: work dir {work}, {os.cpu_count()} cores, {load()}")
        if not args.skip_history:
            only = args.services.split(",")
            await history(
                work, args.missions, args.template_tasks, only, args.ready_timeout, args.profile
            )
        if not args.skip_sizes:
            await sizes(work, [int(n) for n in args.sizes.split(",")], args.repeats, args.tasks)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
