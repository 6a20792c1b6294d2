"""What reading a task's base tree costs the agent runner, whole or from the tree before.

Each task of a mission starts from the integration head, which differs from the last
task's base by the files merged since. The runner compares the worktree with that tree
three times an attempt (reset, check for changes, commit) and caches its files by tree
id; a tree it has not seen is read either whole (every tree object of the repository)
or as the difference from the last tree it read from the same repository
(``_files_of``). This builds a repository of ``--files`` files in nested directories
(``--flat``: all in one, as ``bench/overhead.py``'s tasks write theirs),
then ``--tasks`` commits that each change or add one file, as merges do, and times each
new tree read whole (nothing cached) and read in order from the one before, as the
runner reads a mission's base trees (three passes of each, alternating).

    uv run python bench/git/base_trees.py [--files 10000] [--tasks 50]

A figure, not a test: it prints numbers and a ratio and never fails on them.
"""

from __future__ import annotations

import argparse
import stat
import statistics
import tempfile
import time
from pathlib import Path

from dulwich.index import commit_tree
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, ObjectID

from aether_agent_runner.adapters import git as runner_git

MODE = stat.S_IFREG | 0o644


def path_of(i: int, flat: bool = False) -> bytes:
    if flat:  # as bench/overhead.py's tasks write them: one directory of them all
        return f"bench/f{i}.txt".encode()
    return f"src/pkg{i % 20}/mod{i % 7}/file{i}.py".encode()


def tree_of(store: DiskObjectStore, files: dict[bytes, bytes]) -> ObjectID:
    entries = []
    for path, content in files.items():
        blob = Blob.from_string(content)
        store.add_object(blob)
        entries.append((path, blob.id, MODE))
    return commit_tree(store, entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument(
        "--flat", action="store_true", help="every file in one directory (else nested)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aether-bench-trees-") as work:
        store = DiskObjectStore.init(Path(work))
        files = {path_of(i, args.flat): f"v0 {i}\n".encode() for i in range(args.files)}
        trees = [tree_of(store, files)]
        for task in range(args.tasks):
            # Every other task adds a file, the others change one.
            index = args.files + task if task % 2 else (task * 7919) % args.files
            files[path_of(index, args.flat)] = f"task {task}\n".encode()
            trees.append(tree_of(store, files))
        whole: list[float] = []
        moved: list[float] = []
        expected: dict[ObjectID, dict[bytes, tuple[int, ObjectID]]] = {}
        # Passes alternate, three of each: every tree read whole (nothing cached), then
        # the trees read in order as the runner reads a mission's base trees, each from
        # the one before (what it read of that one still cached).
        for _ in range(3):
            for tree in trees[1:]:
                runner_git.forget_trees()
                began = time.perf_counter()
                expected[tree] = dict(runner_git._files_of(store, tree))
                whole.append(time.perf_counter() - began)
            runner_git.forget_trees()
            runner_git._files_of(store, trees[0])
            for tree in trees[1:]:
                began = time.perf_counter()
                got = dict(runner_git._files_of(store, tree))
                moved.append(time.perf_counter() - began)
                assert got == expected[tree]
        store.close()
    w, m = statistics.median(whole) * 1000, statistics.median(moved) * 1000
    layout = "in one directory" if args.flat else "nested"
    print(f"base tree of {args.files} files {layout}, {args.tasks} tasks (median ms a new tree)")
    print(f"  read whole                         {w:8.2f}")
    print(f"  read from the tree before          {m:8.2f}")
    print(f"  whole ÷ from the tree before       {w / m:8.1f}x")


if __name__ == "__main__":
    main()
