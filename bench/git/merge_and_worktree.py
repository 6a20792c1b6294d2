"""The git broker's merge and worktree creation next to the git command line.

Builds a repository of 10,000 files (a hundred top-level directories of ten
subdirectories of ten files, packed, as a real repository is) and a number of task
branches forked from its base, each changing three existing files and adding one, in
different directories. Then, in the same run and interleaved so both see the same load:

- the merge train: every task merged in turn into an integration branch, by the broker's
  adapter (``GitRepositories.merge``: finds an earlier merge, merge base, three-way tree
  merge, merge commit, compare-and-swap of the branch) and by ``git merge-tree
  --write-tree`` (the tree alone) and ``git merge-tree`` + ``commit-tree`` +
  ``update-ref`` (the same work the broker does). The first task fast-forwards; the
  rest are three-way merges.
- worktree creation: a task branch and a linked worktree at the integration head, by
  ``GitRepositories.prepare_workspace`` and by ``git worktree add -b``. "Fresh" writes
  every file; "from the pool" starts from the directory of a task that has been merged
  (the broker pools them after every merge), after an agent-like commit in it, and
  writes only what differs.

The broker keeps repositories open (a long-running service), so its first merge is
reported apart: it includes opening the repository and reading its pack index. Every
git command pays for starting a process; that is what the command line costs.

    uv run python bench/git/merge_and_worktree.py [--files 10000] [--tasks 20] [--worktrees 5]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from aether_git_broker.adapters.git import GitRepositories

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), "-c", "gc.auto=0", *args],
        env=ENV,
        input=stdin,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout.decode().strip()


def layout(files: int) -> list[str]:
    """Paths of ``files`` files: top/sub/file, ten files per subdirectory."""
    paths = []
    for n in range(files):
        top, rest = divmod(n, 100)
        sub, leaf = divmod(rest, 10)
        paths.append(f"pkg{top:04d}/sub{sub}/module{leaf}.py")
    return paths


def content(path: str, version: int = 0) -> bytes:
    body = "".join(f"value_{i} = {i * 7 + version}\n" for i in range(12))
    return f"# {path} v{version}\n{body}".encode()


def build_repository(root: Path, files: int, tasks: int) -> tuple[Path, list[str]]:
    """The repository on ``main`` and one branch per task; returns the task tips."""
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    paths = layout(files)
    stream = [b"commit refs/heads/main\nmark :1\n", b"committer Bench <b@e> 1700000000 +0000\n"]
    stream += [b"data 4\nbase\n"]
    for path in paths:
        data = content(path)
        stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    tops = max(1, files // 100)
    for task in range(tasks):
        stream.append(f"commit refs/heads/task{task}\n".encode())
        stream.append(f"committer Bench <b@e> {1700000100 + task} +0000\n".encode())
        message = f"task {task}".encode()
        stream.append(f"data {len(message)}\n".encode() + message + b"\n")
        stream.append(b"from :1\n")
        for k in range(3):
            path = paths[((task * 3 + k) * 101) % files]
            data = content(path, version=task + 1)
            stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
        new = f"pkg{task % tops:04d}/new_task_{task}.py"
        data = content(new, version=task)
        stream.append(f"M 100644 inline {new}\ndata {len(data)}\n".encode() + data + b"\n")
    git(repo, "fast-import", "--quiet", stdin=b"".join(stream))
    git(repo, "repack", "-adq")
    git(repo, "checkout", "-q", "main")
    return repo, [git(repo, "rev-parse", f"task{t}") for t in range(tasks)]


def timed(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    return (time.perf_counter() - began) * 1000


def line(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{label:<44} mean {statistics.mean(samples):7.1f} ms"
        f"  p50 {statistics.median(samples):7.1f} ms  p95 {p95:7.1f} ms  (n={len(samples)})"
    )


def bench_merges(repo: Path, tips: list[str]) -> None:
    # Two copies of the repository: the merges produce the same trees, and whoever wrote
    # an object first would spare the other the write.
    other = repo.with_name("repo-for-git")
    shutil.copytree(repo, other, symlinks=True)
    broker = GitRepositories()
    base = git(repo, "rev-parse", "main")
    git(repo, "branch", "integration/broker", "main")
    git(other, "branch", "integration/git", "main")
    broker_ms: list[float] = []
    tree_ms: list[float] = []
    full_ms: list[float] = []
    kinds: list[str] = []
    for n, tip in enumerate(tips):

        def by_broker(n: int = n, tip: str = tip) -> None:
            outcome = broker.merge(
                str(repo),
                "integration/broker",
                since_sha=base,
                mission_id="bench",
                task_id=f"t{n}",
                attempt=1,
                commit_sha=tip,
                now=NOW,
            )
            kinds.append(outcome.kind)

        def tree_only(tip: str = tip) -> None:
            git(other, "merge-tree", "--write-tree", "integration/git", tip)

        def by_git(n: int = n, tip: str = tip) -> None:
            head = git(other, "rev-parse", "integration/git")
            if git(other, "merge-base", head, tip) == head:
                git(other, "update-ref", "refs/heads/integration/git", tip, head)
                return
            tree = git(other, "merge-tree", "--write-tree", head, tip).splitlines()[0]
            merged = git(
                other, "commit-tree", tree, "-p", head, "-p", tip, "-m", f"Merge task t{n}"
            )
            git(other, "update-ref", "refs/heads/integration/git", merged, head)

        broker_ms.append(timed(by_broker))
        tree_ms.append(timed(tree_only))
        full_ms.append(timed(by_git))
    same = git(repo, "rev-parse", "integration/broker^{tree}") == git(
        other, "rev-parse", "integration/git^{tree}"
    )
    three_way = [ms for ms, kind in zip(broker_ms, kinds, strict=True) if kind == "merged"][1:]
    git_tree_3w = [ms for ms, kind in zip(tree_ms, kinds, strict=True) if kind == "merged"][1:]
    git_full_3w = [ms for ms, kind in zip(full_ms, kinds, strict=True) if kind == "merged"][1:]
    print(
        f"merge train: {len(tips)} tasks ({kinds.count('fast_forward')} fast-forward, "
        f"{kinds.count('merged')} three-way); same final tree as git: {same}"
    )
    print(f"  broker first merge (opens the repository)   {broker_ms[0]:7.1f} ms")
    print("  " + line("broker three-way merge (after the first)", three_way))
    print("  " + line("git merge-tree --write-tree", git_tree_3w))
    print("  " + line("git merge-tree + commit-tree + update-ref", git_full_3w))
    ratio_tree = statistics.mean(three_way) / statistics.mean(git_tree_3w)
    ratio_full = statistics.mean(three_way) / statistics.mean(git_full_3w)
    print(f"  broker / git merge-tree          {ratio_tree:5.2f}x  (below 1 is faster)")
    print(f"  broker / git merge-tree+commit   {ratio_full:5.2f}x")
    broker.close()


def bench_worktrees(repo: Path, root: Path, count: int) -> None:
    fresh_broker = GitRepositories(pool_capacity=0)
    pooled_broker = GitRepositories(worktrees_dir=str(root / "pooled"), pool_capacity=4)
    for broker in (fresh_broker, pooled_broker):
        broker.prepare_repository(str(repo), "main", "wt/broker")
    # The pool starts with one finished worktree, as it does after a mission's first merge.
    first = root / "pooled" / "m" / "warm-up"
    pooled_broker.prepare_workspace(str(repo), "wt/broker", "wt-tasks/warm-up", str(first))
    pooled_broker.recycle_worktree(str(repo), str(first))
    fresh: list[float] = []
    recycled: list[float] = []
    pooling: list[float] = []
    by_git: list[float] = []
    paths = layout_count(repo)
    for n in range(count):
        path = root / "wt" / f"fresh-{n}"

        def fresh_one(n: int = n, path: Path = path) -> None:
            fresh_broker.prepare_workspace(str(repo), "wt/broker", f"wt-tasks/f{n}", str(path))

        def git_one(n: int = n) -> None:
            target = root / "gitwt" / f"t{n}"
            git(repo, "worktree", "add", "-q", "-b", f"wt-git/t{n}", str(target), "main")

        reused = root / "pooled" / "m" / f"t{n}"

        def recycled_one(n: int = n, reused: Path = reused) -> None:
            pooled_broker.prepare_workspace(str(repo), "wt/broker", f"wt-tasks/p{n}", str(reused))

        fresh.append(timed(fresh_one))
        by_git.append(timed(git_one))
        recycled.append(timed(recycled_one))
        # What an agent does in between: change three files, add one, commit.
        for k in range(3):
            (reused / paths[(n * 37 + k * 1009) % len(paths)]).write_text(f"# changed {n}\n")
        (reused / f"added_{n}.py").write_text("NEW = True\n")
        git(reused, "add", "-A")
        git(reused, "commit", "-q", "-m", f"agent work {n}")
        pooling.append(
            timed(lambda reused=reused: pooled_broker.recycle_worktree(str(repo), str(reused)))
        )
    print(f"worktree creation ({len(paths)} files)")
    print("  " + line("broker, fresh checkout", fresh))
    print("  " + line("broker, from the pool (a merged task's)", recycled))
    print("  " + line("git worktree add", by_git))
    print("  " + line("broker, pooling a finished worktree", pooling))
    print(f"  broker fresh / git       {statistics.mean(fresh) / statistics.mean(by_git):5.2f}x")
    ratio = statistics.mean(recycled) / statistics.mean(by_git)
    print(f"  broker pooled / git      {ratio:5.2f}x")
    fresh_broker.close()
    pooled_broker.close()


def layout_count(repo: Path) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--worktrees", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="aether-bench-git-"))
    try:
        began = time.perf_counter()
        repo, tips = build_repository(root, args.files, args.tasks)
        print(
            f"{git(repo, 'version')}, python {sys.version.split()[0]}, {os.cpu_count()} cpus; "
            f"repository of {args.files} files built in {time.perf_counter() - began:.1f} s"
        )
        bench_merges(repo, tips)
        bench_worktrees(repo, root, args.worktrees)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
