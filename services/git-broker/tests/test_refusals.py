"""Missions the broker refuses: the handler on real repositories, publishing through the
in-memory publisher (held to JetStream's by ``tests/contracts/test_publisher.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aether_events import MissionFailed, MissionRequested, RepositoryPrepared, new_event_id
from aether_events.testing import InMemoryPublisher
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.domain import BrokerState, evolve
from aether_git_broker.handlers import Handlers
from aether_git_broker.naming import Naming
from aether_runtime import Delivery, Projection

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def meta(mission_id: str) -> dict[str, object]:
    return {
        "event_id": new_event_id(),
        "mission_id": mission_id,
        "occurred_at": NOW,
        "correlation_id": "corr-1",
    }


async def refused(
    worktrees_dir: Path, request: MissionRequested
) -> tuple[MissionFailed, InMemoryPublisher]:
    """Handle ``request`` as the broker would; the one MissionFailed it published."""
    publisher = InMemoryPublisher()
    handlers = Handlers(
        Projection(BrokerState(), evolve),
        GitRepositories(),
        Naming(branch_prefix="aether", worktrees_dir=str(worktrees_dir)),
        publisher=lambda: publisher,
        clock=lambda: NOW,
        remotes=Remotes(str(worktrees_dir.parent / "data")),
    )
    await handlers.handle(request, Delivery(sequence=1, num_delivered=1, pending=0))
    (failed,) = publisher.of(MissionFailed)
    return failed, publisher


@pytest.mark.parametrize(
    ("repository", "reason"),
    [
        ("http://127.0.0.1:9/org/repo.git", "could not fetch from http://127.0.0.1:9/org/repo.git"),
        ("{tmp}/not-a-repo", "is not a git repository"),
        ("{tmp}/missing", "does not exist"),
        ("relative/repo", "is not an absolute path"),
        ("--upload-pack=touch {tmp}/pwned", "starts with '-'"),
        ("ext::sh -c touch% {tmp}/pwned", "is not an absolute path"),
        ("https://example.com/$(touch {tmp}/pwned).git", "'$'"),
        ("{tmp}/repo\nmain", "control character"),
        ("{tmp}/../etc", "'..'"),
        ("ssh://-oProxyCommand=touch%20{tmp}/pwned/repo", "invalid host"),
    ],
)
async def test_an_unusable_repository_fails_the_mission(
    tmp_path: Path, worktrees_dir: Path, repository: str, reason: str
) -> None:
    (tmp_path / "not-a-repo").mkdir()
    request = MissionRequested(
        **meta("m-bad"), repository=repository.format(tmp=tmp_path), requirement="x"
    )
    failed, published = await refused(worktrees_dir, request)
    assert reason in failed.reason
    assert failed.causation_id == request.event_id
    assert published.of(RepositoryPrepared) == []
    assert not (tmp_path / "pwned").exists()


async def test_a_missing_base_branch_fails_the_mission(repo: Path, worktrees_dir: Path) -> None:
    failed, _ = await refused(
        worktrees_dir,
        MissionRequested(
            **meta("m-nobase"), repository=str(repo), requirement="x", base_branch="develop"
        ),
    )
    assert "base branch 'develop' does not exist" in failed.reason


@pytest.mark.parametrize(
    ("base_branch", "reason"),
    [
        ("--upload-pack=touch pwned", "starts with '-'"),
        ("main\nother", "control character"),
        ("../../etc/passwd", "'..'"),
        ("refs/../../x", "'..'"),
        ("$(touch pwned)", "contains a space"),
        ("$(id)", "does not exist"),
        ("main.lock", "'.lock'"),
    ],
)
async def test_a_base_branch_that_could_inject_or_does_not_exist_fails_the_mission(
    repo: Path, worktrees_dir: Path, base_branch: str, reason: str
) -> None:
    failed, published = await refused(
        worktrees_dir,
        MissionRequested(
            **meta("m-badref"), repository=str(repo), requirement="x", base_branch=base_branch
        ),
    )
    assert reason in failed.reason
    assert published.of(RepositoryPrepared) == []
    assert not (repo / "pwned").exists()
