"""Reading results out of a repository with dulwich (no git binary needed).

dulwich is imported where a repository is read (about 25 ms): most commands never do.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.render import counted

if TYPE_CHECKING:
    from dulwich.objects import TreeEntry
    from dulwich.repo import Repo


@dataclass
class FileStat:
    path: str
    added: int
    removed: int


_GITLINK = 0o160000
# A file is aligned line by line only under this many lines (both sides together): past
# it the worst case of the alignment costs seconds a file, so it is counted as lines in
# and out instead (as the git broker's diff does).
_ALIGNED_LINES = 20_000
_BINARY_BYTES = 8000


def _data(repo: Repo, entry: TreeEntry | None) -> bytes:
    from dulwich.objects import Blob

    if entry is None or entry.sha is None:
        return b""
    if entry.mode == _GITLINK:  # a commit of another repository: not in this one
        return b"Subproject commit " + entry.sha + b"\n"
    blob = repo[entry.sha]
    return blob.data if isinstance(blob, Blob) else b""


def _changes(repo_path: Path, old: str, new: str) -> list[tuple[str, str, bytes, bytes]]:
    """Each changed path (shown as git shows it: escaped and quoted when it is not valid
    UTF-8 or holds a control character), its kind of change, and its data before and
    after, in path order."""
    from dulwich.diff_tree import tree_changes
    from dulwich.objects import Commit
    from dulwich.repo import Repo

    from aether_events.diffs import shown_path

    with Repo(str(repo_path)) as repo:
        old_commit, new_commit = repo[old.encode()], repo[new.encode()]
        assert isinstance(old_commit, Commit)
        assert isinstance(new_commit, Commit)
        found = []
        for change in tree_changes(repo.object_store, old_commit.tree, new_commit.tree):
            named = change.new if change.new is not None and change.new.path else change.old
            path = named.path or b"" if named is not None else b""
            found.append((path, change.type, _data(repo, change.old), _data(repo, change.new)))
        return [(shown_path(p), kind, a, b) for p, kind, a, b in sorted(found)]


def _counts(before: list[bytes], after: list[bytes]) -> tuple[int, int]:
    """Lines added and removed."""
    from collections import Counter

    if len(before) + len(after) > _ALIGNED_LINES:
        gone, came = Counter(before), Counter(after)
        return (came - gone).total(), (gone - came).total()
    added = removed = 0
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed += i2 - i1
            added += j2 - j1
    return added, removed


def diff_stat(repo_path: Path, old: str, new: str) -> list[FileStat]:
    """Per-file added/removed line counts between two commits."""
    return [
        FileStat(path, *_counts(before.splitlines(), after.splitlines()))
        for path, _, before, after in _changes(repo_path, old, new)
    ]


def unified_diff(repo_path: Path, old: str, new: str) -> str:
    """The unified diff between two commits of a repository (binary files named only; a
    file too long to align, see ``_ALIGNED_LINES``, counted only)."""
    out: list[str] = []
    for path, kind, before, after in _changes(repo_path, old, new):
        out.append(f"diff --git a/{path} b/{path}  ({kind})")
        if b"\0" in before[:_BINARY_BYTES] or b"\0" in after[:_BINARY_BYTES]:
            out.append("Binary file, not shown")
            continue
        a = before.decode("utf-8", "replace").splitlines()
        b = after.decode("utf-8", "replace").splitlines()
        if len(a) + len(b) > _ALIGNED_LINES:
            added, removed = _counts(before.splitlines(), after.splitlines())
            out.append(f"… (+{added} -{removed} lines: too long to show line by line)")
            continue
        out += [f"--- a/{path}", f"+++ b/{path}"]
        out += list(difflib.unified_diff(a, b, lineterm="", n=3))[2:]
    return "\n".join(out) + "\n" if out else ""


def stat_of_answer(diff: dict[str, Any]) -> list[FileStat]:
    """The per-file counts of the gateway's diff answer."""
    return [
        FileStat(str(f["path"]), int(f["added"]), int(f["removed"]))
        for f in diff.get("files") or []
    ]


def text_of_answer(diff: dict[str, Any]) -> str:
    """The gateway's diff answer as unified-diff text; a binary file and whatever the
    broker cut short are said so, not shown."""
    out: list[str] = []
    for f in diff.get("files") or []:
        path = str(f["path"])
        out.append(f"diff --git a/{path} b/{path}  ({f['change']})")
        if f.get("binary"):
            out.append("Binary file, not shown")
            continue
        out += [f"--- a/{path}", f"+++ b/{path}", *(str(line) for line in f.get("lines") or [])]
        if f.get("truncated"):
            out.append("… (cut short: the file's diff is longer than shown)")
    if diff.get("truncated"):
        out.append("… (cut short: more files changed than shown)")
    return "\n".join(out) + "\n"


def format_stat(stats: list[FileStat]) -> str:
    width = max((len(s.path) for s in stats), default=0)
    lines = [
        f" {s.path.ljust(width)} | {s.added + s.removed:4d} +{s.added} -{s.removed}" for s in stats
    ]
    total_added = sum(s.added for s in stats)
    total_removed = sum(s.removed for s in stats)
    lines.append(
        f" {counted(len(stats), 'file')} changed, {counted(total_added, 'insertion')}(+), "
        f"{counted(total_removed, 'deletion')}(-)"
    )
    return "\n".join(lines)


def create_sample_repository(path: Path) -> str:
    """A small repository on branch ``main`` for the demo; returns the head sha."""
    from dulwich import porcelain
    from dulwich.refs import Ref

    path.mkdir(parents=True, exist_ok=True)
    repo = porcelain.init(str(path))
    repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(b"refs/heads/main"))
    files = {
        "README.md": "# Greeter\n\nA tiny sample project for the Aether demo.\n",
        "src/app.py": 'def main() -> None:\n    print("hello")\n',
    }
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    porcelain.add(repo, paths=[str(path / name) for name in files])
    author = b"Aether Demo <demo@aether.invalid>"
    sha = porcelain.commit(repo, message=b"Initial commit\n", author=author, committer=author)
    repo.close()
    return sha.decode()
