"""Every way out of the worktree is refused, and nothing outside it changes.

The worktree is a real linked worktree (its ``.git`` is a file pointing into the
repository's administrative directory), with symlinks and a hard link planted the way a
careless or hostile command could plant them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.adapters.search import search
from aether_agent_runner.adapters.workspace import ToolError, Workspace


def plant(root: Path, worktree: Path) -> Path:
    """Files outside the worktree and the links that point at them; returns ``outside``."""
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (outside / "hard.txt").write_text("linked from inside\n")
    os.symlink(outside / "secret.txt", worktree / "link-out")
    os.symlink(os.path.relpath(outside / "secret.txt", worktree), worktree / "rel-out")
    os.symlink(outside, worktree / "dir-out")
    os.symlink("..", worktree / "up")
    os.symlink("link-out", worktree / "chain")
    os.symlink(outside / "not-yet.txt", worktree / "dangling")
    os.symlink(".git", worktree / "git-alias")
    os.link(outside / "hard.txt", worktree / "hard.txt")
    (worktree / "sub").mkdir()
    return outside


ESCAPES = [
    pytest.param("../../outside/secret.txt", id="dot-dot"),
    pytest.param("/etc/passwd", id="absolute-system-file"),
    pytest.param("{outside}/secret.txt", id="absolute-outside-file"),
    pytest.param("src/../../../outside/secret.txt", id="dot-dot-inside-path"),
    pytest.param("link-out", id="symlink-to-file-outside"),
    pytest.param("rel-out", id="relative-symlink-outside"),
    pytest.param("dir-out/secret.txt", id="symlinked-directory"),
    pytest.param("dir-out/new.txt", id="new-file-through-symlinked-directory"),
    pytest.param("up/../outside/secret.txt", id="symlink-to-parent"),
    pytest.param("chain", id="symlink-chain"),
    pytest.param("dangling", id="dangling-symlink-outside"),
    pytest.param(".git", id="dot-git"),
    pytest.param(".git/config", id="inside-dot-git"),
    pytest.param("./.git", id="dot-slash-dot-git"),
    pytest.param("src/../.git", id="dot-git-via-dot-dot"),
    pytest.param(".GIT/config", id="dot-git-other-case"),
    pytest.param("git-alias", id="symlink-to-dot-git"),
    pytest.param("sub/.git/config", id="nested-dot-git"),
    pytest.param("a\x00b", id="nul-byte"),
]


def _tools(workspace: Workspace) -> dict[str, Callable[[str], object]]:
    return {
        "read_file": workspace.read_file,
        "read_file_range": lambda p: workspace.read_file(p, 1, 2),
        "write_file": lambda p: workspace.write_file(p, "pwned\n"),
        "edit_file": lambda p: workspace.edit_file(p, "secret", "pwned"),
        "delete_file": workspace.delete_file,
        "list_dir": workspace.list_dir,
        "search": lambda p: search(workspace.root, "secret", p),
    }


@pytest.fixture(scope="module")
def planted(
    tmp_path_factory: pytest.TempPathFactory, make_repo: Callable[..., Any]
) -> tuple[Any, Path]:
    """One planted worktree for every refusal (a refusal changes nothing; each test checks)."""
    repo = make_repo(tmp_path_factory.mktemp("confined"))
    return repo, plant(repo.root, repo.worktree)


@pytest.mark.parametrize("tool", list(_tools(Workspace(Path("/")))))
@pytest.mark.parametrize("path", ESCAPES)
def test_escape_is_refused_and_nothing_outside_changes(
    planted: tuple[Any, Path], tool: str, path: str
) -> None:
    repo, outside = planted
    before = repo.outside_snapshot()
    git_file = (repo.worktree / ".git").read_bytes()
    workspace = Workspace(repo.worktree)

    with pytest.raises(ToolError):
        _tools(workspace)[tool](path.format(outside=outside))

    assert repo.outside_snapshot() == before
    assert (repo.worktree / ".git").read_bytes() == git_file
    assert not (outside / "new.txt").exists() and not (outside / "not-yet.txt").exists()
    assert workspace.changed == []


@pytest.mark.parametrize("tool", ["read_file", "write_file", "edit_file", "delete_file"])
def test_a_file_tool_needs_a_path(task_repo: Any, tool: str) -> None:
    with pytest.raises(ToolError, match="a path is required"):
        _tools(Workspace(task_repo.worktree))[tool]("")


def test_writing_through_a_hard_link_replaces_the_link_not_the_file_outside(
    task_repo: Any,
) -> None:
    outside = plant(task_repo.root, task_repo.worktree)
    workspace = Workspace(task_repo.worktree)

    workspace.write_file("hard.txt", "rewritten\n")
    workspace.edit_file("hard.txt", "rewritten", "edited")

    assert (outside / "hard.txt").read_text() == "linked from inside\n"
    assert workspace.read_file("hard.txt") == "edited\n"


def test_search_never_reports_files_outside_or_in_git(task_repo: Any) -> None:
    plant(task_repo.root, task_repo.worktree)
    (task_repo.worktree / "notes.txt").write_text("a secret kept inside\n")

    found = search(task_repo.worktree, "secret|gitdir")

    assert "notes.txt:1: a secret kept inside" in found
    assert "outside" not in found and "gitdir" not in found and ".git" not in found


def test_listing_marks_links_that_lead_out_and_hides_git(task_repo: Any) -> None:
    plant(task_repo.root, task_repo.worktree)
    listing = Workspace(task_repo.worktree).list_dir(".")

    assert "link-out -> (outside the repository)" in listing
    assert "dir-out -> (outside the repository)" in listing
    assert ".git" not in listing and "src/" in listing


def test_paths_that_stay_inside_are_allowed(task_repo: Any) -> None:
    plant(task_repo.root, task_repo.worktree)
    workspace = Workspace(task_repo.worktree)

    assert workspace.read_file("src/../README.md").startswith("# demo")
    assert workspace.read_file("up/t1-a1/README.md").startswith("# demo")
    assert workspace.write_file("~/inside.txt", "x\n") == "wrote 2 bytes to ~/inside.txt"
    assert (task_repo.worktree / "~" / "inside.txt").exists()


def test_a_directory_swapped_for_a_symlink_mid_call_never_lets_a_tool_out(
    task_repo: Any,
) -> None:
    """A thread swaps ``sub`` between a real directory and a symlink to a directory
    outside while the tools read, write, edit, list and search through ``sub`` in a loop:
    each call either works inside or is refused, and nothing outside is read or written."""
    outside = task_repo.root / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET outside\n")
    sub = task_repo.worktree / "sub"
    sub.mkdir()
    (sub / "f.txt").write_text("inside\n")
    real = task_repo.worktree / "sub.real"
    before = task_repo.outside_snapshot()
    workspace = Workspace(task_repo.worktree)
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        # Each step may find the tree changed by a write that made ``sub`` anew.
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(sub, real)
            with contextlib.suppress(OSError):
                os.symlink(outside, sub)
            with contextlib.suppress(OSError):
                if sub.is_symlink():
                    os.unlink(sub)
                else:
                    shutil.rmtree(sub)
            with contextlib.suppress(OSError):
                os.rename(real, sub)
            swaps += 1

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = {"ok": 0, "refused": 0}
    leaked: list[str] = []
    try:
        for attempt in range(300):
            calls: list[Callable[[], object]] = [
                lambda: workspace.read_file("sub/f.txt"),
                lambda a=attempt: workspace.write_file(f"sub/w{a}.txt", "x\n"),
                lambda: workspace.edit_file("sub/f.txt", "inside", "inside"),
                lambda: workspace.list_dir("sub"),
                lambda: search(workspace.root, "S.CRET|inside", "sub"),
            ]
            for call in calls:
                try:
                    answer = call()
                except (ToolError, FileNotFoundError):
                    outcomes["refused"] += 1
                    continue
                outcomes["ok"] += 1
                if "SECRET" in str(answer):
                    leaked.append(str(answer))
    finally:
        stop.set()
        swapper.join()

    assert leaked == []
    assert task_repo.outside_snapshot() == before
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt"]
    assert swaps > 0 and outcomes["ok"] > 0
