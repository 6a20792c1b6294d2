"""Two tasks running at once edit different hunks of one file: both merge, nothing re-runs.

Each task is scoped to its own module but also registers itself in a shared registry
file (as agents do with ``__init__.py`` and the like): the first merges by fast-forward,
the second by a line-level three-way merge, and the integration branch holds both. The
registry edits are outside both tasks' planned scopes, so both completions record that
drift and the mission view shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from dulwich import porcelain

from aether.gitview import create_sample_repository
from aether.stack import Stack
from aether_events import (
    AgentCompleted,
    BranchMerged,
    MergeConflicted,
    MissionCompleted,
    TaskReady,
    TaskRetried,
)
from aether_llm import Responder
from aether_runtime import tls
from tests.e2e.test_mission_flow import submit_and_approve, tree_files
from tests.support import ScriptedModel, finish, write

pytestmark = pytest.mark.e2e

REGISTRY = "".join(f"# slot {i}\n" for i in range(1, 13))
WITH_ALPHA = REGISTRY.replace("# slot 2\n", "from src.alpha import alpha\n")
WITH_BETA = REGISTRY.replace("# slot 11\n", "from src.beta import beta\n")
MERGED = WITH_ALPHA.replace("# slot 11\n", "from src.beta import beta\n")

PLAN = {
    "rationale": "two independent modules",
    "tasks": [
        {
            "id": "a",
            "title": "Write alpha",
            "description": "alpha",
            "files": ["src/alpha.py"],
            "depends_on": [],
            "tier": "small",
        },
        {
            "id": "b",
            "title": "Write beta",
            "description": "beta",
            "files": ["src/beta.py"],
            "depends_on": [],
            "tier": "small",
        },
    ],
}


@pytest.fixture
def shared_repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    create_sample_repository(path)
    (path / "src" / "registry.py").write_text(REGISTRY)
    author = b"Test <test@example.com>"
    with porcelain.open_repo_closing(str(path)) as repo:
        porcelain.add(repo, paths=[str(path / "src" / "registry.py")])
        porcelain.commit(repo, message=b"registry\n", author=author, committer=author)
    return path


@pytest.fixture
def line_model() -> ScriptedModel:
    return ScriptedModel(
        plan=PLAN,
        scripts={
            "a": [
                write("src/alpha.py", "def alpha() -> str:\n    return 'a'\n"),
                write("src/registry.py", WITH_ALPHA),
                finish("wrote alpha"),
            ],
            "b": [
                write("src/beta.py", "def beta() -> str:\n    return 'b'\n"),
                write("src/registry.py", WITH_BETA),
                finish("wrote beta"),
            ],
        },
        # b's agent is still at work when a merges, so b's commit is not on a's.
        delays={"b": 4.0},
    )


@pytest.fixture
def line_stack(
    running: Stack, answer_with: Callable[[Responder], None], line_model: ScriptedModel
) -> Stack:
    """The package's stack, its model answering with this test's plan and scripts (a
    stack of its own was most of the test's time)."""
    answer_with(line_model)
    return running


async def test_parallel_tasks_editing_one_file_merge_line_by_line_without_a_rerun(
    line_stack: Stack, shared_repo: Path
) -> None:
    mission_id, log, nc = await submit_and_approve(line_stack, shared_repo)
    try:
        await log.completion(timeout=120)
    finally:
        await log.stop()
        await nc.close()
    # Both ran at once, once each, and neither conflicted.
    ready = [(e.task.id, e.attempt) for e in log.of_type(TaskReady)]
    assert sorted(ready) == [("a", 1), ("b", 1)]
    assert log.of_type(MergeConflicted) == [] and log.of_type(TaskRetried) == []
    merged = {e.task_id: e for e in log.of_type(BranchMerged)}
    assert merged["a"].fast_forward
    assert not merged["b"].fast_forward
    assert "src/registry.py" in merged["b"].files_changed
    assert merged["b"].lines_merged == ["src/registry.py"]  # the event says how it merged
    assert merged["a"].lines_merged == []
    completed = log.of_type(MissionCompleted)[0]
    files = tree_files(shared_repo, completed.final_sha)
    assert files["src/registry.py"] == MERGED.encode()
    assert {"src/alpha.py", "src/beta.py"} <= set(files)
    # The registry was in neither task's scope: both completions record the drift.
    for done in log.of_type(AgentCompleted):
        assert done.files_outside_scope == ["src/registry.py"]
    async with httpx.AsyncClient(
        verify=tls.shared(), base_url=line_stack.gateway_url, headers=line_stack.auth_headers
    ) as http:
        for _ in range(100):
            shown = (await http.get(f"/missions/{mission_id}")).json()
            if shown.get("status") == "completed":
                break
            await asyncio.sleep(0.1)
    assert {t["task_id"]: t["files_outside_scope"] for t in shown["tasks"]} == {
        "a": ["src/registry.py"],
        "b": ["src/registry.py"],
    }
