"""Orchestration overhead per task, next to the bare git work it wraps.

Runs missions of N tasks (independent, then chained) through the five services as
separate processes on embedded NATS and PostgreSQL, with a model server whose agent does
no model work: it writes one file and finishes. For every task it measures TaskReady →
BranchMerged from the events' timestamps. Each stack first runs a small warm-up mission
(``--warm-up``, its wall time printed), as the peers in ``bench/peers`` are timed after
their start-up: a fresh stack's first mission imports the model SDK in the planner and the
runner (at their first model call). Just before each measured mission (the stack idle,
warmed up) and just after it, it times the same git operations in a plain loop (task
branch and worktree at the integration head, write one file, commit, merge, remove the
worktree) with the same adapters the services use, and prints both: the disk they share
can be several times slower from one minute to the next, so the ratios are against the
mean of the two, and a line says when they are far apart.

It also prints, per hop, the median and p95 from one event's timestamp to the next
(TaskReady → WorkspaceReady → AgentStarted → AgentCompleted → BranchMerged → the next
TaskReady that merge caused), each service's mean time in its handlers next to the mean
time an event waited before its handling began, from its occurrence and from its storing
in the stream (the services' own histograms: the difference is the publisher's part), the
CPU each service spent per task, and how many deliveries one task costs; and the CPU per
task of what else shares the machine's cores with them: the NATS server, PostgreSQL (its
server and every backend, those that ended included), the model server, and this
process, which reads the mission's events as they come. With
``--profile`` it runs one more chained mission with the service that spent the most
handler time per task under cProfile and saves the profile (``.prof``, and the top of it
as text) in the work directory, which is then kept (otherwise it is removed at the end
unless ``--keep`` is given or the run failed). With ``--pause-gateway`` it runs one
more chained mission with the gateway stopped (SIGSTOP) from the mission's submission to
its end: on a machine
of few cores the read model's CPU is taken from the services on the mission's path, and
the difference is what it costs them. It also prints, inside each attempt, the time from
AgentStarted to the end of the first model call, between the ends of two calls, and from
the last call's end to AgentCompleted, from the events the attempt emitted as it went;
and, from the agent runner's own histograms, how many of its steps (the preparation
before AgentStarted, the finish check, the commit), tool calls and model calls a task
took and the mean time of one.
Both tables are read from the events' own times, those an attempt's result carries (the
start and usage a short attempt sends inside its result) included: they time the same
steps however the runner sent them, while the deliveries and messages it counts are
those the bus carried (a result and what it carries: one).
With ``--one-reply`` the agent writes its file and finishes in the same reply, as a model
may: one model call a task instead of two. With ``--command CMD`` it also runs ``CMD``
(``run_command``, in the sandbox) beside its write, as an agent running the tests would:
the finish check then scans every file, and the commit's index tells the git broker what
the worktree holds besides the commit. With ``--files N`` the measured missions' and
the plain loop's repository hold N more files: what scanning a middling project's
worktree costs a task.
And it prints how many messages a task costs through the NATS server, by who sent or
received them (the server's own count per connection, ``/connz``, on a monitoring port
the stack's server opens for the bench): each service's connection, and the attempts'
own connections together.

    uv run python bench/overhead.py [--tasks 50] [--shape independent|chain|both]
        [--warm-up 2] [--profile [--profile-service NAME] [--profile-cpu]]
        [--pause-gateway] [--one-reply] [--command CMD] [--files N] [--keep]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import nats
from model_call import serving
from prometheus_client.parser import text_string_to_metric_families

from aether import prestart
from aether.gitview import create_sample_repository
from aether.infra import free_port
from aether.stack import SERVICES, Stack
from aether_agent_runner.adapters.git import GitDir, commit_all
from aether_events import (
    AgentCompleted,
    AgentStarted,
    BranchMerged,
    Event,
    MissionCompleted,
    MissionFailed,
    TaskReady,
    UsageRecorded,
    WorkspaceReady,
    mission_history,
    type_subjects,
    unfolded,
)
from aether_git_broker.adapters.git import GitRepositories
from aether_llm import Reply, tool_use_block
from aether_runtime import tls
from aether_runtime.bus_auth import ADMIN_USER

_TASK = re.compile(r"<task>(.*?)</task>", re.DOTALL)
# A requirement as the planner's prompt holds it (the messages as JSON text).
_REQUIREMENT = re.compile(r"<requirement>\\n(.*?)\\n</requirement>")
WARM_UP = "warm-up"


def plan_of(n: int, shape: str) -> dict[str, Any]:
    tasks = [
        {
            "id": f"t{i}",
            "title": f"Write file {i}",
            "description": f"write bench/f{i}.txt",
            "files": [f"bench/f{i}.txt"],
            "depends_on": [f"t{i - 1}"] if shape == "chain" and i > 1 else [],
            "tier": "small",
        }
        for i in range(1, n + 1)
    ]
    return {"rationale": f"{n} {shape} tasks", "tasks": tasks}


class NoWorkModel:
    """Plans the given graph (or, for a requirement named in ``others``, that one's); an
    agent writes its one file (and runs ``command`` beside it, when given), then finishes:
    in a second reply, or with ``one_reply`` in the same one (one model call a task)."""

    def __init__(
        self,
        plan: dict[str, Any],
        others: dict[str, dict[str, Any]] | None = None,
        one_reply: bool = False,
        command: str | None = None,
    ) -> None:
        self.plan = plan
        self.others = others or {}
        self.one_reply = one_reply
        self.command = command

    def __call__(self, request: dict[str, Any]) -> Reply:
        tools = {t["name"] for t in request.get("tools", [])}
        if "submit_plan" in tools:
            text = json.dumps(request["messages"])
            named = _REQUIREMENT.search(text)
            plan = self.others.get(named.group(1), self.plan) if named else self.plan
            return Reply([tool_use_block("submit_plan", plan)], "tool_use", 10, 10)
        content = request["messages"][0]["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        found = _TASK.search(text)
        assert found is not None
        task = json.loads(found.group(1))
        if any(m["role"] == "assistant" for m in request["messages"]):
            return Reply([tool_use_block("finish", {"summary": "done"})], "tool_use", 10, 1)
        write = {"path": task["files"][0], "content": f"{task['id']}\n"}
        blocks = [tool_use_block("write_file", write)]
        if self.command is not None:
            blocks.append(tool_use_block("run_command", {"command": self.command}))
        if self.one_reply:
            blocks.append(tool_use_block("finish", {"summary": "done"}))
        return Reply(blocks, "tool_use", 10, 5)


@contextlib.contextmanager
def model_server(
    plan: dict[str, Any],
    others: dict[str, dict[str, Any]],
    one_reply: bool = False,
    command: str | None = None,
) -> Iterator[tuple[str, int]]:
    """The no-work model's URL and process id, served from a process of its own: the
    model is not part of what is measured, and a server thread in this process would
    share its interpreter lock with the mission's event reading here."""
    with serving(NoWorkModel(plan, others, one_reply, command)) as served:
        yield served


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class WorkDirectory:
    """A run's work directory (its repositories, the stacks' NATS and PostgreSQL data,
    their logs), removed when the run ends: each run left a hundred megabytes or more
    in the temporary directory, and nothing took them away. It is kept whole when
    ``keep`` is set (``--keep``, or a run that saved profiles there) or the run failed
    (an exception, or ``keep`` set on the way), and the entries named in ``spare`` are
    kept in any case (an environment a later run can use again); what is kept is
    printed."""

    def __init__(self, prefix: str, keep: bool = False, spare: Iterable[str] = ()) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep
        self._spare = set(spare)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.keep or kind is not None:
            print(f"  work directory kept: {self.path}", file=sys.stderr)
            return
        spared = []
        for entry in self.path.iterdir():
            if entry.name in self._spare:
                spared.append(entry)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if spared:
            print(f"  kept: {', '.join(str(entry) for entry in spared)}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def summary(values: list[float]) -> str:
    mean, p50, p95 = statistics.fmean(values), statistics.median(values), percentile(values, 0.95)
    return f"mean {mean * 1000:7.1f} ms  p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


async def run_mission(
    stack: Stack,
    repo: Path,
    n: int,
    concurrency: int,
    requirement: str = "benchmark",
    paused: str | None = None,
) -> list[Event]:
    """Run one mission through ``stack`` and return its history. ``paused``: a service
    stopped (SIGSTOP) from the mission's submission to its end, and then let go on."""
    nc = await nats.connect(stack.nats_url)
    stopped = None
    try:
        async with httpx.AsyncClient(
            verify=tls.shared(), base_url=stack.gateway_url, timeout=30, headers=stack.auth_headers
        ) as http:
            created = await http.post(
                "/missions",
                json={
                    "repository": str(repo),
                    "requirement": requirement,
                    "auto_approve": True,
                    "max_tasks": n,
                    "max_concurrency": concurrency,
                },
            )
            created.raise_for_status()
            mission_id = created.json()["mission_id"]
        if paused is not None:
            stopped = stack.processes[paused].process.pid
            os.kill(stopped, signal.SIGSTOP)
        # Only the mission's end is watched while it runs; its history is read once it
        # has ended. An observer decoding each of its events live would take the CPU
        # the services need (the peers run with no observer at all).
        done = asyncio.Event()

        async def on_end(msg: Any) -> None:
            done.set()

        ends = [
            subject
            for cls in (MissionCompleted, MissionFailed)
            for subject in type_subjects(cls, mission_id)
        ]
        subs = [await nc.subscribe(subject, cb=on_end) for subject in ends]
        js = nc.jetstream()
        # An end stored before the subscriptions began is found in the stream.
        stored = await mission_history(js, mission_id)
        if not any(isinstance(event, MissionCompleted | MissionFailed) for event in stored):
            await asyncio.wait_for(done.wait(), timeout=60 + 10 * n)
        for sub in subs:
            await sub.unsubscribe()
        return await mission_history(js, mission_id)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await nc.close()


# The most tasks a mission may ask for (``max_tasks``, the gateway's request body).
MAX_TASKS = 200

HOPS = ("TaskReady", "WorkspaceReady", "AgentStarted", "AgentCompleted", "BranchMerged")
_HOP_TYPES: dict[type[Event], str] = {
    TaskReady: "TaskReady",
    WorkspaceReady: "WorkspaceReady",
    AgentStarted: "AgentStarted",
    AgentCompleted: "AgentCompleted",
    BranchMerged: "BranchMerged",
}


def _task_of(event: Event) -> str:
    task_id = getattr(event, "task_id", None)
    return str(task_id if task_id is not None else event.task.id)  # type: ignore[attr-defined]


def per_task(events: list[Event]) -> dict[str, list[float]]:
    """Seconds per hop (keyed "A→B"), per task, from the events' own timestamps; the last
        hops are from an event to the TaskReady it caused (a merge that freed a dependent task,
    an agent's result that freed a slot).
        Also "ready_to_merged": TaskReady → BranchMerged of each task. ``events`` as stored:
    the events a result carries count at their own times (``unfolded``)."""
    at: dict[tuple[str, str], datetime] = {}
    # Event id -> (type, time) of every hop event, to find what caused a later TaskReady.
    causes: dict[str, tuple[str, datetime]] = {}
    out: dict[str, list[float]] = {"ready_to_merged": []}
    for a, b in itertools.pairwise(HOPS):
        out[f"{a}→{b}"] = []
    for event in unfolded(events):
        name = _HOP_TYPES.get(type(event))
        if name is None:
            continue
        task = _task_of(event)
        # A retried task keeps its latest attempt's times.
        at[(task, name)] = event.occurred_at
        causes[event.event_id] = (name, event.occurred_at)
        cause = causes.get(event.causation_id or "")
        if isinstance(event, TaskReady) and cause is not None:
            hop = f"{cause[0]}→next TaskReady"
            out.setdefault(hop, []).append((event.occurred_at - cause[1]).total_seconds())
    tasks = {task for task, _ in at}
    for task in tasks:
        for a, b in itertools.pairwise(HOPS):
            if (task, a) in at and (task, b) in at:
                out[f"{a}→{b}"].append((at[(task, b)] - at[(task, a)]).total_seconds())
        if (task, "TaskReady") in at and (task, "BranchMerged") in at:
            out["ready_to_merged"].append(
                (at[(task, "BranchMerged")] - at[(task, "TaskReady")]).total_seconds()
            )
    return out


def inside_attempts(events: list[Event]) -> dict[str, list[float]]:
    """Seconds per phase of each attempt, from the events it emitted as it went: from
    AgentStarted to the end of its first model call (its UsageRecorded), from one model
    call's end to the next's (the tool calls between them and the call), and from the
    last call's end to AgentCompleted (the finish check and the commit). ``events`` as
    stored: the start and usage a result carries count at their own times, each once
    (``unfolded``)."""
    started: dict[tuple[str, int], datetime] = {}
    calls: dict[tuple[str, int], list[datetime]] = {}
    done: dict[tuple[str, int], datetime] = {}
    for event in unfolded(events):
        if isinstance(event, AgentStarted):
            started[(event.task_id, event.attempt)] = event.occurred_at
        elif isinstance(event, UsageRecorded) and event.task_id and event.attempt:
            calls.setdefault((event.task_id, event.attempt), []).append(event.occurred_at)
        elif isinstance(event, AgentCompleted):
            done[(event.task_id, event.attempt)] = event.occurred_at
    out: dict[str, list[float]] = {
        "AgentStarted→first model call ends": [],
        "a model call ends→the next ends": [],
        "last model call ends→AgentCompleted": [],
    }
    for attempt, began in started.items():
        ends = sorted(calls.get(attempt, []))
        if attempt not in done or not ends:
            continue
        out["AgentStarted→first model call ends"].append((ends[0] - began).total_seconds())
        for one, two in itertools.pairwise(ends):
            out["a model call ends→the next ends"].append((two - one).total_seconds())
        out["last model call ends→AgentCompleted"].append(
            (done[attempt] - ends[-1]).total_seconds()
        )
    return out


def print_plain_around(shape: str, run: ShapeRun) -> None:
    """The plain loop just before and just after the mission, and how far apart they are:
    the disk both share can be several times slower from one minute to the next, and a
    ratio against a baseline taken at another moment then says more about the disk."""
    means = run.plain_means
    if len(means) < 2:
        return
    drift = max(means) / min(means)
    note = " (the disk moved between them: read the ratios with care)" if drift > 1.5 else ""
    print(
        f"  {shape:<11} plain git loop per task  just before {means[0] * 1000:.1f} ms,"
        f" just after {means[1] * 1000:.1f} ms{note}"
    )


def print_hops(shape: str, figures: dict[str, list[float]], title: str = "hop") -> None:
    print(f"  {shape}: {title:<38} p50 ms   p95 ms")
    for hop, values in figures.items():
        if hop == "ready_to_merged" or not values:
            continue
        p50, p95 = statistics.median(values) * 1000, percentile(values, 0.95) * 1000
        print(f"    {hop:<38} {p50:7.1f}  {p95:7.1f}")


# The agent runner's histograms of its own steps, its tools and its model calls, read by
# label (``print_runner_steps``): family, label.
RUNNER_STEPS = {
    "aether_agent_step_duration_seconds": "step",
    "aether_agent_tool_duration_seconds": "tool",
    "aether_model_request_duration_seconds": "model",
}


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the handler, delivery-delay and consumer-wait histograms at
    ``url``/metrics (every label together), and of the runner's ``RUNNER_STEPS`` by label
    (``<sample>|<label value>``)."""
    text = httpx.get(f"{url}/metrics", timeout=10, verify=tls.shared()).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        by = RUNNER_STEPS.get(family.name)
        if by is None and family.name not in (
            "aether_handler_duration_seconds",
            "aether_event_delivery_delay_seconds",
            "aether_event_consumer_wait_seconds",
        ):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                key = sample.name if by is None else f"{sample.name}|{sample.labels.get(by, '')}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def print_runner_steps(
    shape: str, stack: Stack, n: int, before: dict[str, dict[str, float]] | None
) -> None:
    """Per task, the agent runner's own steps, tool calls and model calls since
    ``before`` (its histograms): how many, and the mean ms of one."""
    earlier = (before or {}).get("agent-runner", {})
    totals = scrape(stack.processes["agent-runner"].url)
    print(f"  {shape}: inside the agent runner            per task   mean ms")
    for family, by in RUNNER_STEPS.items():
        for key in sorted(totals):
            if not key.startswith(f"{family}_count|"):
                continue
            label = key.split("|", 1)[1]
            count = totals[key] - earlier.get(key, 0.0)
            spent = totals.get(f"{family}_sum|{label}", 0.0)
            spent -= earlier.get(f"{family}_sum|{label}", 0.0)
            if count > 0:
                what = f"{by} {label}"
                print(f"    {what:<38} {count / n:8.1f}  {spent / count * 1000:8.2f}")


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """User plus system CPU time of a process (Linux); with ``reaped_children``, that of
    its children it has waited for too."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                    out.append(int(entry.name))
    return out


def server_cpu(stack: Stack, model_pid: int) -> dict[str, float]:
    """CPU seconds so far of what shares the cores with the services: the stack's NATS
    server, its PostgreSQL (the postmaster with the backends it reaped, and the live
    ones), the model server and this process."""
    out = {"this process": time.process_time(), "model server": cpu_seconds(model_pid)}
    with contextlib.suppress(OSError, AttributeError, TypeError):
        out["nats-server"] = cpu_seconds(stack._nats.process.pid)  # type: ignore[union-attr]
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((stack.home / "postgres" / "postmaster.pid").read_text().split()[0])
        total = cpu_seconds(postmaster, reaped_children=True)
        for child in _children(postmaster):
            with contextlib.suppress(OSError):
                total += cpu_seconds(child)
        out["PostgreSQL"] = total
    return out


def service_cpu(stack: Stack) -> dict[str, float]:
    out = {}
    for name, service in stack.processes.items():
        try:
            out[name] = cpu_seconds(service.process.pid)
        except OSError:
            out[name] = 0.0
    return out


def scrape_all(stack: Stack) -> dict[str, dict[str, float]]:
    """``scrape`` of every service."""
    return {name: scrape(stack.processes[name].url) for name in SERVICES}


def print_services(
    shape: str,
    stack: Stack,
    n: int,
    cpu_before: dict[str, float],
    before: dict[str, dict[str, float]] | None = None,
    servers_before: dict[str, float] | None = None,
    model_pid: int = 0,
) -> dict[str, float]:
    """Per service, since ``before`` (the services' metrics then): deliveries per task,
    mean handler ms, mean wait before handling, CPU ms per task; then the CPU per task
    of the servers beside them since ``servers_before``. Returns handler seconds per
    task by service."""
    cpu_after = service_cpu(stack)
    servers_after = server_cpu(stack, model_pid) if servers_before is not None else {}
    print(
        f"  {shape}: service        deliveries/task  handler ms  waited ms  since stored"
        "  CPU ms/task"
    )
    handler_per_task: dict[str, float] = {}
    total_deliveries = 0.0
    for name in SERVICES:
        earlier = (before or {}).get(name, {})
        totals = {
            key: value - earlier.get(key, 0.0)
            for key, value in scrape(stack.processes[name].url).items()
        }
        count = totals.get("aether_handler_duration_seconds_count", 0.0)
        spent = totals.get("aether_handler_duration_seconds_sum", 0.0)
        waits = totals.get("aether_event_delivery_delay_seconds_count", 0.0)
        waited = totals.get("aether_event_delivery_delay_seconds_sum", 0.0)
        stored = totals.get("aether_event_consumer_wait_seconds_count", 0.0)
        since_stored = totals.get("aether_event_consumer_wait_seconds_sum", 0.0)
        cpu = (cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0)) / n * 1000
        handler_per_task[name] = spent / n
        total_deliveries += count
        print(
            f"    {name:<14} {count / n:12.1f}  {spent / max(count, 1) * 1000:10.2f}"
            f"  {waited / max(waits, 1) * 1000:9.2f}  {since_stored / max(stored, 1) * 1000:12.2f}"
            f"  {cpu:10.1f}"
        )
    print(f"    all services   {total_deliveries / n:12.1f} deliveries per task")
    if servers_before is not None:
        beside = ", ".join(
            f"{name} {(after - servers_before.get(name, after)) / n * 1000:.1f}"
            for name, after in servers_after.items()
        )
        services = sum(cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0) for name in SERVICES)
        print(f"    CPU ms/task beside the services: {beside}")
        beside_total = sum(v - servers_before.get(k, v) for k, v in servers_after.items())
        print(f"    CPU ms/task, all of it: {(services + beside_total) / n * 1000:.1f}")
    return handler_per_task


