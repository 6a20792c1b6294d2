"""Planning many missions at once: 20 missions submitted together next to one alone.

Starts nats-server, the git broker's read API (which the planner reads the files it plans
from through) and one planner (in this process) against a model server that answers
every call after a fixed delay (500 ms by default), submits one mission, then 20 at once
(each a MissionRequested and its RepositoryPrepared, as the git broker would publish),
after a warm-up mission, and prints how long until every plan was produced. It does it
twice: with the planner planning missions concurrently (``AETHER_PLANNER_CONCURRENCY``,
32 by default) and with one mission at a time (``AETHER_PLANNER_CONCURRENCY=0``, the
planner before).

    uv run python bench/planning.py [--missions 20] [--delay 0.5]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.js.api import DeliverPolicy

from aether.gitview import create_sample_repository
from aether.infra import EmbeddedNats, free_port
from aether_events import (
    EventPublisher,
    MissionRequested,
    PlanProduced,
    RepoFile,
    RepositoryPrepared,
    decode,
    derived_id,
    new_mission_id,
    type_subject,
)
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.testing import read_api_served
from aether_llm import LLMSettings, MessagesServer, Reply, tool_use_block
from aether_planner.bootstrap import bootstrap
from aether_planner.config import PlannerSettings
from aether_runtime import RuntimeSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import WorkDirectory

READ_TOKEN = "bench-planning-read-token-0123456789"
PLAN = {
    "rationale": "one step",
    "tasks": [
        {
            "id": "t1",
            "title": "Write a file",
            "description": "write it",
            "files": ["bench/f.txt"],
            "depends_on": [],
            "tier": "small",
        }
    ],
}


class SlowModel:
    """Answers every call with the same plan, after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, request: dict[str, Any]) -> Reply:
        time.sleep(self.delay)
        return Reply([tool_use_block("submit_plan", PLAN)], "tool_use", 100, 50)


def mission_events(repo: Path, sha: str) -> list[Any]:
    mission_id = new_mission_id()

    def meta(step: str) -> dict[str, Any]:
        return {
            "event_id": derived_id(mission_id, "bench", step),
            "mission_id": mission_id,
            "occurred_at": datetime.now(UTC),
            "correlation_id": derived_id(mission_id, "bench", "requested"),
        }

    return [
        MissionRequested(**meta("requested"), repository=str(repo), requirement="benchmark"),
        RepositoryPrepared(
            **meta("prepared"),
            repository_path=str(repo),
            base_branch="main",
            base_sha=sha,
            integration_branch=f"aether/{mission_id}",
            files=[RepoFile(path="README.md", size=10)],
            file_count=1,
        ),
    ]


async def plan_together(nats_url: str, repo: Path, sha: str, count: int) -> float:
    """Seconds from publishing ``count`` missions to the last of their plans."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        missions = [mission_events(repo, sha) for _ in range(count)]
        waiting = {events[0].mission_id for events in missions}
        done = asyncio.Event()

        async def on_plan(msg: Any) -> None:
            waiting.discard(decode(msg.data).mission_id)
            if not waiting:
                done.set()

        sub = await js.subscribe(
            type_subject(PlanProduced),
            cb=on_plan,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        publisher = EventPublisher(js)
        began = time.perf_counter()
        for events in missions:
            await publisher.publish_all(events)
        await asyncio.wait_for(done.wait(), timeout=120 + 10 * count)
        elapsed = time.perf_counter() - began
        await sub.unsubscribe()
        return elapsed
    finally:
        await nc.close()


async def run(
    nats_url: str, model_url: str, broker_url: str, repo: Path, sha: str, n: int, lanes: str
) -> None:
    llm = LLMSettings(api_key="bench", base_url=model_url, max_retries=0)
    runtime = RuntimeSettings(nats_url=nats_url, port=free_port())
    settings = PlannerSettings(
        runtime=runtime,
        llm=llm,
        concurrency=int(lanes),
        broker_url=broker_url,
        broker_token=READ_TOKEN,
    )
    service = bootstrap(settings).service
    await service.start()
    try:
        await plan_together(nats_url, repo, sha, 1)  # warm-up: the SDK, the connections
        one = await plan_together(nats_url, repo, sha, 1)
        many = await plan_together(nats_url, repo, sha, n)
    finally:
        await service.stop()
    label = "one mission at a time" if lanes == "0" else f"concurrency {lanes}"
    print(
        f"  {label:<22} 1 mission {one:6.2f} s   {n} missions {many:6.2f} s"
        f"   ratio {many / one:5.2f}x"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--missions", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--concurrency", default=os.environ.get("AETHER_PLANNER_CONCURRENCY", "32"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    with WorkDirectory("aether-planning-", keep=args.keep) as work:
        repo = work / "repo"
        sha = create_sample_repository(repo)
        server = EmbeddedNats(work / "nats").start()
        model = MessagesServer(SlowModel(args.delay)).start()
        print(f"bench/planning: model answers in {args.delay * 1000:.0f} ms; work dir {work}")
        try:
            clones = Remotes(str(work / "clones"))
            with read_api_served(READ_TOKEN, clones, free_port()) as broker_url:
                for lanes in (args.concurrency, "0"):
                    await run(server.url, model.url, broker_url, repo, sha, args.missions, lanes)
        finally:
            model.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
