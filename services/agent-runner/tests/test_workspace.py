"""The agent's file tools stay inside the worktree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aether_agent_runner.workspace import ToolError, Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    root = tmp_path / "wt"
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "a.py").write_text("print('a')\n")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link-out")
    os.symlink(tmp_path, root / "dir-out")
    return Workspace(root)


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "/etc/passwd",
        "src/../../secret.txt",
        "link-out",
        "dir-out/secret.txt",
        ".git/config",
        ".git",
        "",
        "a\x00b",
    ],
)
def test_escapes_are_refused(workspace: Workspace, path: str) -> None:
    with pytest.raises(ToolError):
        workspace.read_file(path)
    with pytest.raises(ToolError):
        workspace.write_file(path, "x")
    assert (workspace.root.parent / "secret.txt").read_text() == "secret"


def test_write_then_read_inside(workspace: Workspace) -> None:
    workspace.write_file("pkg/new.py", "x = 1\n")
    assert workspace.read_file("pkg/new.py") == "x = 1\n"
    assert workspace.changed == ["pkg/new.py"]
    assert "pkg/" in workspace.list_dir(".") and ".git" not in workspace.list_dir(".")