# A connection, by its NATS user (a service's own, one attempt's, the stack's
# administrator: this process), and the messages it sent to the server and received.
BusConnection = tuple[str, int, int]


def bus_messages(monitor_port: int) -> dict[int, BusConnection]:
    """Every connection the server knows, open or closed (by connection id): who it was
    and how many messages it sent to the server and received from it so far."""
    reply = httpx.get(
        f"http://127.0.0.1:{monitor_port}/connz",
        params={"state": "all", "auth": "true", "limit": 100_000},
        timeout=10.0,
    )
    reply.raise_for_status()
    found: dict[int, BusConnection] = {}
    for conn in reply.json().get("connections") or []:
        user = str(conn.get("authorized_user") or "(no user)")
        if user.startswith("attempt/"):
            who = "agent-runner attempts"
        elif user == ADMIN_USER:
            who = "this process"
        else:
            who = user
        found[int(conn["cid"])] = (who, int(conn["in_msgs"]), int(conn["out_msgs"]))
    return found


def print_bus_messages(
    shape: str, before: dict[int, BusConnection], after: dict[int, BusConnection], n: int
) -> None:
    """Messages a task through the server since ``before``, by who sent or received them
    (sent: to the server; received: delivered by it)."""
    sent: dict[str, int] = {}
    received: dict[str, int] = {}
    for cid, (who, into, out) in after.items():
        _, into_before, out_before = before.get(cid, (who, 0, 0))
        sent[who] = sent.get(who, 0) + into - into_before
        received[who] = received.get(who, 0) + out - out_before
    print(f"  {shape}: messages a task through NATS        sent   received      all")
    for who in sorted(sent, key=lambda w: -(sent[w] + received[w])):
        both = sent[who] + received[who]
        if both:
            print(f"    {who:<36} {sent[who] / n:7.1f} {received[who] / n:10.1f} {both / n:8.1f}")
    everything = sum(sent.values()) + sum(received.values())
    print(
        f"    {'all connections':<36} {sum(sent.values()) / n:7.1f}"
        f" {sum(received.values()) / n:10.1f} {everything / n:8.1f}"
    )


