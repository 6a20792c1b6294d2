"""Generated three-way merges, run through the broker's merge and through git's.

Each case is three commits written into one scratch repository: a base holding a few
files cut from real text (the Python standard library's sources), and two children
that edit them at random: insertions, deletions and replacements, often next to or over
the other side's edits, sometimes the very same edit; with CRLF line ends, no newline at
the end, empty files, binary content, mode changes, deletions, renames, files added on
both sides and a file replaced by a directory. The broker merges the trees with
``merge_trees``; git merges the commits with ``git merge-tree --write-tree`` (git's
default ``ort`` strategy). They agree when both call the merge clean and produce the
same tree (so the same merged blobs and modes), or both call it a conflict.
"""

from __future__ import annotations

import random
import stat
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dulwich.index import commit_tree
from dulwich.objects import Blob, Commit, ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.treemerge import Trees, merge_trees

FILE = stat.S_IFREG | 0o644
EXECUTABLE = stat.S_IFREG | 0o755
KINDS = (
    "text",
    "text",
    "text",
    "text",
    "near",
    "near",
    "same",
    "crlf",
    "no_newline",
    "empty",
    "binary",
    "mode",
    "delete",
    "rename",
    "add_add",
    "file_dir",
)
_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/bin:/bin:/usr/local/bin",
}

Files = dict[str, tuple[bytes, int]]


