"""Chained tasks through the broker's pool, for the tests of reusing a pooled worktree
by the agent runner's claim (``test_pool_written.py``, ``test_pool_scanned.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aether_git_broker.adapters import checkout as checkout_module
from aether_git_broker.adapters import worktrees as worktrees_module
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.domain import WorkspaceOutcome

MISSION = "m-w"
INTEGRATION = f"aether/{MISSION}"


def workspace(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, task: str
) -> WorkspaceOutcome:
    """The task's workspace at the integration head (from the pool when it has one)."""
    return broker.prepare_workspace(
        str(repo),
        INTEGRATION,
        f"aether-tasks/{MISSION}/{task}/a1",
        str(worktrees_dir / MISSION / task),
    )


def merge(broker: GitRepositories, repo: Path, base: str, task: str, sha: str) -> str:
    """The task's commit merged into the integration branch; its new head."""
    merged = broker.merge(
        str(repo),
        INTEGRATION,
        since_sha=base,
        mission_id=MISSION,
        task_id=task,
        attempt=1,
        commit_sha=sha,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert merged.kind in ("merged", "fast_forward"), merged
    return merged.sha


def reuses(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """What each reuse of a pooled worktree answers from now on (``None``: left to the
    whole checkout), in order."""
    answers: list[int | None] = []
    reuse = worktrees_module.reuse_on_the_ways

    def recorded(*args: object) -> int | None:
        answers.append(reuse(*args))  # type: ignore[arg-type]
        return answers[-1]

    monkeypatch.setattr(worktrees_module, "reuse_on_the_ways", recorded)
    return answers


def no_whole_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, a checkout that would look at every file of a worktree fails."""
    scan = checkout_module._scan

    def scanned(root: bytes, passed: object = None, enters: object = None) -> object:
        if enters is None:
            raise AssertionError("the whole worktree was scanned")
        return scan(root, passed, enters)  # type: ignore[arg-type]

    monkeypatch.setattr(checkout_module, "_scan", scanned)