def bench_repository(path: Path, files: int = 0) -> None:
    """The sample repository, with ``files`` more files committed in a second commit
    (50 directories of 7 subdirectories): the size of a middling project, whose every
    per-task scan of the worktree shows. Committed with the git command line, its
    background gc off (one started meanwhile packs and prunes the loose objects under
    the measured work)."""
    create_sample_repository(path)
    if not files:
        return
    for i in range(files):
        target = path / "lib" / f"pkg{i % 50}" / f"sub{i % 7}" / f"m{i}.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"VALUE = {i}\n")
    git = ["git", "-C", str(path), "-c", "gc.auto=0", "-c", "user.name=bench"]
    subprocess.run([*git, "add", "lib"], check=True)
    email = ["-c", "user.email=bench@aether.invalid"]
    subprocess.run([*git, *email, "commit", "-q", "-m", f"{files} files"], check=True)


def plain_git_loop(work: Path, n: int, files: int = 0, label: str = "") -> list[float]:
    """The same git operations, one task after another, with no events in between (in a
    repository of its own, named by ``label``)."""
    suffix = f"-{label}" if label else ""
    repo = work / f"plain-repo{suffix}"
    bench_repository(repo, files)
    git = GitRepositories()
    git.prepare_repository(str(repo), "main", "bench/plain")
    base = None
    durations = []
    for i in range(1, n + 1):
        began = time.perf_counter()
        ws = git.prepare_workspace(
            str(repo), "bench/plain", f"bench-tasks/t{i}", str(work / f"wt{suffix}" / f"t{i}")
        )
        base = base or ws.base_sha
        target = Path(ws.worktree_path) / "bench" / f"f{i}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"t{i}\n")
        records = GitDir.linked(Path(ws.worktree_path), Path(ws.git_dir), ws.branch)
        sha, _ = commit_all(records, f"t{i}\n\nAether-Task: t{i}\nAether-Attempt: 1\n")
        assert sha is not None
        git.merge(
            repository_path=str(repo),
            integration_branch="bench/plain",
            since_sha=base,
            mission_id="bench",
            task_id=f"t{i}",
            attempt=1,
            commit_sha=sha,
            now=datetime.now(UTC),
        )
        git.remove_worktree(str(repo), ws.worktree_path)
        durations.append(time.perf_counter() - began)
    return durations


