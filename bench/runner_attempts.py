"""The agent runner's own time per attempt, without the bus or the other services.

Works N chained attempts through ``Attempts.work`` exactly as the runner's handler does
(claim the worktree, read the journal, AgentStarted, the built-in loop with its two calls
to a local Messages API server through the anthropic SDK, journal, commit), each in a
real worktree the git broker's adapter prepared at the integration head, then merges it
and removes the worktree (untimed) before the next. The agent is ``bench/overhead.py``'s,
which does no model work; the events go to a list. Prints the p50 and mean wall time
per attempt and the process's CPU during it (the in-process model server's included),
the first few left out (imports, cold caches), how many times an attempt
handed work to a worker thread (``asyncio.to_thread``), and what one such hand-off of
no work costs in the same run: on a loaded machine the wall time swings more between
runs than a change of a few milliseconds, while the count does not.

``--direct-model`` hands the loop the agent's replies in-process instead (no SDK, no
HTTP, no server): the difference between the two runs is what the two model calls cost
an attempt.

    uv run python bench/runner_attempts.py [--tasks 40] [--direct-model]

Run it from two checkouts alternately to compare a change: on a loaded machine only
same-session ratios mean anything. A figure, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aether_agent_runner.adapters.model as agent_model
from aether.gitview import create_sample_repository
from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_events import AgentCompleted, Event, PlannedTask, WorkspaceReady
from aether_git_broker.adapters.git import GitRepositories
from aether_llm import DEFAULT_TIERS, LLMSettings, MessagesServer, make_client
from aether_llm.streamed import StreamedReply
from aether_sandbox import SandboxSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import NoWorkModel, plan_of

T = TypeVar("T")

WARM_UP = 5
HANDOFFS = 0
CPU: list[float] = []  # the process's CPU seconds during each attempt
_to_thread = asyncio.to_thread


async def _counted(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    global HANDOFFS
    HANDOFFS += 1
    return await _to_thread(func, *args, **kwargs)


def direct_replies(model: NoWorkModel) -> Callable[..., Awaitable[StreamedReply]]:
    """A stand-in for ``stream_reply`` that asks ``model`` in-process."""
    from anthropic.types import Usage

    async def reply(client: object, **request: Any) -> StreamedReply:
        asked = {"messages": list(request["messages"]), "tools": list(request["tools"])}
        answer = model(asked)
        usage = Usage(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens)
        return StreamedReply(content=answer.content, stop_reason=answer.stop_reason, usage=usage)

    return reply


async def handoff_seconds(times: int = 200) -> list[float]:
    """Wall time of handing nothing to a worker thread and getting it back."""
    out = []
    for _ in range(times):
        began = time.perf_counter()
        await _to_thread(int)
        out.append(time.perf_counter() - began)
    return out


async def attempts(n: int) -> list[float]:
    """Seconds of ``Attempts.work`` for each of ``n`` chained attempts."""
    with tempfile.TemporaryDirectory(prefix="aether-runner-attempts-") as work:
        return await attempts_in(Path(work), n)


async def attempts_in(work: Path, n: int) -> list[float]:
    repo = work / "repo"
    create_sample_repository(repo)
    git = GitRepositories()
    git.prepare_repository(str(repo), "main", "bench/integration")
    server = MessagesServer(NoWorkModel(plan_of(n, "chain"))).start()
    client = make_client(LLMSettings(api_key="bench", base_url=server.url, max_retries=0))
    runtime = BuiltinRuntime(client)
    runner = Attempts(
        runtimes=lambda name: runtime,
        # The agent runs no command, so no sandbox is opened.
        settings=AgentSettings(sandbox=SandboxSettings(backend="unconfined")),
        runner_id="bench",
        clock=lambda: datetime.now(UTC),
    )
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    durations = []
    base = None
    try:
        for i in range(1, n + 1):
            ws = git.prepare_workspace(
                str(repo), "bench/integration", f"bench-tasks/t{i}", str(work / "wt" / f"t{i}")
            )
            base = base or ws.base_sha
            ready = WorkspaceReady(
                event_id=f"ready-{i}",
                mission_id="bench",
                occurred_at=datetime.now(UTC),
                correlation_id="bench",
                task=PlannedTask(
                    id=f"t{i}",
                    title=f"Write file {i}",
                    description=f"write bench/f{i}.txt",
                    files=[f"bench/f{i}.txt"],
                ),
                attempt=1,
                model=DEFAULT_TIERS["small"],
                branch=ws.branch,
                worktree_path=ws.worktree_path,
                git_dir=ws.git_dir,
                base_sha=ws.base_sha,
            )
            began, cpu = time.perf_counter(), time.process_time()
            # As the runner's handler calls it for a WorkspaceReady's first delivery.
            result = await runner.work(ready, emit, first_delivery=True)
            durations.append(time.perf_counter() - began)
            CPU.append(time.process_time() - cpu)
            if not isinstance(result, AgentCompleted):
                raise SystemExit(f"attempt {i} did not complete: {result}")
            git.merge(
                repository_path=str(repo),
                integration_branch="bench/integration",
                since_sha=base,
                mission_id="bench",
                task_id=f"t{i}",
                attempt=1,
                commit_sha=result.commit_sha,
                now=datetime.now(UTC),
            )
            git.remove_worktree(str(repo), ws.worktree_path)
    finally:
        await client.close()
        server.stop()
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument(
        "--direct-model",
        action="store_true",
        help="hand the loop the agent's replies in-process (no SDK, HTTP or server)",
    )
    args = parser.parse_args()
    if args.direct_model:
        agent_model.stream_reply = direct_replies(NoWorkModel(plan_of(args.tasks, "chain")))
    asyncio.to_thread = _counted
    measured = asyncio.run(attempts(args.tasks))[WARM_UP:]
    asyncio.to_thread = _to_thread
    p50, mean = statistics.median(measured) * 1000, statistics.fmean(measured) * 1000
    print(f"runner_attempts: {len(measured)} attempts  p50 {p50:.1f} ms  mean {mean:.1f} ms")
    cpu = statistics.median(CPU[WARM_UP:]) * 1000
    print(f"  process CPU per attempt p50 {cpu:.1f} ms (the model server's thread included)")
    hop = statistics.median(asyncio.run(handoff_seconds())) * 1000
    print(
        f"  hand-offs to worker threads per attempt {HANDOFFS / args.tasks:.1f};"
        f" one empty hand-off p50 {hop:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
