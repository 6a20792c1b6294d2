"""What a command leaves in its worktree with its own bits taken off (``chmod 000``,
``300``, ``600`` on a directory it made) against the git broker's removal, pooling and
reuse of that worktree, and the runner's removal of its own trees.

As ``test_disk_watch.py``: the services' user in production is not root (uid 10001), and
root passes over a directory's mode; so, run as root, the broker's work runs in a child
without ``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH``. Before, such a directory stayed
on disk for good once its worktree was removed (``shutil.rmtree(..., ignore_errors=True)``
could not list it), and a pooled worktree holding one could not be checked out again (the
broker's scan of it raised ``PermissionError``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether_git_broker.adapters.git import GitRepositories
from aether_sandbox.trees import remove_tree
from tests.escape.modes import locked_tree_dir, without_root_over_modes

INTEGRATION = "aether/m-l"
LOCKED = {"sealed": 0o000, "write-only": 0o300, "unsearchable": 0o600, "read-only": 0o500}


def _git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def _leave_locked_directories(worktree: Path) -> None:
    """What a command could leave: each directory filled, then its bits taken off."""
    for name, mode in LOCKED.items():
        inner = worktree / name / "deeper"
        inner.mkdir(parents=True)
        (inner / "payload.bin").write_bytes(b"x" * 4096)
        (worktree / name / "top.txt").write_text("left behind\n")
        os.chmod(inner, mode)
        os.chmod(worktree / name, mode)


def _scenario(root: Path) -> dict[str, object]:
    """The broker's removal and pooling of worktrees holding locked directories, as the
    services' user would do them; what was left, by step."""
    repo = root / "project"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "app.py").write_text("print('hi')\n")
    _git(repo, "add", "app.py")
    _git(repo, "commit", "-q", "-m", "first")
    worktrees = root / "worktrees"
    broker = GitRepositories(worktrees_dir=str(worktrees), pool_capacity=2)
    broker.prepare_repository(str(repo), "main", INTEGRATION)

    def workspace(task: str) -> Path:
        outcome = broker.prepare_workspace(
            str(repo), INTEGRATION, f"aether-tasks/m-l/{task}/a1", str(worktrees / "m-l" / task)
        )
        return Path(outcome.worktree_path)

    found: dict[str, object] = {}
    # Removed outright.
    first = workspace("t1")
    _leave_locked_directories(first)
    broker.remove_worktree(str(repo), str(first))
    found["removed"] = first.exists()
    # Pooled, then taken by the next task: the new worktree must hold the tree alone.
    second = workspace("t2")
    _leave_locked_directories(second)
    pooled = broker.recycle_worktree(str(repo), str(second))
    try:
        third = workspace("t3")
    except OSError as error:
        found["reused"] = f"the next checkout failed: {error!r}"
    else:
        found["reused"] = sorted(p.name for p in third.iterdir())
        found["reused_status"] = _git(third, "status", "--porcelain", "--ignored")
    found["pooled"] = pooled
    # A mission's whole directory, and the pool, go.
    fourth = workspace("t4")
    _leave_locked_directories(fourth)
    broker.remove_worktrees_under(str(repo), str(worktrees / "m-l"))
    found["mission_dir"] = (worktrees / "m-l").exists()
    pool_dirs = list((worktrees / ".pool").glob("*/*"))
    for pooled_dir in pool_dirs:
        if pooled_dir.is_dir() and not pooled_dir.name.endswith(".admin"):
            _leave_locked_directories(pooled_dir)
    broker.drop_pool(str(repo))
    found["pool_left"] = [str(p) for p in (worktrees / ".pool").glob("*/*")]
    # The runner's own trees (a clone, a scratch directory, an ACP agent's home).
    scratch = root / "scratch"
    scratch.mkdir()
    _leave_locked_directories(scratch)
    found["scratch"] = not remove_tree(scratch) or scratch.exists()
    return found


def _as_the_services_user(root: Path) -> dict[str, object]:
    if os.geteuid() != 0:
        return _scenario(root)
    found: dict[str, object] = without_root_over_modes(
        "tests.escape.test_worktree_leftovers", str(root)
    )
    return found


@pytest.fixture
def root() -> Iterator[Path]:
    with locked_tree_dir() as directory:
        yield directory


def test_directories_a_command_locked_do_not_outlive_their_worktree(root: Path) -> None:
    found = _as_the_services_user(root)
    assert found["removed"] is False, found
    assert found["mission_dir"] is False, found
    assert found["pool_left"] == [], found
    assert found["scratch"] is False, found


def test_a_pooled_worktree_with_locked_directories_is_reused_clean(root: Path) -> None:
    found = _as_the_services_user(root)
    assert found["pooled"] is True, found
    assert found["reused"] == [".git", "app.py"], found
    assert found["reused_status"] == "", found


def test_remove_tree_removes_a_link_not_what_it_points_at(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    os.chmod(outside / "keep", 0o000)
    tree = tmp_path / "tree"
    (tree / "inner").mkdir(parents=True)
    (tree / "inner" / "link").symlink_to(outside)
    os.chmod(tree / "inner", 0o000)
    assert remove_tree(tree)
    assert not tree.exists()
    assert os.stat(outside / "keep").st_mode & 0o777 == 0  # not followed, not changed
    os.chmod(outside / "keep", 0o700)


def test_remove_tree_survives_directories_nested_thousands_deep(tmp_path: Path) -> None:
    tree = tmp_path / "deep"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY)
    for _ in range(3000):  # past Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    assert remove_tree(tree)
    assert not tree.exists()


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))))