def corpus() -> list[list[bytes]]:
    """Real text files: the Python standard library's modules, as lists of lines (the same
    text wherever the same Python runs, so a seed always gives the same cases)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py"))[:400]:
        data = path.read_bytes()
        if data and b"\0" not in data:
            texts.append(data.splitlines(keepends=True))
    return texts


@dataclass(frozen=True)
class Case:
    number: int
    kind: str
    base: Files
    ours: Files
    theirs: Files


@dataclass(frozen=True)
class Verdict:
    case: Case
    git_clean: bool
    git_tree: str
    aether_clean: bool
    aether_tree: str | None

    @property
    def agrees(self) -> bool:
        if self.git_clean != self.aether_clean:
            return False
        return not self.git_clean or self.git_tree == self.aether_tree


class Generator:
    """Seeded cases; the same seed and corpus give the same cases."""

    def __init__(self, seed: int, texts: list[list[bytes]]) -> None:
        self.random = random.Random(seed)
        self.texts = texts

    def snippet(self, most: int) -> list[bytes]:
        r = self.random
        text = r.choice(self.texts)
        length = r.randint(1, max(1, min(most, len(text))))
        start = r.randint(0, max(0, len(text) - length))
        return list(text[start : start + length])

    def base_lines(self) -> list[bytes]:
        r = self.random
        size = r.choice((3, 10, 40, 120, 400, 2000))
        return self.snippet(size)

    def edit(self, lines: list[bytes], near: int | None = None) -> tuple[list[bytes], int]:
        """One random edit; returns the new lines and where it happened."""
        r = self.random
        if near is None:
            at = r.randint(0, len(lines))
        else:
            at = max(0, min(len(lines), near + r.randint(-3, 3)))
        op = r.choice(("insert", "delete", "replace", "replace"))
        width = r.choice((1, 1, 1, 2, 3, 5))
        new = list(lines)
        if op == "insert" or not lines:
            new[at:at] = self.snippet(width)
        elif op == "delete":
            del new[at : at + width]
        else:
            new[at : at + width] = self.snippet(width)
        return new, at

    def sides(self, base: list[bytes], kind: str) -> tuple[list[bytes], list[bytes]]:
        r = self.random
        ours, spots = list(base), []
        for _ in range(r.randint(1, 3)):
            ours, at = self.edit(ours)
            spots.append(at)
        if kind == "same":
            theirs = list(ours) if r.random() < 0.5 else self.edit(ours)[0]
            return ours, theirs
        theirs = list(base)
        for _ in range(r.randint(1, 3)):
            close = kind == "near" or r.random() < 0.25
            theirs, _ = self.edit(theirs, r.choice(spots) if close else None)
        return ours, theirs

    def case(self, number: int) -> Case:
        r = self.random
        kind = r.choice(KINDS)
        base_l = self.base_lines()
        ours_l, theirs_l = self.sides(base_l, kind)
        join = b"".join
        base: Files = {"doc/main.txt": (join(base_l), FILE)}
        ours: Files = {"doc/main.txt": (join(ours_l), FILE)}
        theirs: Files = {"doc/main.txt": (join(theirs_l), FILE)}
        # A bystander each side may edit on its own, and one nobody touches.
        other = join(self.snippet(30))
        base["other.txt"] = ours["other.txt"] = theirs["other.txt"] = (other, FILE)
        base["lib/keep.txt"] = ours["lib/keep.txt"] = theirs["lib/keep.txt"] = (other, FILE)
        if r.random() < 0.3:
            ours["other.txt"] = (other + join(self.snippet(3)), FILE)
        if kind == "crlf":
            for files in (base, ours, theirs):
                data, mode = files["doc/main.txt"]
                files["doc/main.txt"] = (data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), mode)
            if r.random() < 0.3:  # one side's edit in LF line ends
                side = r.choice((ours, theirs))
                data, mode = side["doc/main.txt"]
                side["doc/main.txt"] = (data.replace(b"\r\n", b"\n", 1), mode)
        elif kind == "no_newline":
            for files in r.sample((base, ours, theirs), r.randint(1, 3)):
                data, mode = files["doc/main.txt"]
                files["doc/main.txt"] = (data.rstrip(b"\n"), mode)
        elif kind == "empty":
            choice = r.randint(0, 2)
            if choice == 0:
                base["doc/main.txt"] = (b"", FILE)
            else:
                side = ours if choice == 1 else theirs
                side["doc/main.txt"] = (b"", FILE)
        elif kind == "binary":
            side = r.choice((base, ours, theirs))
            data, mode = side["doc/main.txt"]
            at = r.randint(0, len(data))
            side["doc/main.txt"] = (data[:at] + b"\0" + data[at:], mode)
        elif kind == "mode":
            for files in r.sample((ours, theirs), r.randint(1, 2)):
                data, _ = files["doc/main.txt"]
                files["doc/main.txt"] = (data, EXECUTABLE)
            if r.random() < 0.5:
                ours["doc/main.txt"] = (base["doc/main.txt"][0], ours["doc/main.txt"][1])
        elif kind == "delete":
            side = r.choice((ours, theirs))
            del side["doc/main.txt"]
            if r.random() < 0.3:
                other_side = theirs if side is ours else ours
                other_side["doc/main.txt"] = base["doc/main.txt"]
        elif kind == "rename":
            side = r.choice((ours, theirs))
            data, mode = side.pop("doc/main.txt")
            if r.random() < 0.5:
                data = base["doc/main.txt"][0]
            side[r.choice(("doc/renamed.txt", "moved/main.txt"))] = (data, mode)
            if r.random() < 0.2:
                other_side = theirs if side is ours else ours
                del other_side["doc/main.txt"]
        elif kind == "add_add":
            del base["doc/main.txt"]
        elif kind == "file_dir":
            side = r.choice((ours, theirs))
            data, mode = side.pop("doc/main.txt")
            side["doc/main.txt/inner.txt"] = (data, mode)
        return Case(number, kind, base, ours, theirs)


class Oracle:
    """One scratch repository where cases are written and merged both ways."""

    def __init__(self, path: Path) -> None:
        subprocess.run(["git", "init", "-q", str(path)], check=True, env=_ENV)
        self.path = path
        self.repo = Repo(str(path))
        self.trees = Trees(self.repo.object_store)

    def close(self) -> None:
        self.repo.close()

    def _tree(self, files: Files) -> ObjectID:
        store = self.repo.object_store
        entries = []
        for path, (data, mode) in files.items():
            blob = Blob.from_string(data)
            store.add_object(blob)
            entries.append((path.encode(), blob.id, mode))
        return commit_tree(store, entries)

    def _commit(self, tree: ObjectID, parents: list[ObjectID], message: str) -> ObjectID:
        commit = Commit()
        commit.tree = tree
        commit.parents = parents
        commit.author = commit.committer = b"Oracle <oracle@example.com>"
        commit.author_time = commit.commit_time = 1_700_000_000
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = message.encode()
        self.repo.object_store.add_object(commit)
        return commit.id

    def run(self, case: Case) -> Verdict:
        base_tree = self._tree(case.base)
        ours_tree = self._tree(case.ours)
        theirs_tree = self._tree(case.theirs)
        base = self._commit(base_tree, [], f"base {case.number}")
        ours = self._commit(ours_tree, [base], f"ours {case.number}")
        theirs = self._commit(theirs_tree, [base], f"theirs {case.number}")
        git = subprocess.run(
            [
                "git",
                "-C",
                str(self.path),
                # The broker moves a file added in a directory the other side renamed
                # and calls the merge clean, as git does with this setting; git's default
                # ("conflict") makes the same move but calls it a conflict.
                "-c",
                "merge.directoryRenames=true",
                "merge-tree",
                "--write-tree",
                ours.decode(),
                theirs.decode(),
            ],
            capture_output=True,
            env=_ENV,
            check=False,
        )
        if git.returncode not in (0, 1):
            raise RuntimeError(f"git merge-tree failed: {git.stderr.decode()}")
        result = merge_trees(self.trees, base_tree, ours_tree, theirs_tree)
        return Verdict(
            case=case,
            git_clean=git.returncode == 0,
            git_tree=git.stdout.split(b"\n", 1)[0].decode(),
            aether_clean=result.tree is not None,
            aether_tree=result.tree.decode() if result.tree is not None else None,
        )


class CaseMaker(Protocol):
    def case(self, number: int) -> Case: ...


def run_cases(
    seed: int,
    count: int,
    scratch: Path,
    texts: list[list[bytes]] | None = None,
    make: Callable[[int, list[list[bytes]]], CaseMaker] = Generator,
) -> Iterator[Verdict]:
    """Generate ``count`` cases from ``seed`` (with ``make``'s generator) and merge each
    both ways."""
    generator = make(seed, texts if texts is not None else corpus())
    oracle = Oracle(scratch)
    try:
        for number in range(count):
            yield oracle.run(generator.case(number))
    finally:
        oracle.close()


def involves_rename(case: Case) -> bool:
    """A side removed a file of the base and added one: git may see a rename there."""
    for side in (case.ours, case.theirs):
        removed = case.base.keys() - side.keys()
        added = side.keys() - case.base.keys()
        if removed and added:
            return True
    return False
