"""A chained task's git work on a project of many files, as the services do it.

Builds a repository of ``--files`` files over nested directories and runs ``--tasks``
chained tasks through the git broker's and the agent runner's adapters: a workspace
from the pool at the integration head, the opening message's repository map, one file
written by the file tools, the finish check, the commit, the merge, the worktree back
to the pool. Three times, interleaved task by task, each on a repository and pool of its
own:

- ``ways``: as a first delivery where only the file tools wrote (the map read from the
  tree; the finish check and the commit look only on the ways to what they wrote; the
  commit's index names those paths and the tree they were written on, and the broker's
  next checkout of that worktree looks only at what changed since its own checkout);
- ``command``: as after a confined command, every directory walked (the map too) by the
  runner, whose index then says what the worktree holds besides the commit's tree, so
  that the broker's next checkout does not walk it again;
- ``whole``: every directory walked by the runner and again by the broker, as after an
  unconfined command or a resume: the baseline, measured in the same run.

    uv run python bench/git/task_cycle.py [--files 2000] [--tasks 30]

Prints each step's median per mode and the ratio of the two. A figure, not a test: it
never fails on them.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aether_agent_runner.adapters.git import (
    CommitLimits,
    GitDir,
    commit_all,
    snapshot,
    tree_listing,
)
from aether_agent_runner.adapters.search import SKIPPED_DIRECTORIES
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.runtimes.prompt import MAX_MAP_ENTRIES, repository_map
from aether_git_broker.adapters.git import GitRepositories

STEPS = ("workspace", "map", "write and check", "commit", "merge and pool")
INTEGRATION = "aether/m-bench"


class Project:
    """A repository of ``files`` files, its integration branch and its worktree pool."""

    def __init__(self, root: Path, files: int) -> None:
        self.repo = root / "repo"
        self.repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.repo)], check=True)
        for i in range(files):
            path = self.repo / f"pkg{i % 50}" / f"sub{i % 7}" / f"f{i}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"x = {i}\n")
        git = ["git", "-C", str(self.repo), "-c", "user.name=b", "-c", "user.email=b@b"]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "a project"], check=True)
        self.worktrees = root / "worktrees"
        self.git = GitRepositories(worktrees_dir=str(self.worktrees), pool_capacity=4)
        self.base = self.git.prepare_repository(str(self.repo), "main", INTEGRATION).base_sha

    def task(self, number: int, mode: str) -> list[float]:
        """One task's steps, each timed (seconds)."""
        times = [time.perf_counter()]
        ws = self.git.prepare_workspace(
            str(self.repo),
            INTEGRATION,
            f"aether-tasks/m-bench/t{number}/a1",
            str(self.worktrees / "m-bench" / f"t{number}-a1"),
        )
        times.append(time.perf_counter())
        records = GitDir.linked(Path(ws.worktree_path), Path(ws.git_dir), ws.branch)
        ways = mode == "ways"
        if ways:
            tree_listing(records, ws.base_sha, MAX_MAP_ENTRIES, SKIPPED_DIRECTORIES)
        else:
            repository_map(Path(ws.worktree_path))
        times.append(time.perf_counter())
        tools = Workspace(Path(ws.worktree_path))
        tools.write_file(f"bench/t{number}.txt", f"t{number}\n")
        looked = snapshot(records, written=frozenset(tools.touched) if ways else None)
        times.append(time.perf_counter())
        settled = mode == "command"
        sha, _ = commit_all(records, f"t{number}\n", CommitLimits(), looked, settled)
        assert sha is not None
        times.append(time.perf_counter())
        merged = self.git.merge(
            repository_path=str(self.repo),
            integration_branch=INTEGRATION,
            since_sha=self.base,
            mission_id="m-bench",
            task_id=f"t{number}",
            attempt=1,
            commit_sha=sha,
            now=datetime.now(UTC),
        )
        assert merged.kind in ("merged", "fast_forward"), merged
        self.git.recycle_worktree(str(self.repo), ws.worktree_path)
        times.append(time.perf_counter())
        return [after - before for before, after in itertools.pairwise(times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=30)
    args = parser.parse_args()
    modes = ("ways", "command", "whole")
    with tempfile.TemporaryDirectory(prefix="aether-task-cycle-") as work:
        projects = {mode: Project(Path(work) / mode, args.files) for mode in modes}
        timed: dict[str, list[list[float]]] = {mode: [] for mode in projects}
        for number in range(1, args.tasks + 1):
            for mode, project in projects.items():
                timed[mode].append(project.task(number, mode))
        print(f"bench/git/task_cycle: {args.files} files, {args.tasks} chained tasks")
        heads = "".join(f"{mode:>9s}" for mode in modes)
        print(f"  {'step (median ms)':22s}{heads} {'ways ÷ whole':>13s} {'command ÷ whole':>16s}")
        totals = dict.fromkeys(projects, 0.0)
        for index, step in enumerate(STEPS):
            # The first two tasks fill the pool; the rest reuse it.
            medians = {
                mode: statistics.median(t[index] for t in runs[2:]) * 1000
                for mode, runs in timed.items()
            }
            for mode, value in medians.items():
                totals[mode] += value
            print(_row(step, medians))
        print(_row("all of it", totals))


def _row(label: str, figures: dict[str, float]) -> str:
    """A step's medians per mode, and the first two over the last."""
    values = "".join(f"{value:9.2f}" for value in figures.values())
    ways, command, whole = figures.values()
    return f"  {label:22s}{values} {ways / whole:12.2f}× {command / whole:15.2f}×"


if __name__ == "__main__":
    main()
