"""Real repositories built with the git CLI (the broker itself never runs git)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.gitdaemon import bare_copy
from tests.sshd import SshServer, ssh_server

_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def run_git(cwd: Path | str, *args: str) -> str:
    """Run git in ``cwd`` and return its stripped standard output."""
    result = subprocess.run(
        ["git", "-C", str(cwd), *args], env=_ENV, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


def write_and_commit(cwd: Path | str, files: dict[str, str | None], message: str) -> str:
    """Write (or, for ``None``, delete) files in a checkout, commit them, return the sha."""
    for name, content in files.items():
        path = Path(cwd) / name
        if content is None:
            run_git(cwd, "rm", "-q", name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        run_git(cwd, "add", name)
    run_git(cwd, "commit", "-q", "-m", message)
    return run_git(cwd, "rev-parse", "HEAD")


@pytest.fixture
def git() -> Callable[..., str]:
    """``git(cwd, *args)``: run the git CLI, return its output."""
    return run_git


@pytest.fixture
def commit() -> Callable[..., str]:
    """``commit(cwd, {path: content or None}, message)``: commit files, return the sha."""
    return write_and_commit


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on ``main`` with a README, a module and a nested file."""
    path = tmp_path / "repo"
    path.mkdir()
    run_git(path, "init", "-q", "-b", "main")
    write_and_commit(
        path,
        {
            "README.md": "# demo\n",
            "app/main.py": "print('hello')\n",
            "app/util.py": "def util():\n    return 1\n",
        },
        "initial commit",
    )
    return path


@pytest.fixture
def worktrees_dir(tmp_path: Path) -> Path:
    path = tmp_path / "worktrees"
    path.mkdir()
    return path.resolve()


@pytest.fixture
def project(repo: Path) -> Path:
    """``repo`` with nested directories and ignore rules (what the pool's reuse looks
    past)."""
    write_and_commit(
        repo,
        {
            ".gitignore": "*.log\nbuild/\n__pycache__/\n",
            "docs/api/index.md": "api\n",
            "docs/guide.md": "guide\n",
            "lib/deep/er/x.py": "x = 1\n",
            "lib/y.py": "y = 1\n",
        },
        "a project of nested directories",
    )
    return repo


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server for the session (skipped without one, except on CI)."""
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def upstream(repo: Path, tmp_path: Path) -> Path:
    """A bare copy of ``repo`` on the SSH server, its default branch ``trunk``."""
    run_git(repo, "branch", "trunk", "main")
    served = tmp_path / "served"
    served.mkdir()
    return bare_copy(repo, served, "upstream.git", head="trunk")
