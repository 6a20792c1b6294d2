"""The offline model working a task through the real tool box on a real worktree: it
adds, marks what it adds, and never removes content it did not write."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from aether_agent_runner.adapters.tools import FINISH, ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_llm.offline import MARK, respond, split_requirement

from .conftest import QUICK_PYTEST


async def work(worktree: Path, requirement: str) -> tuple[list[str], str]:
    """Run the offline model on the first task planned from ``requirement`` until it
    finishes; return the tools it called and its summary."""
    task = split_requirement(requirement)[0]
    toolbox = ToolBox(Workspace(worktree), None)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": f"<task>{json.dumps(task)}</task>"}
    ]
    called: list[str] = []
    for _ in range(6):
        request = {"tools": toolbox.definitions(), "messages": messages}
        reply = respond(request)
        messages.append({"role": "assistant", "content": reply.content})
        results = []
        for block in reply.content:
            if block.get("type") != "tool_use":
                continue
            called.append(f"{block['name']} {block['input'].get('path', '')}".strip())
            if block["name"] == FINISH:
                return called, block["input"]["summary"]
            result = await toolbox.call(block["name"], block["input"])
            entry = {"type": "tool_result", "tool_use_id": block["id"], "content": result.content}
            if result.is_error:
                entry["is_error"] = True
            results.append(entry)
        messages.append({"role": "user", "content": results})
    raise AssertionError(f"the offline model did not finish: {called}")


def git_diff_deleted_lines(worktree: Path) -> list[str]:
    diff = subprocess.run(
        ["git", "-C", str(worktree), "diff", "--unified=0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")
    ]


async def test_existing_files_keep_their_content_and_gain_a_marked_section(task_repo: Any):
    worktree: Path = task_repo.worktree
    before = {p: (worktree / p).read_text() for p in ("src/app.py", "tests/test_app.py")}
    (worktree / "data.json").write_text('{"keep": true}\n')
    called, summary = await work(
        worktree,
        "- Make src/app.py friendlier, cover it in tests/test_app.py, note it in data.json "
        "and in docs/greeting.md",
    )
    assert called[:4] == [
        "read_file src/app.py",
        "read_file tests/test_app.py",
        "read_file data.json",
        "read_file docs/greeting.md",
    ]
    assert git_diff_deleted_lines(worktree) == []  # not one line removed
    for path, content in before.items():
        now = (worktree / path).read_text()
        assert now.startswith(content)
        assert MARK in now[len(content) :]
        assert all(line.startswith("#") for line in now[len(content) :].split("\n") if line)
    assert (worktree / "data.json").read_text() == '{"keep": true}\n'  # no comment syntax
    assert "write_file data.json" not in called
    assert "offline model" in (worktree / "docs" / "greeting.md").read_text()
    assert "no intelligence" in summary
    # The code still runs: its test passes with the appended comments.
    ran = subprocess.run(
        [*QUICK_PYTEST.split(), "-p", "no:cacheprovider", "tests/test_app.py"],
        cwd=worktree,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr


async def test_a_file_it_cannot_read_whole_is_left_alone(task_repo: Any):
    worktree: Path = task_repo.worktree
    big = "".join(f"line {n:06d}\n" for n in range(20_000))
    (worktree / "big.txt").write_text(big)
    called, _ = await work(worktree, "- Summarise big.txt")
    assert (worktree / "big.txt").read_text() == big
    assert called == ["read_file big.txt", "write_file notes/t1-offline.md", "finish"]
    assert "left big.txt unchanged" in (worktree / "notes" / "t1-offline.md").read_text()
