"""What "git that runs nothing the agent wrote" and race-proof file tools cost.

Builds a repository of 10,000 files (packed) with a linked worktree on a task branch,
then, interleaved so both see the same load:

- an agent's commit of three changed files: the runner's own status and commit
  (``commit_all``: files read by descriptors, objects written directly, no hooks,
  filters or configuration) next to what it replaced, dulwich's
  ``porcelain.status`` + ``stage`` + ``porcelain.commit``;
- ``read_file`` of a file four directories deep: the descriptor walk with ``O_NOFOLLOW``
  per component next to a plain ``Path.read_bytes`` of the resolved path.

    uv run python bench/git/agent_commit.py [--files 10000] [--rounds 5] [--reads 2000]

A figure, not a test: it prints numbers and ratios and never fails on them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from dulwich import porcelain
from dulwich.repo import Repo

from aether_agent_runner.adapters.git import GitDir, commit_all
from aether_agent_runner.adapters.workspace import Workspace

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
AUTHOR = b"Bench <bench@example.com>"


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(cwd), *args], env=ENV, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def build(root: Path, files: int) -> tuple[Path, Path]:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for n in range(files):
        path = repo / f"d{n // 100}" / f"s{n // 10 % 10}" / f"f{n % 10}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# file {n}\n" + "value = 1\n" * 40)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    git(repo, "repack", "-adq")
    return repo, root


def worktree(repo: Path, root: Path, name: str) -> tuple[Path, GitDir]:
    git(repo, "branch", name, "main")
    path = root / name
    git(repo, "worktree", "add", "-q", str(path), name)
    path = path.resolve()
    return path, GitDir.discover(path, name)


def change(path: Path, round_: int) -> None:
    for n in range(3):
        (path / f"d{n}" / "s0" / "f0.py").write_text(f"changed in round {round_}\n")


def runner_commit(path: Path, records: GitDir, round_: int) -> float:
    change(path, round_)
    began = time.perf_counter()
    sha, _ = commit_all(records, f"round {round_}\n")
    assert sha is not None
    return time.perf_counter() - began


def dulwich_commit(path: Path, round_: int) -> float:
    change(path, round_)
    began = time.perf_counter()
    with Repo(str(path)) as repo:
        status = porcelain.status(repo, untracked_files="all")
        paths = [*status.unstaged, *status.untracked]
        paths += [p for group in status.staged.values() for p in group]
        assert paths
        repo.get_worktree().stage(
            sorted({p if isinstance(p, bytes) else p.encode() for p in paths})
        )
        porcelain.commit(
            repo, message=f"round {round_}\n".encode(), author=AUTHOR, committer=AUTHOR
        )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reads", type=int, default=2000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repo, root = build(Path(scratch), options.files)
        ours_path, ours = worktree(repo, root, "ours")
        theirs_path, _ = worktree(repo, root, "theirs")
        runner: list[float] = []
        dulwich: list[float] = []
        for round_ in range(options.rounds):
            runner.append(runner_commit(ours_path, ours, round_))
            dulwich.append(dulwich_commit(theirs_path, round_))
        workspace = Workspace(ours_path)
        deep = "d5/s5/f5.py"
        walked: list[float] = []
        plain: list[float] = []
        for _ in range(options.reads):
            began = time.perf_counter()
            workspace.read_file(deep)
            walked.append(time.perf_counter() - began)
            began = time.perf_counter()
            (ours_path / deep).read_bytes()
            plain.append(time.perf_counter() - began)
    ours_s, theirs_s = statistics.median(runner), statistics.median(dulwich)
    walk_us, plain_us = statistics.median(walked) * 1e6, statistics.median(plain) * 1e6
    print(
        f"commit of 3 changed files in a {options.files:,}-file worktree (median of "
        f"{options.rounds}):"
    )
    print(f"  runner (no hooks, filters or config): {ours_s:.3f} s")
    print(f"  dulwich porcelain status + commit:    {theirs_s:.3f} s")
    print(f"  ratio runner / dulwich:               {ours_s / theirs_s:.2f}")
    print(f"read_file 4 levels deep (median of {options.reads}):")
    print(f"  descriptor walk with O_NOFOLLOW: {walk_us:.1f} us")
    print(f"  Path.read_bytes:                 {plain_us:.1f} us")
    print(f"  ratio:                           {walk_us / plain_us:.2f}")


if __name__ == "__main__":
    main()
