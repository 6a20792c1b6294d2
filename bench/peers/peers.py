"""The same git work per task under LangGraph and Prefect 3 (run in the peers' environment).

    <peers-venv>/bin/python bench/peers/peers.py --tasks 50 --work DIR --repos R1 R2 ...
        [--model-url URL]

Prints one JSON object: for each orchestrator and shape, the wall time of the run in
seconds, and (``…|floor``) that of the plain loop run right before it, so that a machine
whose load changes during the run still gives each its own floor. Each run gets its own
sample repository (``--repos``, created by the caller), and the same ``GitWork`` the
plain loop and Aether use (with ``--model-url``, each task also makes the no-work agent's
two model calls there: ``work.ModelCalls``, in the plain loops too).

* LangGraph: a ``StateGraph`` with a SQLite checkpointer, durability ``sync`` (every
  checkpoint and every task's writes stored before the graph goes on). A chain is one node
  running a task per super-step; four at a time is a dispatcher sending every task with
  ``Send`` under ``max_concurrency=4``.
* Prefect 3: a flow of tasks whose results are persisted to local storage, on Prefect's
  own (ephemeral) API server with its SQLite database; a chain calls the tasks one after
  another, four at a time submits them to a thread pool of four.

Start-up (importing, the Prefect server, the first flow run) is left out of the figures:
a warm-up run happens first, in a repository of its own.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from work import GitWork, ModelCalls


class Chain(TypedDict):
    next: int
    heads: Annotated[list[str], operator.add]


class One(TypedDict):
    number: int


def langgraph_run(work: GitWork, n: int, concurrent: bool, db: Path) -> float:
    def step(state: Chain) -> dict[str, Any]:
        return {"next": state["next"] + 1, "heads": [work.task(state["next"])]}

    def more(state: Chain) -> str:
        return "step" if state["next"] <= n else END

    def dispatch(state: Chain) -> list[Send]:
        return [Send("one", {"number": i}) for i in range(1, n + 1)]

    def one(state: One) -> dict[str, Any]:
        return {"heads": [work.task(state["number"])]}

    graph = StateGraph(Chain)
    if concurrent:
        graph.add_node("one", one)
        graph.add_conditional_edges(START, dispatch, ["one"])
        graph.add_edge("one", END)
    else:
        graph.add_node("step", step)
        graph.add_edge(START, "step")
        graph.add_conditional_edges("step", more, ["step", END])
    conn = sqlite3.connect(str(db), check_same_thread=False)
    try:
        app = graph.compile(checkpointer=SqliteSaver(conn))
        config: dict[str, Any] = {
            "configurable": {"thread_id": f"bench-{db.stem}"},
            "recursion_limit": 3 * n + 10,
            "max_concurrency": 4,
        }
        began = time.perf_counter()
        out = app.invoke({"next": 1, "heads": []}, config, durability="sync")
        wall = time.perf_counter() - began
    finally:
        conn.close()
    assert len(out["heads"]) == n, out
    return wall


def prefect_run(work: GitWork, n: int, concurrent: bool) -> float:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(persist_result=True, cache_policy=None)
    def one(number: int) -> str:
        return work.task(number)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=True)
    def mission() -> list[str]:
        if concurrent:
            futures = [one.submit(i) for i in range(1, n + 1)]
            return [f.result() for f in futures]
        return [one(i) for i in range(1, n + 1)]

    began = time.perf_counter()
    heads = mission()
    wall = time.perf_counter() - began
    assert len(heads) == n
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repos", type=Path, nargs="+", required=True)
    parser.add_argument("--model-url", help="make the no-work agent's model calls there")
    args = parser.parse_args()
    agent = ModelCalls(args.model_url) if args.model_url else None
    repos = iter(args.repos)
    n, work_dir = args.tasks, args.work
    # Prefect's own state (its server's database, persisted results) stays in the work
    # directory; its ephemeral server may take a while to start on a busy machine.
    os.environ.setdefault("PREFECT_HOME", str(work_dir / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    def fresh(name: str) -> GitWork:
        return GitWork.prepare(next(repos), work_dir / "wt" / name, agent)

    def floor(label: str) -> float:
        """The plain loop, run right before ``label`` so both see the same machine load."""
        plain = fresh(f"plain-{label}")
        began = time.perf_counter()
        for i in range(1, n + 1):
            plain.task(i)
        return time.perf_counter() - began

    results: dict[str, float] = {}
    # Warm-ups, in repositories of their own: imports, the Prefect server, first runs.
    langgraph_run(fresh("lg-warm"), 2, False, work_dir / "lg-warm.sqlite")
    prefect_run(fresh("pf-warm"), 2, False)
    for concurrent in (False, True):
        shape = "4 at a time" if concurrent else "chain"
        name = f"lg-{'4' if concurrent else 'chain'}"
        key = f"LangGraph, SQLite checkpointer|{shape}"
        results[f"{key}|floor"] = floor(name)
        results[key] = langgraph_run(fresh(name), n, concurrent, work_dir / f"{name}.sqlite")
        name = f"pf-{'4' if concurrent else 'chain'}"
        key = f"Prefect 3, results persisted|{shape}"
        results[f"{key}|floor"] = floor(name)
        results[key] = prefect_run(fresh(name), n, concurrent)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
