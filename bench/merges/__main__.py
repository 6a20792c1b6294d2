"""The full differential run: the broker's merge against ``git merge-tree --write-tree``.

    uv run python -m bench.merges [--cases 1000] [--seed 1]

Prints the agreement rate, by kind of case, and every disagreement (noting the cases with
a rename in them); any disagreement makes the run exit with status 1.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from bench.merges.cases import Case, involves_rename, run_cases


def dump(folder: Path, case: Case) -> None:
    for side in ("base", "ours", "theirs"):
        for path, (data, mode) in getattr(case, side).items():
            target = folder / side / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode & 0o777)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dump", type=Path, help="write each disagreement's files here")
    args = parser.parse_args()
    total: collections.Counter[str] = collections.Counter()
    agree: collections.Counter[str] = collections.Counter()
    clean = 0
    unexplained = 0
    renames = 0
    with tempfile.TemporaryDirectory() as scratch:
        for verdict in run_cases(args.seed, args.cases, Path(scratch) / "repo"):
            kind = verdict.case.kind
            total[kind] += 1
            clean += verdict.git_clean
            if verdict.agrees:
                agree[kind] += 1
                continue
            if args.dump is not None:
                dump(args.dump / str(verdict.case.number), verdict.case)
            rename = involves_rename(verdict.case)
            renames += rename
            unexplained += not rename
            print(
                f"case {verdict.case.number} ({kind}): git "
                f"{'clean' if verdict.git_clean else 'conflict'}, broker "
                f"{'clean' if verdict.aether_clean else 'conflict'}"
                + (" (a rename git followed)" if rename else "")
            )
    cases = sum(total.values())
    agreed = sum(agree.values())
    print(f"{cases} merges (seed {args.seed}), {clean} clean for git")
    for kind in sorted(total):
        print(f"  {kind:<11} {agree[kind]:4d}/{total[kind]:<4d} agree")
    print(f"agreement: {agreed}/{cases} = {100 * agreed / cases:.1f}%")
    print(f"disagreements: {renames} with a rename in them, {unexplained} other")
    return 1 if agreed != cases else 0


if __name__ == "__main__":
    sys.exit(main())
