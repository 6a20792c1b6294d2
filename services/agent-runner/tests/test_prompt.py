"""The repository map the agent is shown."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

from aether_agent_runner.adapters import git as git_module
from aether_agent_runner.adapters.git import GitDir, forget_trees, tree_listing
from aether_agent_runner.adapters.search import SKIPPED_DIRECTORIES
from aether_agent_runner.runtimes.prompt import map_text, repository_map


def _tree(root: Path) -> None:
    for path in ["README.md", "src/app.py", "src/pkg/deep/mod.py", "b.txt", "node_modules/x.js"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x\n")
    (root / ".git").write_text("gitdir: elsewhere\n")
    (root / "src" / "link").symlink_to(root / "src" / "pkg")


def test_the_map_lists_paths_relative_to_the_root_however_the_root_is_spelled(
    tmp_path: Path,
) -> None:
    root = tmp_path / "wt"
    _tree(root)
    # A link to a directory is neither entered nor listed.
    expected = "\n".join(["README.md", "b.txt", "src/app.py", "src/pkg/deep/mod.py"])
    assert repository_map(root) == expected
    assert repository_map(Path(str(root) + "/")) == expected
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert repository_map(Path("wt")) == expected
        assert repository_map(Path("./wt")) == expected
    finally:
        os.chdir(here)


def test_the_map_stops_at_its_limit_and_says_how_many_more(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert repository_map(tmp_path, limit=2) == "README.md\nb.txt\n[… and 2 more files]"
    assert repository_map(tmp_path / "node_modules") == "x.js"


def _committed(tmp_path: Path, files: list[str]) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    run = functools.partial(subprocess.run, cwd=repo, check=True, capture_output=True)
    if not (repo / ".git").exists():
        run(["git", "init", "-q", "-b", "main"])
    for path in files:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x\n")
    run(["git", "add", "-f", "."])
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"])
    sha = run(["git", "rev-parse", "HEAD"], text=True).stdout.strip()
    return repo, sha


@pytest.mark.parametrize("limit", [300, 7, 1, 0])
def test_a_trees_listing_is_the_map_of_its_checkout(tmp_path: Path, limit: int) -> None:
    files = [
        "README.md",
        "b.txt",
        "Z.txt",
        "src/app.py",
        "src/pkg/deep/mod.py",
        "src/pkg/a.py",
        "src/zeta/z.py",
        "src/__pycache__/app.cpython-311.pyc",
        "node_modules/x.js",
        "docs/ü.md",
        "docs/u.md",
        "a-b/c.txt",
        "a/b.txt",
        "a.c/d.txt",
    ]
    repo, first = _committed(tmp_path, files)
    forget_trees()
    repo_git = GitDir.clone(repo, "main")
    listing = tree_listing(repo_git, first, limit, SKIPPED_DIRECTORIES)
    assert map_text(*listing) == repository_map(repo, limit=limit)
    # The next commit's listing, most of it from the first one's directories.
    (repo / "b.txt").unlink()
    repo, second = _committed(tmp_path, ["src/pkg/new.py", "docs/v.md"])
    listing = tree_listing(repo_git, second, limit, SKIPPED_DIRECTORIES)
    assert map_text(*listing) == repository_map(repo, limit=limit)


def test_the_listings_kept_are_bounded_by_the_paths_they_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, sha = _committed(tmp_path, [f"d{i}/sub/f{j}.txt" for i in range(20) for j in range(5)])
    forget_trees()
    monkeypatch.setattr(git_module, "_LISTINGS_KEPT", 50)
    listing = tree_listing(GitDir.clone(repo, "main"), sha, 3, SKIPPED_DIRECTORIES)
    assert map_text(*listing) == repository_map(repo, limit=3)
    held = sum(len(paths) + 1 for paths, _ in git_module._LISTINGS.values())
    assert held == git_module._listings_held
    assert len(git_module._LISTINGS) > 1 and held <= 50
