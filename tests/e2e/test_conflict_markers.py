"""A resolution attempt that leaves the conflict markers in is not merged.

Two tasks running at once rewrite the same line of a shared file differently: the first
merges, the second conflicts, and its resolution attempt starts with the conflict marked
in the file. The (scripted) agent of that attempt writes something else and finishes
with the markers still there: the git broker refuses the commit, naming the file and the
line, and the integration branch does not move. The next attempt, told why, writes the
file without markers, and that one merges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether.stack import Stack
from aether_events import BranchMerged, MergeConflicted, MissionCompleted
from aether_llm import Reply, Responder
from tests.e2e.test_conflict_resolution import RESOLVED, WITH_ALPHA, WITH_BETA
from tests.e2e.test_line_merge import PLAN, shared_repo
from tests.e2e.test_mission_flow import submit_and_approve, tree_files
from tests.support import ScriptedModel, _first_user_text, finish, write

pytestmark = pytest.mark.e2e
__all__ = ["shared_repo"]  # the fixture, shared with the line-merge test

LEFT = "conflict markers left in 1 file(s): src/registry.py:2"


class CarelessAgent:
    """Task b: writes its module and its registry line; in its resolution attempt it
    leaves the markers where they are; told they were left, it writes the file whole."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def turn(self, number: int) -> Any:
        def reply(request: dict[str, Any]) -> Reply:
            prompt = _first_user_text(request)
            if number == 0:
                self.prompts.append(prompt)
            if LEFT in prompt:
                steps = [
                    write("src/beta.py", "def beta() -> str:\n    return 'b'\n"),
                    write("src/registry.py", RESOLVED),
                    finish("kept both imports, no markers"),
                ]
            elif "Resolve every marked conflict" in prompt:
                steps = [
                    write("src/notes.txt", "looked at the registry\n"),
                    finish("left the registry as it was"),
                    finish("done"),
                ]
            else:
                steps = [
                    write("src/beta.py", "def beta() -> str:\n    return 'b'\n"),
                    write("src/registry.py", WITH_BETA),
                    finish("wrote beta"),
                ]
            return steps[number](request)

        return reply


@pytest.fixture
def careless() -> CarelessAgent:
    return CarelessAgent()


@pytest.fixture
def careless_stack(
    running: Stack, answer_with: Callable[[Responder], None], careless: CarelessAgent
) -> Stack:
    """The package's stack, its model answering with this test's plan and scripts."""
    answer_with(
        ScriptedModel(
            plan=PLAN,
            scripts={
                "a": [
                    write("src/alpha.py", "def alpha() -> str:\n    return 'a'\n"),
                    write("src/registry.py", WITH_ALPHA),
                    finish("registered alpha"),
                ],
                "b": [careless.turn(0), careless.turn(1), careless.turn(2)],
            },
            delays={"b": 4.0},
        )
    )
    return running


async def test_a_resolution_that_leaves_conflict_markers_is_refused_and_tried_again(
    careless_stack: Stack, shared_repo: Path, careless: CarelessAgent
) -> None:
    _, log, nc = await submit_and_approve(careless_stack, shared_repo)
    try:
        await log.completion(timeout=240)
    finally:
        await log.stop()
        await nc.close()
    conflicts = {(e.task_id, e.attempt): e for e in log.of_type(MergeConflicted)}
    assert set(conflicts) == {("b", 1), ("b", 2)}
    assert conflicts["b", 1].files == ["src/registry.py"]  # the true conflict
    refused = conflicts["b", 2]
    # Reported like a failed verification: no files to resolve, the reason with the place.
    assert refused.files == [] and refused.detail.startswith(LEFT), refused.detail
    assert refused.integration_sha == conflicts["b", 1].integration_sha  # nothing moved
    # The next attempt was told where the markers were, and its commit merged.
    assert any(LEFT in prompt for prompt in careless.prompts)
    merged = {(e.task_id, e.attempt) for e in log.of_type(BranchMerged)}
    assert merged == {("a", 1), ("b", 3)}
    completed = log.of_type(MissionCompleted)[0]
    files = tree_files(shared_repo, completed.final_sha)
    assert files["src/registry.py"] == RESOLVED.encode()
    assert "src/notes.txt" not in files
    assert not any(b"<<<<<<<" in content for content in files.values())
