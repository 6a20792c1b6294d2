"""How many merges need a re-run of their task, with file-level and with line-level merges.

A generated mission of 20 tasks that each edit their own function in three shared files
(a registry module, a service module and a changelog-like document), all forked from the
same base as parallel tasks are, merged one after the other by the broker's merge train
(``GitRepositories.merge``). A merge that conflicts sends its task back to run again.

"Before" is the rule the broker had before line-level merges: a file changed differently
on both sides is a conflict; it is counted on the same merges from the files each task
and the integration branch changed since the task's base. "After" is what the broker
does now.

    uv run python -m bench.merges.reruns [--tasks 20]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from aether_git_broker.adapters.git import GitRepositories
from bench.git.merge_and_worktree import NOW, git

SHARED = ("app/registry.py", "app/service.py", "docs/handlers.md")


def function(file: str, n: int, version: int) -> str:
    if file.endswith(".md"):
        return f"## handler {n}\n\nHandles case {n} (revision {version}).\n\n"
    body = f"    return {n} * {version}\n" if version else f"    return {n}\n"
    return f"def handler_{n}(x: int) -> int:\n    '''Case {n}.'''\n{body}\n\n"


def content(file: str, tasks: int, edited: int | None = None) -> str:
    head = "# Shared file\n\n\n" if not file.endswith(".md") else "# Handlers\n\n"
    return head + "".join(function(file, n, 2 if n == edited else 0) for n in range(tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        stream = [b"commit refs/heads/main\nmark :1\ncommitter B <b@e> 1700000000 +0000\n"]
        stream.append(b"data 4\nbase\n")
        for file in SHARED:
            data = content(file, args.tasks).encode()
            stream.append(f"M 100644 inline {file}\ndata {len(data)}\n".encode() + data + b"\n")
        for task in range(args.tasks):
            stream.append(f"commit refs/heads/task{task}\n".encode())
            stream.append(f"committer B <b@e> {1700000100 + task} +0000\n".encode())
            stream.append(f"data 6\ntask{task % 10}\nfrom :1\n".encode())
            for file in SHARED:
                data = content(file, args.tasks, edited=task).encode()
                stream.append(f"M 100644 inline {file}\ndata {len(data)}\n".encode() + data + b"\n")
        git(repo, "fast-import", "--quiet", stdin=b"".join(stream))
        base = git(repo, "rev-parse", "main")
        git(repo, "branch", "integration", "main")
        broker = GitRepositories()
        before = after = 0
        for task in range(args.tasks):
            tip = git(repo, "rev-parse", f"task{task}")
            head = git(repo, "rev-parse", "integration")
            ours = set(git(repo, "diff", "--name-only", base, head).split())
            theirs = set(git(repo, "diff", "--name-only", base, tip).split())
            before += bool(ours & theirs)
            outcome = broker.merge(
                str(repo),
                "integration",
                since_sha=base,
                mission_id="bench",
                task_id=f"t{task}",
                attempt=1,
                commit_sha=tip,
                now=NOW,
            )
            after += outcome.kind == "conflict"
        final = {file: git(repo, "show", f"integration:{file}") for file in SHARED}
        broker.close()
    every_edit = all(
        function(file, n, 2).strip() in final[file] for file in SHARED for n in range(args.tasks)
    )
    print(
        f"{args.tasks} parallel tasks, each editing its own function in {len(SHARED)} shared "
        f"files; merged one after the other"
    )
    print(f"  needing a re-run, file-level merge (before): {before}/{args.tasks}")
    print(f"  needing a re-run, line-level merge (after):  {after}/{args.tasks}")
    print(f"  integration branch holds every task's edit: {every_edit}")


if __name__ == "__main__":
    main()
