"""Generated merges where one side renames a directory, for the differential against git.

One side (the *renamer*) moves the files of a directory of the base elsewhere: all to one
new directory, to an existing one, to the top level or into a directory it renames
itself; sometimes with edits (inexact renames), some files split off to a second place
(a majority or a tie), one left behind, one deleted, or the subtree flattened. The other
side adds files directly in the old directory, in a new subdirectory of it, or only in a
subdirectory; edits files there; renames a file into it; puts a file where a moved one
would land; or renames the same directory too. Each case is merged by the broker and by
``git merge-tree --write-tree`` with ``merge.directoryRenames=true`` (see ``cases``).

    uv run python -m bench.merges.dirrenames [--cases 300] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.merges.cases import FILE, Case, Files, Verdict, run_cases

DIRECTORIES = ("src/util", "src/util/sub", "src/app", "lib", "docs/guide", "a/b/c")
TARGETS = ("src/common", "src/app", "", "pkg/util", "src/util2/sub", "lib/util", "a/x/c")


class DirectoryGenerator:
    """Seeded cases; the same seed and corpus give the same cases."""

    def __init__(self, seed: int, texts: list[list[bytes]]) -> None:
        self.random = random.Random(seed)
        self.texts = texts
        self.serial = 0

    def text(self) -> bytes:
        r = self.random
        lines = r.choice(self.texts)
        length = r.randint(4, min(30, max(4, len(lines))))
        start = r.randint(0, max(0, len(lines) - length))
        self.serial += 1
        # A line of its own makes every file distinct (no accidental exact renames).
        return f"# file {self.serial}\n".encode() + b"".join(lines[start : start + length])

    def case(self, number: int) -> Case:
        r = self.random
        base: Files = {}
        for directory in r.sample(DIRECTORIES, r.randint(2, len(DIRECTORIES))):
            for k in range(r.randint(1, 4)):
                base[f"{directory}/f{k}.py"] = (self.text(), FILE)
        base["README"] = (self.text(), FILE)
        tops = sorted({p.rsplit("/", 1)[0] for p in base if "/" in p})
        old = r.choice(tops)
        new = r.choice([t for t in TARGETS if t != old and not t.startswith(old + "/")])
        renamer: Files = dict(base)
        other: Files = dict(base)
        moved = sorted(p for p in base if p.startswith(old + "/"))
        second = r.choice(("elsewhere", "lib/second", ""))
        flatten = r.random() < 0.15
        for index, path in enumerate(moved):
            data, mode = renamer.pop(path)
            rest = path[len(old) + 1 :]
            if flatten:
                rest = rest.rsplit("/", 1)[-1]
            target_dir = new
            roll = r.random()
            if roll < 0.12:
                target_dir = second  # split off (a majority, or a tie)
            elif roll < 0.17 and index == 0:
                renamer[path] = (data, mode)  # left behind: the directory stays
                continue
            elif roll < 0.21:
                continue  # deleted
            if r.random() < 0.25:
                data = data + b"# edited when moved\n"
            renamer[f"{target_dir}/{rest}" if target_dir else rest] = (data, mode)
        # What the other side does in the old directory.
        roll = r.random()
        if roll < 0.55 or not moved:
            other[f"{old}/added.py"] = (self.text(), FILE)
        if r.random() < 0.3:
            other[f"{old}/newsub/deep.py"] = (self.text(), FILE)
        if moved and r.random() < 0.35:
            path = r.choice(moved)
            data, mode = other[path]
            other[path] = (data + b"# edited in place\n", mode)
        if r.random() < 0.2:
            source = r.choice([p for p in base if not p.startswith(old + "/")])
            other[f"{old}/{source.rsplit('/', 1)[-1]}.moved"] = other.pop(source)
        if r.random() < 0.1:
            target = f"{new}/added.py" if new else "added.py"
            other[target] = (self.text(), FILE)  # where the added file would land
        if r.random() < 0.1:
            target = f"{new}/added.py" if new else "added.py"
            renamer[target] = (self.text(), FILE)
        if moved and r.random() < 0.08:
            for path in moved:  # both sides rename the directory
                if path in other:
                    other[path.replace(old, "both/renamed", 1)] = other.pop(path)
        renamer_is_ours = r.random() < 0.5
        ours, theirs = (renamer, other) if renamer_is_ours else (other, renamer)
        return Case(number, "dir_rename", base, ours, theirs)


def run_directory_cases(
    seed: int, count: int, scratch: Path, texts: list[list[bytes]] | None = None
) -> Iterator[Verdict]:
    """Generate ``count`` directory-rename cases from ``seed`` and merge each both ways."""
    return run_cases(seed, count, scratch, texts, make=DirectoryGenerator)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    clean = agreed = 0
    with tempfile.TemporaryDirectory() as scratch:
        for verdict in run_directory_cases(args.seed, args.cases, Path(scratch) / "repo"):
            clean += verdict.git_clean
            agreed += verdict.agrees
            if not verdict.agrees:
                print(
                    f"case {verdict.case.number}: git "
                    f"{'clean' if verdict.git_clean else 'conflict'}, broker "
                    f"{'clean' if verdict.aether_clean else 'conflict'}"
                )
    print(f"{args.cases} cases ({clean} clean for git): {agreed} agree")
    return 0 if agreed == args.cases else 1


if __name__ == "__main__":
    raise SystemExit(main())
