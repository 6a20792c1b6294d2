"""The floor of Aether's design: what a chained task costs when each of its steps is a
separate process on JetStream and nothing else is done.

A chained task in Aether crosses four processes in four deliveries (TaskReady: scheduler
→ git broker; WorkspaceReady: broker → runner; AgentCompleted: runner → broker;
BranchMerged: broker → scheduler); a short attempt's AgentStarted and usage go inside its
result, and a task's waves inside its TaskReady, so nothing more is published on the way.
This bench builds exactly that ring with nothing of Aether's in it: three processes (a
"scheduler", a "broker", a "runner"), each a durable pull consumer on one file-stored
stream, each delivery decoded, the next event published with its ``Nats-Msg-Id`` and its
publish acknowledgement awaited, then the delivery acknowledged. With ``--observer`` a
fourth process consumes every event as the gateway's read model does (a consumer more,
no database).

It runs the ring twice, with no work and with the same git work as ``bench/overhead.py``'s
plain loop split where Aether does it (the broker prepares the worktree and merges, the
runner writes the file and commits), and, in the same run, the plain git loop. What it
prints is a lower bound for any build of this design on this machine: the "bus only" ms
per task is what the four hops cost at the least, and "bus + git" over the plain loop is
the best ratio the design can reach with the agent doing no model call at all.

With ``--model-calls`` it runs the ring a third time with the runner making the two model
calls ``bench/overhead.py``'s agent makes (one before the write, one after), through the
anthropic SDK to a local Messages API server in a process of its own, read as the
built-in loop reads them (``aether_llm.streamed.stream_reply``): the floor of the design
with an agent that calls a model at all.

    uv run python bench/bus_floor.py [--tasks 200] [--observer] [--model-calls]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from aether.gitview import create_sample_repository
from aether.infra import EmbeddedNats
from aether_agent_runner.adapters.git import GitDir, commit_all
from aether_git_broker.adapters.git import GitRepositories
from aether_llm import LLMSettings, make_client
from aether_llm.streamed import stream_reply

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_call import agent_request, served
from overhead import plain_git_loop, summary

STREAM = "FLOOR"


class Step(msgspec.Struct, frozen=True):
    """One event of the ring, about the size of Aether's (ids, a path, a timestamp)."""

    event_id: str
    mission_id: str
    task: int
    occurred_at: datetime
    worktree_path: str = ""
    git_dir: str = ""
    branch: str = ""
    base_sha: str = ""
    commit_sha: str = ""


_decode = msgspec.json.Decoder(Step).decode
_encode = msgspec.json.Encoder().encode


async def _publish(js: Any, subject: str, step: Step) -> None:
    await js.publish(subject, _encode(step), headers={"Nats-Msg-Id": step.event_id})


def _next(step: Step, **changes: Any) -> Step:
    return msgspec.structs.replace(
        step, event_id=uuid.uuid4().hex, occurred_at=datetime.now(UTC), **changes
    )


async def _consume(js: Any, durable: str, subjects: list[str]) -> Any:
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=durable,
            filter_subjects=subjects,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=1,
        ),
    )
    return await js.pull_subscribe_bind(durable=durable, stream=STREAM)


async def _role(
    name: str, url: str, work: str, git: bool, model_url: str | None, pipe: Connection
) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    repos = GitRepositories()
    client = None
    if model_url is not None:
        client = make_client(LLMSettings(api_key="bench", base_url=model_url, max_retries=0))
        await stream_reply(client, **agent_request())  # the SDK's import and first call
    repo = str(Path(work) / "repo")
    subjects = {
        "broker": ["floor.ready", "floor.completed"],
        "runner": ["floor.workspace"],
        "scheduler": ["floor.merged"],
        "observer": ["floor.>"],
    }[name]
    sub = await _consume(js, name, subjects)
    pipe.send("ready")
    base = ""
    while True:
        try:
            (msg,) = await sub.fetch(1, timeout=30)
        except nats.errors.TimeoutError:
            continue
        step = _decode(msg.data)
        if step.task < 0:
            await msg.ack()
            break
        if name == "broker" and msg.subject == "floor.ready":
            if git:
                ws = repos.prepare_workspace(
                    repo,
                    "floor/integration",
                    f"floor-tasks/t{step.task}",
                    str(Path(work) / "wt" / f"t{step.task}"),
                )
                base = base or ws.base_sha
                step = _next(
                    step,
                    worktree_path=ws.worktree_path,
                    git_dir=ws.git_dir,
                    branch=ws.branch,
                    base_sha=ws.base_sha,
                )
            await _publish(js, "floor.workspace", _next(step))
        elif name == "broker":
            if git:
                repos.merge(
                    repository_path=repo,
                    integration_branch="floor/integration",
                    since_sha=base,
                    mission_id="floor",
                    task_id=f"t{step.task}",
                    attempt=1,
                    commit_sha=step.commit_sha,
                    now=datetime.now(UTC),
                )
                repos.remove_worktree(repo, step.worktree_path)
            await _publish(js, "floor.merged", _next(step))
        elif name == "runner":
            if client is not None:
                await stream_reply(client, **agent_request())
            sha = ""
            if git:
                target = Path(step.worktree_path) / "bench" / f"f{step.task}.txt"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"t{step.task}\n")
                records = GitDir.linked(Path(step.worktree_path), Path(step.git_dir), step.branch)
                message = f"t{step.task}\n\nAether-Task: t{step.task}\nAether-Attempt: 1\n"
                sha = commit_all(records, message)[0] or ""
            if client is not None:
                await stream_reply(client, **agent_request())
            await _publish(js, "floor.completed", _next(step, commit_sha=sha))
        elif name == "scheduler":
            pipe.send(("merged", step.task, time.perf_counter()))
        await msg.ack()
    if client is not None:
        await client.close()
    await nc.close()