def plain_bracket(work: Path, n: int, files: int, shape: str) -> Callable[[], list[float]]:
    """The plain loop of ``n`` tasks, in a repository of its own each time it is called."""
    runs = itertools.count(1)
    return lambda: plain_git_loop(work, n, files, f"{shape}-{next(runs)}")


async def warm_up_stack(stack: Stack, work: Path, label: str, tasks: int, concurrency: int) -> bool:
    """Run the stack's first mission, of ``tasks`` tasks (the model server's plan for the
    ``WARM_UP`` requirement), and print its wall time; whether it completed.

    A fresh stack's first mission pays one-time costs a measured one must not: the model
    SDK's import at the planner's and the runner's first model call, the services' first
    statements and connections."""
    repo = work / f"repo-{label}-warm-up"
    create_sample_repository(repo)
    began = time.perf_counter()
    events = await run_mission(stack, repo, tasks, concurrency, WARM_UP)
    took = time.perf_counter() - began
    if not any(isinstance(e, MissionCompleted) for e in events):
        print(f"  {label}: the warm-up mission did not complete", file=sys.stderr)
        return False
    print(f"  {label}: warm-up mission of {tasks} tasks (the stack's first) {took:.2f} s")
    return True


@dataclass
class ShapeRun:
    """One measured mission: its events, wall time and stack, the services' handler
    seconds per task, and the plain loop's task times just before it and just after it
    (when asked for: ``bracket``)."""

    events: list[Event]
    wall: float
    stack: Stack
    handler: dict[str, float]
    plain_before: list[float] = field(default_factory=list)
    plain_after: list[float] = field(default_factory=list)

    @property
    def plain_means(self) -> list[float]:
        """The plain loop's mean seconds a task in each run made (before, after)."""
        return [statistics.fmean(run) for run in (self.plain_before, self.plain_after) if run]

    @property
    def plain(self) -> float:
        """The plain loop's mean seconds a task around the mission: the mean of the two
        runs, each weighted alike (the disk it shares can be several times slower
        from one minute to the next)."""
        means = self.plain_means
        return statistics.fmean(means) if means else 0.0


