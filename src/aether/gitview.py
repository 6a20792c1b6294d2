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


def _lines(repo: Repo, entry: TreeEntry | None) -> list[bytes]:
    from dulwich.objects import Blob

    if entry is None or entry.sha is None:
        return []
    blob = repo[entry.sha]
    return blob.data.splitlines() if isinstance(blob, Blob) else []


def diff_stat(repo_path: Path, old: str, new: str) -> list[FileStat]:
    """Per-file added/removed line counts between two commits."""
    from dulwich.diff_tree import tree_changes
    from dulwich.objects import Commit
    from dulwich.repo import Repo

    with Repo(str(repo_path)) as repo:
        old_commit, new_commit = repo[old.encode()], repo[new.encode()]
        assert isinstance(old_commit, Commit)
        assert isinstance(new_commit, Commit)
        stats: list[FileStat] = []
        for change in tree_changes(repo.object_store, old_commit.tree, new_commit.tree):
            named = change.new if change.new is not None and change.new.path else change.old
            path = (named.path or b"").decode() if named is not None else ""
            before, after = _lines(repo, change.old), _lines(repo, change.new)
            added = removed = 0
            matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes():
                if tag != "equal":
                    removed += i2 - i1
                    added += j2 - j1
            stats.append(FileStat(path, added, removed))
        return sorted(stats, key=lambda s: s.path)


def unified_diff(repo_path: Path, old: str, new: str) -> str:
    """The unified diff between two commits of a repository (binary files named only)."""
    from io import BytesIO

    from dulwich.objects import Commit
    from dulwich.patch import write_tree_diff
    from dulwich.repo import Repo

    with Repo(str(repo_path)) as repo:
        old_commit, new_commit = repo[old.encode()], repo[new.encode()]
        assert isinstance(old_commit, Commit)
        assert isinstance(new_commit, Commit)
        out = BytesIO()
        write_tree_diff(out, repo.object_store, old_commit.tree, new_commit.tree)
        return out.getvalue().decode("utf-8", errors="replace")


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
