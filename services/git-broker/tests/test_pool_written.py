"""A pooled worktree only the agent runner's file tools wrote to: its index names the
paths they wrote (the runner's optional index extension), and the next checkout looks
only on the ways to them, trusting the rest as the index says (the agent runner's
commit and the broker's checkout together, as they run)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dulwich.objects import ObjectID

from aether_agent_runner.adapters.git import GitDir, commit_all, snapshot
from aether_agent_runner.adapters.workspace import Workspace
from aether_git_broker.adapters import checkout as checkout_module
from aether_git_broker.adapters.checkout import WRITTEN_EXTENSION, read_index
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.domain import WorkspaceOutcome

from .conftest import write_and_commit

INTEGRATION = "aether/m-w"
Git = Callable[..., str]


def _workspace(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, task: str
) -> WorkspaceOutcome:
    return broker.prepare_workspace(
        str(repo), INTEGRATION, f"aether-tasks/m-w/{task}/a1", str(worktrees_dir / "m-w" / task)
    )


def _merge(broker: GitRepositories, repo: Path, base: str, task: str, sha: str) -> str:
    merged = broker.merge(
        str(repo),
        INTEGRATION,
        since_sha=base,
        mission_id="m-w",
        task_id=task,
        attempt=1,
        commit_sha=sha,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert merged.kind in ("merged", "fast_forward"), merged
    return merged.sha


@pytest.fixture
def project(repo: Path) -> Path:
    write_and_commit(
        repo,
        {
            ".gitignore": "*.log\n",
            "docs/api/index.md": "api\n",
            "docs/guide.md": "guide\n",
            "lib/deep/er/x.py": "x = 1\n",
            "lib/y.py": "y = 1\n",
        },
        "a project of nested directories",
    )
    return repo


def test_a_worktree_the_file_tools_wrote_to_is_reused_looking_only_on_their_ways(
    project: Path, worktrees_dir: Path, git: Git, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    first = _workspace(broker, project, worktrees_dir, "t1")
    other = _workspace(broker, project, worktrees_dir, "t9")

    # Another task changes files off the first one's ways, and is merged first.
    other_path = Path(other.worktree_path)
    (other_path / "lib" / "deep" / "er" / "x.py").write_text("x = 2\n")
    (other_path / "docs" / "api" / "index.md").write_text("API\n")
    (other_path / "README.md").write_text("# demo, merged first\n")  # on the ways, not written
    other_records = GitDir.linked(other_path, Path(other.git_dir), other.branch)
    other_sha, _ = commit_all(other_records, "other\n")
    assert other_sha is not None
    _merge(broker, project, base, "t9", other_sha)
    broker.remove_worktree(str(project), other.worktree_path)

    # The first task's agent: new files in new and existing directories, an edit, a
    # deletion, an ignored file.
    worktree = Path(first.worktree_path)
    records = GitDir.linked(worktree, Path(first.git_dir), first.branch)
    tools = Workspace(worktree)
    tools.write_file("notes/new/deep.txt", "deep\n")
    tools.write_file("app/extra.py", "extra = 1\n")
    tools.edit_file("app/main.py", "hello", "HELLO")
    tools.delete_file("app/util.py")
    tools.write_file("app/trace.log", "ignored\n")
    sha, changed = commit_all(records, "work\n", scanned=snapshot(records, written=tools.touched))
    assert sha is not None
    assert changed == ["app/extra.py", "app/main.py", "app/util.py", "notes/new/deep.txt"]
    index = read_index(str(Path(first.git_dir) / "index"))
    assert index is not None and index.written is not None
    assert sorted(index.written) == [
        b"app/extra.py",
        b"app/main.py",
        b"app/trace.log",
        b"app/util.py",
        b"notes/new/deep.txt",
    ]
    head = _merge(broker, project, base, "t1", sha)
    assert broker.recycle_worktree(str(project), first.worktree_path)

    scan = checkout_module._scan

    def no_whole_scan(root: bytes, passed: object = None, enters: object = None) -> object:
        if enters is None:
            raise AssertionError("the whole worktree was scanned")
        return scan(root, passed, enters)  # type: ignore[arg-type]

    monkeypatch.setattr(checkout_module, "_scan", no_whole_scan)
    second = _workspace(broker, project, worktrees_dir, "t2")

    path = Path(second.worktree_path)
    assert second.base_sha == head
    assert git(path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert git(path, "diff-files", "--quiet") == ""
    assert (path / "lib" / "deep" / "er" / "x.py").read_text() == "x = 2\n"
    assert (path / "docs" / "api" / "index.md").read_text() == "API\n"
    assert (path / "README.md").read_text() == "# demo, merged first\n"
    assert (path / "app" / "main.py").read_text() == "print('HELLO')\n"
    assert not (path / "app" / "trace.log").exists()
    assert not (path / "app" / "util.py").exists()
    assert (path / "notes" / "new" / "deep.txt").read_text() == "deep\n"


def test_a_worktree_where_more_than_the_file_tools_wrote_is_scanned_whole(
    project: Path, worktrees_dir: Path, git: Git
) -> None:
    """A commit from a scan of every directory (a command ran, or the attempt resumed)
    leaves no extension: whatever else changed in the worktree is put right."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    first = _workspace(broker, project, worktrees_dir, "t1")
    worktree = Path(first.worktree_path)
    records = GitDir.linked(worktree, Path(first.git_dir), first.branch)
    Workspace(worktree).write_file("app/extra.py", "extra = 1\n")
    (worktree / "lib" / "deep" / "er" / "x.py").write_text("x = 9\n")  # a command's
    (worktree / "lib" / "deep" / "er" / "out.log").write_text("ignored\n")
    sha, _ = commit_all(records, "work\n")
    assert sha is not None
    index = read_index(str(Path(first.git_dir) / "index"))
    assert index is not None and index.written is None
    _merge(broker, project, base, "t1", sha)
    broker.recycle_worktree(str(project), first.worktree_path)

    second = Path(_workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert git(second, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert (second / "lib" / "deep" / "er" / "x.py").read_text() == "x = 9\n"


@pytest.mark.parametrize("path", [b"../out", b"/etc/passwd", b"a/.git/hooks/x", b"a//b", b""])
def test_an_extension_naming_an_unsafe_path_is_not_believed(tmp_path: Path, path: bytes) -> None:
    body = b"\0".join([b"ok.txt", path])
    data = b"DIRC" + struct.pack(">LL", 2, 0)
    data += WRITTEN_EXTENSION + struct.pack(">L", len(body)) + body
    data += hashlib.sha1(data, usedforsecurity=False).digest()
    (tmp_path / "index").write_bytes(data)
    index = read_index(str(tmp_path / "index"))
    assert index is not None and index.entries == {} and index.written is None


def test_an_index_whose_paths_lead_out_is_not_believed(
    project: Path, worktrees_dir: Path, git: Git
) -> None:
    """The broker removes what the index names and the new tree lacks: an index naming
    a path out of the worktree (a runner gone wrong) makes it scan the worktree whole,
    and nothing outside is touched."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    broker.prepare_repository(str(project), "main", INTEGRATION)
    first = _workspace(broker, project, worktrees_dir, "t1")
    broker.recycle_worktree(str(project), first.worktree_path)
    (index_path,) = (worktrees_dir / ".pool").glob("*/*.admin/index")
    victim = worktrees_dir / "victim.txt"
    victim.write_text("not the broker's\n")
    index = read_index(str(index_path))
    assert index is not None
    entries: list[tuple[bytes, int, ObjectID, checkout_module.Stat]] = [
        (path, entry.mode, entry.sha, entry.stat) for path, entry in index.entries.items()
    ]
    some = entries[0]
    entries.append((b"../../victim.txt", 0o100644, some[2], some[3]))
    checkout_module.write_index(str(index_path), entries)
    body = b"README.md"
    data = index_path.read_bytes()[:-20]
    data += WRITTEN_EXTENSION + struct.pack(">L", len(body)) + body
    index_path.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())
    forged = read_index(str(index_path))
    assert forged is not None and forged.written == [b"README.md"]

    second = Path(_workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert victim.read_text() == "not the broker's\n"
    assert git(second, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