async def run_shape(
    work: Path,
    label: str,
    shape: str,
    n: int,
    concurrency: int,
    python_options: dict[str, list[str]] | None = None,
    warm_up: int = 2,
    paused: str | None = None,
    one_reply: bool = False,
    files: int = 0,
    command: str | None = None,
    bracket: Callable[[], list[float]] | None = None,
) -> ShapeRun:
    """One mission through a fresh stack, after a warm-up mission of ``warm_up`` tasks on
    the same stack (the peers too are timed after their start-up): its events, wall time,
    and (read before the stack stops) the services' handler seconds per task. Prints the
    warm-up's wall time and the measured mission's hop and service tables. ``bracket``,
    the plain loop, is run just before the mission (after the warm-up, the stack idle)
    and just after it (before the stack stops): the baseline as the disk was then."""
    others = {WARM_UP: plan_of(warm_up, shape)} if warm_up else {}
    with model_server(plan_of(n, shape), others, one_reply, command) as (model_url, model_pid):
        return await _run_shape(
            work,
            label,
            shape,
            n,
            concurrency,
            model_url,
            model_pid,
            python_options,
            warm_up,
            paused,
            files,
            bracket,
        )


async def _run_shape(
    work: Path,
    label: str,
    shape: str,
    n: int,
    concurrency: int,
    model_url: str,
    model_pid: int,
    python_options: dict[str, list[str]] | None,
    warm_up: int,
    paused: str | None = None,
    files: int = 0,
    bracket: Callable[[], list[float]] | None = None,
) -> ShapeRun:
    stack = Stack(
        home=work / f"stack-{label}",
        random_ports=True,
        prestart=prestart.shared(),
        env={
            "ANTHROPIC_API_KEY": "bench",
            "ANTHROPIC_BASE_URL": model_url,
            # As many agents as the mission runs at once (the runner's default is two).
            "AETHER_AGENT_CONCURRENCY": str(concurrency),
        },
        python_options=python_options or {},
        nats_monitor_port=free_port(),
    )
    run = ShapeRun(events=[], wall=0.0, stack=stack, handler={})
    try:
        await asyncio.to_thread(stack.start)
        if warm_up and not await warm_up_stack(stack, work, label, warm_up, concurrency):
            return run
        repo = work / f"repo-{label}"
        await asyncio.to_thread(bench_repository, repo, files)
        if bracket is not None:
            run.plain_before = await asyncio.to_thread(bracket)
        before = await asyncio.to_thread(scrape_all, stack)
        cpu_before = service_cpu(stack)
        servers_before = server_cpu(stack, model_pid)
        messages_before = await asyncio.to_thread(bus_messages, stack.nats_monitor_port)
        began = time.perf_counter()
        run.events = await run_mission(stack, repo, n, concurrency, paused=paused)
        run.wall = time.perf_counter() - began
        if any(isinstance(e, MissionCompleted) for e in run.events):
            print_hops(label, per_task(run.events))
            print_hops(label, inside_attempts(run.events), "inside the attempts")
            run.handler = await asyncio.to_thread(
                print_services, label, stack, n, cpu_before, before, servers_before, model_pid
            )
            await asyncio.to_thread(print_runner_steps, label, stack, n, before)
            messages = await asyncio.to_thread(bus_messages, stack.nats_monitor_port)
            print_bus_messages(label, messages_before, messages, n)
            if bracket is not None:
                run.plain_after = await asyncio.to_thread(bracket)
    finally:
        await asyncio.to_thread(stack.stop)
    return run


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--shape", choices=["independent", "chain", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--warm-up",
        type=int,
        default=2,
        help="tasks of the mission each stack runs before the measured one (0: none)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the service with the most handler time in one more chained mission",
    )
    parser.add_argument(
        "--profile-service",
        choices=list(SERVICES),
        help="the service to profile with --profile (default: the one with most handler time)",
    )
    parser.add_argument(
        "--profile-cpu",
        action="store_true",
        help="with --profile, time functions by the event loop thread's CPU time instead of"
        " the wall clock",
    )
    parser.add_argument(
        "--pause-gateway",
        action="store_true",
        help="run one more chained mission with the gateway stopped while it runs (what the"
        " read model's CPU costs the services on the mission's path)",
    )
    parser.add_argument(
        "--one-reply",
        action="store_true",
        help="the agent writes its file and finishes in one reply (one model call a task"
        " instead of two)",
    )
    parser.add_argument(
        "--command",
        help="a command the agent runs beside its write (run_command, in the sandbox): the"
        " finish check then scans every file",
    )
    parser.add_argument(
        "--files",
        type=int,
        default=0,
        help="files added to the measured missions' repository and the plain loop's"
        " (the sample has 2): what the per-task scans of a worktree cost as it grows",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (kept with --profile)"
    )
    args = parser.parse_args()
    if not 1 <= args.tasks <= MAX_TASKS:
        parser.error(f"--tasks: a mission holds 1 to {MAX_TASKS} tasks (the gateway's max_tasks)")
    workdir = WorkDirectory("aether-bench-", keep=args.keep or args.profile)
    with workdir as work:
        status = await measure(args, work)
        workdir.keep = workdir.keep or status != 0
    return status


