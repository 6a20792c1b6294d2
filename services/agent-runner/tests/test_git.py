"""Committing the agent's work in a linked worktree."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aether_agent_runner.adapters.git import GitDir, commit_all, commit_message_trailers


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_commit_all_records_new_changed_and_deleted_files_on_the_task_branch(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "keep.txt").write_text("keep\n")
    (repo / "gone.txt").write_text("gone\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)
    git("branch", "task", cwd=repo)
    git("worktree", "add", "-q", str(tmp_path / "wt"), "task", cwd=repo)
    wt = tmp_path / "wt"
    (wt / "new" / "deep").mkdir(parents=True)
    (wt / "new" / "deep" / "file.py").write_text("x = 1\n")
    (wt / "keep.txt").write_text("changed\n")
    (wt / "gone.txt").unlink()

    sha, changed = commit_all(
        GitDir.discover(wt, "task"), "Work\n\nAether-Task: t1\nAether-Attempt: 2\n"
    )

    assert sha is not None
    assert changed == ["gone.txt", "keep.txt", "new/deep/file.py"]
    assert git("rev-parse", "task", cwd=repo).strip() == sha
    assert git("ls-tree", "-r", "--name-only", "task", cwd=repo).split() == [
        "keep.txt",
        "new/deep/file.py",
    ]
    assert git("status", "--short", cwd=wt) == ""
    assert commit_message_trailers(sha, GitDir.discover(wt, "task").store()) == {
        "Aether-Attempt": "2",
        "Aether-Task": "t1",
    }


def test_nothing_to_commit_is_reported_as_none(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "a").write_text("a\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)
    assert commit_all(GitDir.clone(repo, "main"), "nothing\n") == (None, [])
