"""The repository map the agent is shown."""

from __future__ import annotations

import os
from pathlib import Path

from aether_agent_runner.runtimes.prompt import repository_map


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