async def measure(args: argparse.Namespace, work: Path) -> int:
    shapes = ["independent", "chain"] if args.shape == "both" else [args.shape]
    print(
        f"bench/overhead: N={args.tasks} tasks, concurrency {args.concurrency},"
        f" {args.files + 2} files, work dir {work}"
    )
    handler_total: dict[str, float] = {}
    for shape in shapes:
        run = await run_shape(
            work,
            shape,
            shape,
            args.tasks,
            args.concurrency,
            warm_up=args.warm_up,
            one_reply=args.one_reply,
            files=args.files,
            command=args.command,
            bracket=plain_bracket(work, args.tasks, args.files, shape),
        )
        for name, seconds in run.handler.items():
            handler_total[name] = handler_total.get(name, 0.0) + seconds
        if not any(isinstance(e, MissionCompleted) for e in run.events):
            print(f"  {shape}: the mission did not complete", file=sys.stderr)
            return 1
        print_plain_around(shape, run)
        latency = per_task(run.events)["ready_to_merged"]
        overhead = statistics.fmean(latency) - run.plain
        print(f"  {shape:<11} TaskReady→BranchMerged  {summary(latency)}")
        ratio = statistics.fmean(latency) / run.plain
        per = run.wall / args.tasks * 1000
        print(
            f"  {shape:<11} mission wall time {run.wall:6.1f} s ({per:.0f} ms/task,"
            f" {per / (run.plain * 1000):.1f}x the plain git loop around it);"
            f" mean latency is {ratio:.1f}x the plain git work (+{overhead * 1000:.0f} ms/task)"
        )
    if args.pause_gateway:
        paused = await run_shape(
            work,
            "chain-gateway-paused",
            "chain",
            args.tasks,
            args.concurrency,
            warm_up=args.warm_up,
            paused="gateway",
            one_reply=args.one_reply,
            files=args.files,
            command=args.command,
        )
        latency = per_task(paused.events)["ready_to_merged"]
        if latency:
            print(f"  chain, gateway paused  TaskReady→BranchMerged  {summary(latency)}")
            print(
                f"  chain, gateway paused  mission wall time {paused.wall:6.1f} s"
                f" ({paused.wall / args.tasks * 1000:.0f} ms/task)"
            )
    if args.profile and (handler_total or args.profile_service):
        slowest = args.profile_service or max(handler_total, key=lambda name: handler_total[name])
        out = work / f"profile-{slowest}.prof"
        print(f"  profiling {slowest} in one more chained mission")
        await run_shape(
            work,
            f"profile-{slowest}",
            "chain",
            args.tasks,
            args.concurrency,
            {
                slowest: [
                    str(Path(__file__).with_name("profiled.py")),
                    *(["--cpu"] if args.profile_cpu else []),
                    str(out),
                ]
            },
            args.warm_up,
            one_reply=args.one_reply,
            files=args.files,
            command=args.command,
        )
        if out.exists():
            text = io.StringIO()
            pstats.Stats(str(out), stream=text).sort_stats("cumulative").print_stats(40)
            (work / f"profile-{slowest}.txt").write_text(text.getvalue())
            print(f"  profile of {slowest}: {out} (top functions: {out.with_suffix('.txt')})")
        else:
            print(f"  {slowest} wrote no profile", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