def _run_role(
    name: str, url: str, work: str, git: bool, model_url: str | None, pipe: Connection
) -> None:
    asyncio.run(_role(name, url, work, git, model_url, pipe))


async def ring(
    url: str, work: Path, tasks: int, git: bool, observer: bool, model_url: str | None = None
) -> list[float]:
    """Run ``tasks`` chained tasks around the ring; each task's seconds from its ready
    event's publication to its merged event's delivery to the scheduler. With
    ``model_url`` the runner makes two model calls a task there."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=["floor.>"],
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )
    if git:
        create_sample_repository(work / "repo")
        GitRepositories().prepare_repository(str(work / "repo"), "main", "floor/integration")
    names = ["scheduler", "broker", "runner", *(["observer"] if observer else [])]
    context = multiprocessing.get_context("spawn")
    pipes, processes = {}, []
    for name in names:
        mine, theirs = context.Pipe()
        model = model_url if name == "runner" else None
        process = context.Process(target=_run_role, args=(name, url, str(work), git, model, theirs))
        process.start()
        pipes[name], _ = mine, processes.append(process)
    for name in names:
        await asyncio.to_thread(pipes[name].recv)
    durations = []
    template = Step(event_id="", mission_id="m-floor", task=0, occurred_at=datetime.now(UTC))
    for task in range(1, tasks + 1):
        began = time.perf_counter()
        await _publish(js, "floor.ready", _next(template, task=task))
        _, done, at = await asyncio.to_thread(pipes["scheduler"].recv)
        assert done == task
        durations.append(at - began)
    stop = _next(template, task=-1)
    for subject in ("floor.ready", "floor.workspace", "floor.merged"):
        await _publish(js, subject, _next(stop))
    for process in processes:
        await asyncio.to_thread(process.join, 30)
        if process.is_alive():
            process.kill()
    await js.delete_stream(STREAM)
    await nc.close()
    return durations


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument(
        "--observer", action="store_true", help="a fourth process consuming every event"
    )
    parser.add_argument(
        "--model-calls",
        action="store_true",
        help="a third ring whose runner also makes the no-work agent's two model calls",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aether-bus-floor-"))
    server = EmbeddedNats(work / "nats").start()
    try:
        print(f"bench/bus_floor: N={args.tasks} chained tasks, work dir {work}")
        baseline = plain_git_loop(work, args.tasks)
        print(f"  plain git loop per task  {summary(baseline)}")
        floor = statistics.fmean(baseline)
        bus = await ring(server.url, work / "bus", args.tasks, False, args.observer)
        print(f"  bus only                 {summary(bus)}")
        both = await ring(server.url, work / "git", args.tasks, True, args.observer)
        print(f"  bus + git                {summary(both)}")
        print(
            f"  bus + git is {statistics.fmean(both) / floor:.2f}x the plain git loop"
            f" (the four hops add {(statistics.fmean(both) - floor) * 1000:.1f} ms a task)"
        )
        if args.model_calls:
            with served() as model_url:
                called = await ring(
                    server.url, work / "model", args.tasks, True, args.observer, model_url
                )
            print(f"  bus + git + two calls    {summary(called)}")
            print(
                f"  bus + git + two calls is {statistics.fmean(called) / floor:.2f}x the plain"
                f" git loop (the two calls add"
                f" {(statistics.fmean(called) - statistics.fmean(both)) * 1000:.1f} ms a task)"
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
