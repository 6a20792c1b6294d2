"""Orchestration overhead per task, next to the bare git work it wraps.

Runs missions of N tasks (independent, then chained) through the five services as
separate processes on embedded NATS and PostgreSQL, with a model server whose agent does
no model work: it writes one file and finishes. For every task it measures TaskReady →
BranchMerged from the events' timestamps. In the same run it times the same git
operations in a plain loop (task branch and worktree at the integration head, write one
file, commit, merge, remove the worktree) with the same adapters the services use.

    uv run python bench/overhead.py [--tasks 50] [--shape independent|chain|both]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js.api import DeliverPolicy

from aether.gitview import create_sample_repository
from aether.stack import Stack
from aether_agent_runner.adapters.git import commit_all
from aether_events import (
    BranchMerged,
    Event,
    MissionCompleted,
    MissionFailed,
    TaskReady,
    WorkspaceReady,
    decode,
    mission_subject,
)
from aether_git_broker.adapters.git import GitRepositories
from aether_llm import MessagesServer, Reply, tool_use_block

_TASK = re.compile(r"<task>(.*?)</task>", re.DOTALL)


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
    """Plans the given graph; an agent writes its one file, then finishes."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan

    def __call__(self, request: dict[str, Any]) -> Reply:
        tools = {t["name"] for t in request.get("tools", [])}
        if "submit_plan" in tools:
            return Reply([tool_use_block("submit_plan", self.plan)], "tool_use", 10, 10)
        content = request["messages"][0]["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        found = _TASK.search(text)
        assert found is not None
        task = json.loads(found.group(1))
        if any(m["role"] == "assistant" for m in request["messages"]):
            return Reply([tool_use_block("finish", {"summary": "done"})], "tool_use", 10, 1)
        write = {"path": task["files"][0], "content": f"{task['id']}\n"}
        return Reply([tool_use_block("write_file", write)], "tool_use", 10, 5)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    mean, p50 = statistics.fmean(values), statistics.median(values)
    return f"mean {mean * 1000:7.1f} ms  p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


async def run_mission(stack: Stack, repo: Path, n: int, concurrency: int) -> list[Event]:
    nc = await nats.connect(stack.nats_url)
    try:
        async with httpx.AsyncClient(
            base_url=stack.gateway_url, timeout=30, headers=stack.auth_headers
        ) as http:
            created = await http.post(
                "/missions",
                json={
                    "repository": str(repo),
                    "requirement": "benchmark",
                    "auto_approve": True,
                    "max_tasks": n,
                    "max_concurrency": concurrency,
                },
            )
            created.raise_for_status()
            mission_id = created.json()["mission_id"]
        events: list[Event] = []
        done = asyncio.Event()

        async def on_message(msg: Any) -> None:
            event = decode(msg.data)
            events.append(event)
            if isinstance(event, MissionCompleted | MissionFailed):
                done.set()

        sub = await nc.jetstream().subscribe(
            mission_subject(mission_id),
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        await asyncio.wait_for(done.wait(), timeout=60 + 10 * n)
        await sub.unsubscribe()
        return events
    finally:
        await nc.close()


def per_task(events: list[Event]) -> dict[str, list[float]]:
    ready: dict[str, datetime] = {}
    workspace: dict[str, datetime] = {}
    out: dict[str, list[float]] = {"ready_to_merged": [], "ready_to_workspace": []}
    for event in events:
        if isinstance(event, TaskReady):
            ready[event.task.id] = event.occurred_at
        elif isinstance(event, WorkspaceReady):
            workspace[event.task.id] = event.occurred_at
        elif isinstance(event, BranchMerged):
            out["ready_to_merged"].append(
                (event.occurred_at - ready[event.task_id]).total_seconds()
            )
    out["ready_to_workspace"] = [(workspace[t] - ready[t]).total_seconds() for t in workspace]
    return out


def plain_git_loop(work: Path, n: int) -> list[float]:
    """The same git operations, one task after another, with no events in between."""
    repo = work / "plain-repo"
    create_sample_repository(repo)
    git = GitRepositories()
    git.prepare_repository(str(repo), "main", "bench/plain")
    base = None
    durations = []
    for i in range(1, n + 1):
        began = time.perf_counter()
        ws = git.prepare_workspace(
            str(repo), "bench/plain", f"bench-tasks/t{i}", str(work / "wt" / f"t{i}")
        )
        base = base or ws.base_sha
        target = Path(ws.worktree_path) / "bench" / f"f{i}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"t{i}\n")
        sha, _ = commit_all(
            Path(ws.worktree_path), f"t{i}\n\nAether-Task: t{i}\nAether-Attempt: 1\n"
        )
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


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--shape", choices=["independent", "chain", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    shapes = ["independent", "chain"] if args.shape == "both" else [args.shape]
    work = Path(tempfile.mkdtemp(prefix="aether-bench-"))
    print(f"bench/overhead: N={args.tasks} tasks, concurrency {args.concurrency}, work dir {work}")
    baseline = plain_git_loop(work, args.tasks)
    print(f"  plain git loop per task          {summary(baseline)}")
    for shape in shapes:
        model = MessagesServer(NoWorkModel(plan_of(args.tasks, shape))).start()
        stack = Stack(
            home=work / f"stack-{shape}",
            random_ports=True,
            env={"ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": model.url},
        )
        try:
            await asyncio.to_thread(stack.start)
            repo = work / f"repo-{shape}"
            create_sample_repository(repo)
            began = time.perf_counter()
            events = await run_mission(stack, repo, args.tasks, args.concurrency)
            wall = time.perf_counter() - began
        finally:
            await asyncio.to_thread(stack.stop)
            model.stop()
        if not any(isinstance(e, MissionCompleted) for e in events):
            print(f"  {shape}: the mission did not complete", file=sys.stderr)
            return 1
        figures = per_task(events)
        latency = figures["ready_to_merged"]
        overhead = statistics.fmean(latency) - statistics.fmean(baseline)
        print(f"  {shape:<11} TaskReady→BranchMerged  {summary(latency)}")
        print(f"  {shape:<11} TaskReady→WorkspaceReady {summary(figures['ready_to_workspace'])}")
        ratio = statistics.fmean(latency) / statistics.fmean(baseline)
        per = wall / args.tasks * 1000
        print(
            f"  {shape:<11} mission wall time {wall:6.1f} s ({per:.0f} ms/task);"
            f" mean latency is {ratio:.1f}x the plain git work (+{overhead * 1000:.0f} ms/task)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
