"""A true conflict is resolved by an agent in a resolution attempt, not by starting over.

Two tasks running at once rewrite the same line of a shared file differently. The first
merges; the second conflicts, and its next attempt starts from its conflicting commit
merged onto the new head with the conflict marked in the file, and a prompt that names the
other task and its summary. The (scripted) agent resolves the markers keeping both lines,
the resolution merges, and the integration branch holds both tasks' intent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether.stack import Stack
from aether_events import (
    BranchMerged,
    MergeConflicted,
    MissionCompleted,
    TaskReady,
    WorkspaceReady,
)
from aether_llm import Reply, Responder, tool_use_block
from tests.e2e.test_line_merge import PLAN, REGISTRY, shared_repo
from tests.e2e.test_mission_flow import submit_and_approve, tree_files
from tests.support import ScriptedModel, _first_user_text, finish, tool_results, write

pytestmark = pytest.mark.e2e
__all__ = ["shared_repo"]  # the fixture, shared with the line-merge test

WITH_ALPHA = REGISTRY.replace("# slot 2\n", "from src.alpha import alpha\n")
WITH_BETA = REGISTRY.replace("# slot 2\n", "from src.beta import beta\n")
RESOLVED = REGISTRY.replace(
    "# slot 2\n", "from src.alpha import alpha\nfrom src.beta import beta\n"
)


class BetaAgent:
    """Task b: writes its module and its registry line; when asked to resolve a conflict,
    reads the marked registry and keeps both lines."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.seen: list[str] = []

    def turn(self, number: int) -> Any:
        def reply(request: dict[str, Any]) -> Reply:
            prompt = _first_user_text(request)
            resolving = "Resolve every marked conflict" in prompt
            if number == 0:
                self.prompts.append(prompt)
            if not resolving:
                steps = [
                    write("src/beta.py", "def beta() -> str:\n    return 'b'\n"),
                    write("src/registry.py", WITH_BETA),
                    finish("wrote beta"),
                ]
                return steps[number](request)
            if number == 0:
                return Reply(
                    [tool_use_block("read_file", {"path": "src/registry.py"})], "tool_use", 50, 10
                )
            if number == 1:
                self.seen.extend(tool_results(request))
                return write("src/registry.py", RESOLVED)(request)
            return finish("kept both imports")(request)

        return reply


@pytest.fixture
def beta() -> BetaAgent:
    return BetaAgent()


@pytest.fixture
def resolving_model(beta: BetaAgent) -> ScriptedModel:
    return ScriptedModel(
        plan=PLAN,
        scripts={
            "a": [
                write("src/alpha.py", "def alpha() -> str:\n    return 'a'\n"),
                write("src/registry.py", WITH_ALPHA),
                finish("registered alpha"),
            ],
            "b": [beta.turn(0), beta.turn(1), beta.turn(2)],
        },
        delays={"b": 4.0},
    )


@pytest.fixture
def resolving_stack(
    running: Stack, answer_with: Callable[[Responder], None], resolving_model: ScriptedModel
) -> Stack:
    """The package's stack, its model answering with this test's plan and scripts (a
    stack of its own was most of the test's time)."""
    answer_with(resolving_model)
    return running


async def test_a_true_conflict_is_resolved_by_a_resolution_attempt(
    resolving_stack: Stack, shared_repo: Path, beta: BetaAgent
) -> None:
    _, log, nc = await submit_and_approve(resolving_stack, shared_repo)
    try:
        await log.completion(timeout=180)
    finally:
        await log.stop()
        await nc.close()
    [conflict] = log.of_type(MergeConflicted)
    assert conflict.task_id == "b" and conflict.files == ["src/registry.py"]
    first = next(e for e in log.of_type(TaskReady) if e.task.id == "b" and e.attempt == 1)
    retry = next(e for e in log.of_type(TaskReady) if e.task.id == "b" and e.attempt == 2)
    assert first.resolve_sha is None
    assert retry.resolve_sha is not None
    workspace = next(e for e in log.of_type(WorkspaceReady) if e.task.id == "b" and e.attempt == 2)
    assert workspace.resolve_sha == retry.resolve_sha
    assert workspace.conflicted_files == ["src/registry.py"]
    # The prompt named the other task and its summary; the file held both sides, marked.
    resolution_prompt = beta.prompts[-1]
    assert "task a (Write alpha): registered alpha" in resolution_prompt
    assert any(
        "<<<<<<< ours" in seen
        and "from src.alpha import alpha" in seen
        and "from src.beta import beta" in seen
        for seen in beta.seen
    )
    merged = {(e.task_id, e.attempt): e.resolution for e in log.of_type(BranchMerged)}
    assert merged == {("a", 1): False, ("b", 2): True}  # the merge says it resolved one
    completed = log.of_type(MissionCompleted)[0]
    files = tree_files(shared_repo, completed.final_sha)
    assert files["src/registry.py"] == RESOLVED.encode()
    assert {"src/alpha.py", "src/beta.py"} <= set(files)
