"""The broker's line-level merge next to ``git merge-tree --write-tree``, in one run.

A repository of 10,000 files (eighty lines each, each its own text, packed) and, per
round, two branches from its base that edit the *same* files in different places: one
near the top of each file, the other near the bottom. Every round merges the second into
the first both ways, interleaved so both see the same load: by the broker's adapter
(``GitRepositories.merge``: merge base, three-way tree merge with line merges of the
shared files, merge commit, compare-and-swap of the branch) and by ``git merge-tree
--write-tree`` (the tree alone), and by ``git merge-tree`` + ``commit-tree`` +
``update-ref`` (the same work the broker does). Each side works on its own copy of the
repository, so neither finds the other's objects already written. The broker's first
merge opens the repository and is left out.

    uv run python -m bench.merges.speed [--files 10000] [--shared 20] [--rounds 8]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
from pathlib import Path

from aether_git_broker.adapters.git import GitRepositories
from bench.git.merge_and_worktree import NOW, git, layout, line, timed

LINES = 80


def content(path: str, top: int = 0, bottom: int = 0) -> bytes:
    # Every file its own text, as in a real repository: files that differ only in a
    # word make git pack them as one long delta chain, which no real tree looks like.
    body = [
        f"def f_{i}(x):  # {hashlib.sha1(f'{path}:{i}'.encode()).hexdigest()[:20]}\n"
        for i in range(LINES)
    ]
    if top:
        body[3] = f"def f_3(x):  # top edit {top}\n"
    if bottom:
        body[LINES - 4] = f"def f_{LINES - 4}(x):  # bottom edit {bottom}\n"
    return "".join(body).encode()


def build(root: Path, files: int, shared: int, rounds: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    paths = layout(files)
    stream = [b"commit refs/heads/main\nmark :1\ncommitter B <b@e> 1700000000 +0000\n"]
    stream.append(b"data 4\nbase\n")
    for path in paths:
        data = content(path)
        stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    for r in range(rounds):
        edited = [paths[(r * shared + k) * 97 % files] for k in range(shared)]
        for side in ("ours", "theirs"):
            stream.append(f"commit refs/heads/{side}{r}\n".encode())
            stream.append(f"committer B <b@e> {1700000100 + r} +0000\n".encode())
            stream.append(f"data {len(side)}\n{side}\nfrom :1\n".encode())
            for path in edited:
                version = r + 1
                data = (
                    content(path, top=version if side == "ours" else 0)
                    if side == "ours"
                    else (content(path, bottom=version))
                )
                stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    git(repo, "fast-import", "--quiet", stdin=b"".join(stream))
    git(repo, "repack", "-adq")
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--shared", type=int, default=20, help="files both sides edit")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repo = build(Path(scratch), args.files, args.shared, args.rounds + 1)
        other = repo.with_name("repo-for-git")
        shutil.copytree(repo, other, symlinks=True)
        broker = GitRepositories()
        base = git(repo, "rev-parse", "main")
        broker_ms: list[float] = []
        tree_ms: list[float] = []
        full_ms: list[float] = []
        same = True
        for r in range(args.rounds + 1):
            git(repo, "branch", f"int{r}", f"ours{r}")
            tip = git(repo, "rev-parse", f"theirs{r}")
            ours = git(other, "rev-parse", f"ours{r}")
            kinds: list[str] = []

            def by_broker(r: int = r, tip: str = tip, kinds: list[str] = kinds) -> None:
                outcome = broker.merge(
                    str(repo),
                    f"int{r}",
                    since_sha=base,
                    mission_id="bench",
                    task_id=f"t{r}",
                    attempt=1,
                    commit_sha=tip,
                    now=NOW,
                )
                kinds.append(outcome.kind)

            def tree_only(ours: str = ours, tip: str = tip) -> None:
                git(other, "merge-tree", "--write-tree", ours, tip)

            def by_git(r: int = r, ours: str = ours, tip: str = tip) -> None:
                tree = git(other, "merge-tree", "--write-tree", ours, tip).splitlines()[0]
                merged = git(other, "commit-tree", tree, "-p", ours, "-p", tip, "-m", "merge")
                git(other, "update-ref", f"refs/heads/int{r}", merged)

            spent = timed(by_broker)
            if kinds != ["merged"]:
                raise SystemExit(f"round {r}: the broker's merge was {kinds}, not a merge")
            if r == 0:
                timed(tree_only)
                timed(by_git)
                continue  # the broker's first merge opens the repository
            broker_ms.append(spent)
            tree_ms.append(timed(tree_only))
            full_ms.append(timed(by_git))
            same = same and git(repo, "rev-parse", f"int{r}^{{tree}}") == git(
                other, "rev-parse", f"int{r}^{{tree}}"
            )
        broker.close()
    print(
        f"{args.files} files; each round both sides edit the same {args.shared} files in "
        f"different places; {args.rounds} rounds; same merged trees as git: {same}"
    )
    print("  " + line("broker merge (line-level, with commit)", broker_ms))
    print("  " + line("git merge-tree --write-tree", tree_ms))
    print("  " + line("git merge-tree + commit-tree + update-ref", full_ms))
    ratio_tree = statistics.mean(broker_ms) / statistics.mean(tree_ms)
    ratio_full = statistics.mean(broker_ms) / statistics.mean(full_ms)
    print(f"  broker / git merge-tree          {ratio_tree:5.2f}x  (below 1 is faster)")
    print(f"  broker / git merge-tree+commit   {ratio_full:5.2f}x")


if __name__ == "__main__":
    main()
