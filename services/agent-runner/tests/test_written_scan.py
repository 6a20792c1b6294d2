"""The finish check of a worktree only the file tools wrote to: the ways to what they
wrote are walked, the rest of the tree is taken as checked out, and the answer and the
commit are the ones a walk of every directory gives."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from aether_agent_runner.adapters import scan as scan_module
from aether_agent_runner.adapters.git import GitDir, commit_all, snapshot
from aether_agent_runner.adapters.scan import StatCache
from aether_agent_runner.adapters.workspace import ToolError, Workspace


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def _checked_out(tmp_path: Path, name: str) -> tuple[Path, GitDir]:
    """A project of nested directories, ignore rules at two levels and an executable,
    with a task branch checked out in a linked worktree whose index trusts every file."""
    repo = tmp_path / "repo"
    if not repo.exists():
        repo.mkdir()
        git("init", "-q", "-b", "main", cwd=repo)
        files = {
            ".gitignore": "*.log\nbuild/\n",
            "README.md": "readme\n",
            "run.sh": "#!/bin/sh\n",
            "src/app.py": "x = 1\n",
            "src/.gitignore": "local.txt\n",
            "src/core/model.py": "class Model: ...\n",
            "src/core/deep/er/leaf.py": "leaf = True\n",
            "docs/guide.md": "guide\n",
            "docs/api/index.md": "api\n",
            "tests/test_app.py": "def test(): ...\n",
        }
        for path, content in files.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(content)
        (repo / "run.sh").chmod(0o755)
        git("add", ".", cwd=repo)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)
    git("branch", name, "main", cwd=repo)
    wt = tmp_path / name
    git("worktree", "add", "-q", str(wt), name, cwd=repo)
    # The index rewritten a moment after the files: none of them racily clean, as a
    # checkout's index usually is not.
    time.sleep(0.02)
    git("read-tree", "HEAD", cwd=wt)
    git("update-index", "--refresh", "-q", cwd=wt)
    return wt.resolve(), GitDir.discover(wt.resolve(), name)


def _work(ws: Workspace) -> None:
    """What an agent's file tools might do: new files in new and existing directories,
    an edit, a deletion, a rewrite with the same bytes, ignore rules changed, an ignored
    file, and calls refused on the way."""
    ws.write_file("src/core/new.py", "new = 1\n")
    ws.write_file("fresh/deeper/still/n.txt", "n\n")
    ws.edit_file("src/app.py", "x = 1", "x = 2")
    ws.delete_file("docs/guide.md")
    ws.write_file("README.md", "readme\n")
    ws.write_file("src/.gitignore", "local.txt\n*.tmp\n")
    ws.write_file("src/scratch.tmp", "ignored now\n")
    ws.write_file("src/core/deep/trace.log", "ignored\n")
    ws.write_file("src/local.txt", "ignored below src\n")
    with pytest.raises(ToolError):
        ws.edit_file("docs/api/index.md", "not there", "x")
    with pytest.raises(ToolError):
        ws.delete_file("src/core")


def _seen(found: dict[bytes, object]) -> dict[bytes, tuple[int, object]]:
    return {path: (entry.mode, entry.sha) for path, entry in found.items()}  # type: ignore[attr-defined]


def test_the_ways_to_what_the_tools_wrote_give_what_a_whole_walk_gives(tmp_path: Path) -> None:
    wt, records = _checked_out(tmp_path, "task")
    ws = Workspace(wt)
    _work(ws)
    # A write cut short leaves its temporary file on a written path's way.
    (wt / "src" / "core" / ".app.py.aether-cut").write_text("half\n")

    whole = snapshot(records)
    ways = snapshot(records, written=ws.touched)

    assert ways.state.changed == whole.state.changed
    # What the ways hold is what the whole walk found there; off them nothing was
    # listed or looked at, and every tracked file there is as the tree has it.
    assert _seen(ways.state.found).items() <= _seen(whole.state.found).items()
    assert b"src/core/.app.py.aether-cut" in ways.state.changed
    for path in (b"docs/api/index.md", b"tests/test_app.py", b"src/core/deep/er/leaf.py"):
        assert path not in ways.state.found, path  # off every way
    for path in (b"src/core/model.py", b"run.sh"):
        assert ways.state.found[path].st is None, path  # on a way, not written
    for path in (b"src/app.py", b"src/core/new.py", b"src/core/.app.py.aether-cut"):
        assert ways.state.found[path].st is not None, path


def test_a_commit_from_the_ways_is_the_commit_of_a_whole_walk_and_its_index_is_true(
    tmp_path: Path,
) -> None:
    wt, records = _checked_out(tmp_path, "ways")
    other, other_records = _checked_out(tmp_path, "whole")
    ws = Workspace(wt)
    _work(ws)
    _work(Workspace(other))
    message = "Work\n\nAether-Task: t1\nAether-Attempt: 1\n"

    sha, changed = commit_all(records, message, scanned=snapshot(records, written=ws.touched))
    whole_sha, whole_changed = commit_all(other_records, message)

    assert sha is not None and whole_sha is not None
    assert changed == whole_changed
    tree = git("rev-parse", f"{sha}^{{tree}}", cwd=wt)
    assert tree == git("rev-parse", f"{whole_sha}^{{tree}}", cwd=other)
    assert git("status", "--porcelain", "--untracked-files=all", cwd=wt) == ""
    # The files nobody touched keep their stat data in the new index: the next look
    # trusts them without reading them.
    index = StatCache(records.admin / "index")
    for path in ("docs/api/index.md", "src/core/deep/er/leaf.py", "run.sh"):
        st = (wt / path).lstat()
        mode = 0o100755 if path == "run.sh" else 0o100644
        assert index.sha(path.encode(), st, mode) is not None, path


def test_a_racily_clean_entry_is_not_carried_into_the_next_index(tmp_path: Path) -> None:
    wt, records = _checked_out(tmp_path, "task")
    leaf = wt / "docs" / "api" / "index.md"
    # Stat data no older than the index that holds it (a file modified in the instant
    # the index was written): the entry may describe other bytes than the file's.
    future = time.time_ns() + 60_000_000_000
    os.utime(leaf, ns=(future, future))
    git("update-index", "--refresh", "-q", cwd=wt)
    tree_sha = snapshot(records).state.tracked[b"docs/api/index.md"][1]
    assert StatCache(records.admin / "index").kept(b"docs/api/index.md", 0o100644, tree_sha) is None
    ws = Workspace(wt)
    ws.write_file("src/app.py", "x = 3\n")

    sha, _ = commit_all(records, "Work\n", scanned=snapshot(records, written=ws.touched))

    assert sha is not None
    index = StatCache(records.admin / "index")
    assert index.sha(b"docs/api/index.md", leaf.lstat(), 0o100644) is None
    assert index.sha(b"docs/guide.md", (wt / "docs" / "guide.md").lstat(), 0o100644) is not None
    assert git("status", "--porcelain", "--untracked-files=all", cwd=wt) == ""


def test_what_a_resume_clears_of_writes_cut_short_counts_as_written(tmp_path: Path) -> None:
    wt, _ = _checked_out(tmp_path, "task")
    (wt / "src" / "core" / ".model.py.0123456789ab.tmp").write_text("half\n")
    ws = Workspace(wt)

    assert ws.remove_debris() == ["src/core/.model.py.0123456789ab.tmp"]
    assert ws.touched == {("src", "core", ".model.py.0123456789ab.tmp")}


def test_a_look_on_the_ways_and_its_commit_parse_no_entry_of_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The untouched files' entries go into the new index as the old one stores them,
    byte for byte, without the index being parsed entry by entry."""
    wt, records = _checked_out(tmp_path, "task")
    before = (records.admin / "index").read_bytes()

    def parsed(*args: object) -> object:
        raise AssertionError("the index was parsed entry by entry")

    monkeypatch.setattr(scan_module, "_parsed_index", parsed)
    ws = Workspace(wt)
    ws.edit_file("src/app.py", "x = 1", "x = 5")
    ws.write_file("src/core/fresh.py", "fresh = 1\n")

    sha, changed = commit_all(records, "Work\n", scanned=snapshot(records, written=ws.touched))

    assert sha is not None and changed == ["src/app.py", "src/core/fresh.py"]
    after = (records.admin / "index").read_bytes()
    for path in (b"docs/api/index.md", b"src/core/deep/er/leaf.py", b"README.md"):
        start = before.index(path + b"\0") - 62
        entry = before[start : start + ((62 + len(path) + 8) & ~7)]
        assert entry in after, path
    assert git("status", "--porcelain", "--untracked-files=all", cwd=wt) == ""
