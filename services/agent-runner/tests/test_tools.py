"""The file tools, search and the tool box, on a real worktree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.search import search
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import MAX_READ_CHARS, ToolError, Workspace


@pytest.fixture
def ws(task_repo: Any) -> Workspace:
    return Workspace(task_repo.worktree)


def test_whole_file_is_returned_exactly(ws: Workspace) -> None:
    assert ws.read_file("README.md") == "# demo\n\nA small project.\n"


def test_line_range_is_shown_with_where_it_is(ws: Workspace) -> None:
    assert ws.read_file("src/app.py", 2, 3) == (
        '    return "Hello, " + name\n\n[lines 2-3 of 6; read on with start_line=4]'
    )
    assert ws.read_file("src/app.py", 5).endswith("[lines 5-6 of 6]")


def test_an_impossible_range_says_how_long_the_file_is(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="it has 6 lines"):
        ws.read_file("src/app.py", 40, 50)


def test_a_long_file_is_cut_at_a_line_with_a_note(ws: Workspace) -> None:
    ws.write_file("big.txt", "".join(f"line {n:06d}\n" for n in range(20_000)))
    shown = ws.read_file("big.txt")
    assert len(shown) <= MAX_READ_CHARS + 100
    assert shown.splitlines()[-1].startswith("[lines 1-") and "start_line=" in shown


def test_binary_files_are_not_shown(ws: Workspace, task_repo: Any) -> None:
    (task_repo.worktree / "logo.png").write_bytes(b"\x89PNG\x00\x00data")
    with pytest.raises(ToolError, match="binary"):
        ws.read_file("logo.png")


def test_edit_replaces_exactly_one_occurrence(ws: Workspace, task_repo: Any) -> None:
    result = ws.edit_file("src/app.py", '"Hello, "', '"Hello there, "')
    assert result == "replaced 1 occurrence in src/app.py (from line 2)"
    assert '"Hello there, " + name' in (task_repo.worktree / "src/app.py").read_text()
    assert ws.changed == ["src/app.py"]


def test_edit_with_missing_text_says_so_and_changes_nothing(ws: Workspace, task_repo: Any) -> None:
    before = (task_repo.worktree / "src/app.py").read_text()
    with pytest.raises(ToolError, match=r"old_text was not found in src/app\.py"):
        ws.edit_file("src/app.py", "def wave(name):", "def wave(person):")
    assert (task_repo.worktree / "src/app.py").read_text() == before
    assert ws.changed == []


def test_edit_points_at_whitespace_differences(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="without its leading/trailing whitespace occurs at line 2"):
        ws.edit_file("src/app.py", 'return "Hello, " + name  \n', "x")


def test_ambiguous_edit_lists_where_the_text_occurs(ws: Workspace) -> None:
    with pytest.raises(ToolError, match=r"occurs 2 times in src/app.py \(at lines 1, 6\)"):
        ws.edit_file("src/app.py", "greet(", "welcome(")


def test_replace_all_changes_every_occurrence(ws: Workspace, task_repo: Any) -> None:
    assert ws.edit_file("src/app.py", "greet(", "welcome(", replace_all=True).startswith(
        "replaced 2 occurrences"
    )
    assert "greet" not in (task_repo.worktree / "src/app.py").read_text()


def test_edit_keeps_windows_line_endings(ws: Workspace, task_repo: Any) -> None:
    (task_repo.worktree / "win.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    ws.edit_file("win.txt", "one\ntwo\n", "1\n2\n")
    assert (task_repo.worktree / "win.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [("", "x", "old_text is empty"), ("greet", "greet", "nothing would change")],
)
def test_pointless_edits_are_refused(ws: Workspace, old: str, new: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        ws.edit_file("src/app.py", old, new)


def test_write_keeps_an_existing_files_mode(ws: Workspace, task_repo: Any) -> None:
    script = task_repo.worktree / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    ws.write_file("run.sh", "#!/bin/sh\necho hi\n")
    assert os.stat(script).st_mode & 0o777 == 0o755


def test_delete_removes_files_and_only_empty_directories(ws: Workspace, task_repo: Any) -> None:
    assert ws.delete_file("README.md") == "deleted README.md"
    assert not (task_repo.worktree / "README.md").exists()
    with pytest.raises(ToolError, match="not empty"):
        ws.delete_file("src")
    with pytest.raises(ToolError, match="does not exist"):
        ws.delete_file("README.md")
    with pytest.raises(ToolError, match="root cannot be deleted"):
        ws.delete_file(".")


def test_list_dir_goes_as_deep_as_asked(ws: Workspace) -> None:
    assert ws.list_dir(".") == "README.md\nsrc/\ntests/"
    assert ws.list_dir(".", depth=2) == "README.md\nsrc/\n  app.py\ntests/\n  test_app.py"


def test_search_reports_file_line_and_text(task_repo: Any) -> None:
    found = search(task_repo.worktree, r"def \w+\(name\)", glob="*.py")
    assert found.splitlines() == [
        "2 matches in 1 file(s)",
        "src/app.py:1: def greet(name):",
        "src/app.py:5: def shout(name):",
    ]


def test_search_output_is_bounded(task_repo: Any) -> None:
    (task_repo.worktree / "many.txt").write_text("needle\n" * 1000)
    found = search(task_repo.worktree, "needle", max_matches=50)
    assert found.splitlines()[0] == (
        "1000 matches in 1 file(s); showing the first 50 (narrow the pattern, path or glob)"
    )
    assert len(found.splitlines()) == 51


def test_search_with_a_bad_pattern_explains(task_repo: Any) -> None:
    with pytest.raises(ToolError, match="invalid regular expression"):
        search(task_repo.worktree, "def (")


async def test_a_runaway_search_is_stopped(task_repo: Any) -> None:
    (task_repo.worktree / "trap.txt").write_text("a" * 40 + "!\n")
    box = ToolBox(Workspace(task_repo.worktree), None, search_timeout_seconds=1.0)
    result = await box.call("search", {"pattern": "(a+)+$"})
    assert result.is_error and "took longer than 1 s and was stopped" in result.content


async def test_tool_box_search_runs_in_a_child_process(task_repo: Any) -> None:
    box = ToolBox(Workspace(task_repo.worktree), None)
    result = await box.call("search", {"pattern": "Hello", "path": "src"})
    assert not result.is_error
    assert result.content.endswith('src/app.py:2:     return "Hello, " + name')


async def test_tool_box_turns_refusals_into_error_results(task_repo: Any) -> None:
    box = ToolBox(Workspace(task_repo.worktree), None)
    result = await box.call("read_file", {"path": "../../etc/passwd"})
    assert result.is_error and "outside the repository" in result.content
    unknown = await box.call("format_disk", {})
    assert unknown.is_error and "there is no tool 'format_disk'" in unknown.content


# Each series the test below reads: its sample's name and labels.
_SERIES: list[tuple[str, dict[str, str]]] = [
    ("aether_agent_tool_duration_seconds_count", {"tool": "write_file"}),
    ("aether_agent_tool_duration_seconds_count", {"tool": "unknown"}),
    ("aether_agent_tool_calls_total", {"tool": "write_file", "outcome": "ok"}),
    ("aether_agent_tool_calls_total", {"tool": "unknown", "outcome": "refused"}),
]


def _samples() -> list[float]:
    return [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in _SERIES]


async def test_a_tool_call_is_timed_and_counted_under_its_tool_and_a_made_up_name_as_unknown(
    task_repo: Any,
) -> None:
    """Every call is timed by tool; a name the model made up is counted and timed as
    ``unknown``, never as a label of its own (a hostile model would grow the metrics
    without bound, one series per name)."""
    box = ToolBox(Workspace(task_repo.worktree), None)
    made_up = "tool-7f3a9c"
    before = _samples()

    wrote = await box.call("write_file", {"path": "timed.txt", "content": "t"})
    unknown = await box.call(made_up, {"path": "x"})

    assert not wrote.is_error and unknown.is_error
    assert [after - earlier for after, earlier in zip(_samples(), before, strict=True)] == [1] * 4
    assert made_up not in generate_latest(REGISTRY).decode()


async def test_run_command_is_only_offered_when_programs_are_allowed(task_repo: Any) -> None:
    none = ToolBox(Workspace(task_repo.worktree), CommandPolicy(allowed=()))
    some = ToolBox(Workspace(task_repo.worktree), CommandPolicy(allowed=("python",)))
    assert "run_command" not in [t["name"] for t in none.definitions()]
    assert "run_command" in [t["name"] for t in some.definitions()]
    refused = await none.call("run_command", {"command": "python -V"})
    assert refused.is_error


def test_workspace_resolves_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    ws = Workspace(tmp_path / "alias")
    ws.write_file("a.txt", "a")
    assert (real / "a.txt").read_text() == "a"
