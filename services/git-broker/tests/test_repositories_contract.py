"""The contract of the ``Repositories`` port, held by the real adapter and the fake.

Every test runs twice: against ``GitRepositories`` on real repositories made with the git
CLI in a temporary directory, and against ``aether_git_broker.testing.InMemoryRepositories``.
A handler test on the fake may rely on what is asserted here, and only on that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aether_git_broker.adapters.git import GitRepositories, RepositoryError
from aether_git_broker.domain import MergeOutcome
from aether_git_broker.ports import Repositories
from aether_git_broker.testing import InMemoryRepositories

NOW = datetime(2026, 11, 30, tzinfo=UTC)
M = "m-contract"
INTEGRATION = f"aether/{M}"
FILES = {
    "README.md": "# demo\n",
    "app/main.py": "print('hello')\n",
    "app/util.py": "def util():\n    return 1\n",
}


@dataclass
class World:
    """The port under test, and the hands of the people and agents around it."""

    repos: Repositories
    new_repository: Callable[[], str]
    # (repository, branch, files): a person commits on a checked-out ``main``.
    commit_on_main: Callable[[str, Mapping[str, str | None]], str]
    # (worktree, files): an agent commits in its worktree.
    commit_in: Callable[[str, Mapping[str, str | None]], str]
    files: Callable[[str, str], dict[str, str]]
    has_branch: Callable[[str, str], bool]
    worktrees: Path


@pytest.fixture(params=["in-memory", "git"])
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    git: Callable[..., str],
    commit: Callable[..., str],
) -> World:
    worktrees = tmp_path / "worktrees"
    worktrees.mkdir()
    if request.param == "in-memory":
        fake = InMemoryRepositories()

        def new_fake() -> str:
            fake.add_repository(str(tmp_path / "repo"), FILES)
            return str(tmp_path / "repo")

        return World(
            repos=fake,
            new_repository=new_fake,
            commit_on_main=lambda path, files: fake.commit_on(path, "main", files),
            commit_in=fake.commit_in,
            files=fake.files,
            has_branch=fake.has_branch,
            worktrees=worktrees,
        )

    def new_repository() -> str:
        path = tmp_path / "repo"
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        commit(path, dict(FILES), "initial commit")
        return str(path)

    def files(path: str, branch: str) -> dict[str, str]:
        names = git(path, "ls-tree", "-r", "--name-only", branch).splitlines()
        return {name: git(path, "show", f"{branch}:{name}") + "\n" for name in names}

    def has_branch(path: str, branch: str) -> bool:
        return branch in git(path, "branch", "--format=%(refname:short)").splitlines()

    return World(
        repos=GitRepositories(),
        new_repository=new_repository,
        commit_on_main=lambda path, changes: commit(path, dict(changes), "by hand"),
        commit_in=lambda worktree, changes: commit(worktree, dict(changes), "by the agent"),
        files=files,
        has_branch=has_branch,
        worktrees=worktrees,
    )


def workspace(world: World, path: str, task: str) -> tuple[str, str]:
    """Prepare task ``task``'s workspace; its (branch, worktree)."""
    branch, worktree = f"aether-tasks/{M}/{task}/a1", str(world.worktrees / M / f"{task}-a1")
    world.repos.prepare_workspace(path, INTEGRATION, branch, worktree)
    return branch, worktree


def merge(world: World, path: str, since: str, task: str, sha: str) -> MergeOutcome:
    return world.repos.merge(
        path,
        INTEGRATION,
        since_sha=since,
        mission_id=M,
        task_id=task,
        attempt=1,
        commit_sha=sha,
        now=NOW,
    )


def test_the_integration_branch_starts_at_the_base_and_keeps_its_fork_point(world: World) -> None:
    path = world.new_repository()
    first = world.repos.prepare_repository(path, "main", INTEGRATION)
    assert world.files(first.path, INTEGRATION) == FILES
    assert [(f.path, f.size) for f in first.files] == [
        (name, len(content.encode())) for name, content in sorted(FILES.items())
    ]
    assert (first.file_count, first.files_truncated) == (3, False)
    world.commit_on_main(path, {"later.txt": "later\n"})
    again = world.repos.prepare_repository(path, "main", INTEGRATION)
    assert again.base_sha == first.base_sha
    assert "later.txt" not in world.files(path, INTEGRATION)


def test_a_missing_repository_or_base_branch_is_a_repository_error(
    world: World, tmp_path: Path
) -> None:
    with pytest.raises(RepositoryError):
        world.repos.prepare_repository(str(tmp_path / "nowhere"), "main", INTEGRATION)
    path = world.new_repository()
    with pytest.raises(RepositoryError):
        world.repos.prepare_repository(path, "no-such-branch", INTEGRATION)


def test_a_workspace_is_made_once_and_reports_its_branch_head(world: World) -> None:
    path = world.new_repository()
    base = world.repos.prepare_repository(path, "main", INTEGRATION).base_sha
    branch, worktree = f"aether-tasks/{M}/t1/a1", str(world.worktrees / M / "t1-a1")
    made = world.repos.prepare_workspace(path, INTEGRATION, branch, worktree)
    assert (made.branch, made.worktree_path, made.base_sha, made.created) == (
        branch,
        worktree,
        base,
        True,
    )
    sha = world.commit_in(worktree, {"one.py": "1\n"})
    again = world.repos.prepare_workspace(path, INTEGRATION, branch, worktree)
    assert (again.base_sha, again.created) == (sha, False)
    assert world.has_branch(path, branch)


def test_tasks_merge_once_fast_forward_then_by_merge_commit(world: World) -> None:
    path = world.new_repository()
    since = world.repos.prepare_repository(path, "main", INTEGRATION).base_sha
    _, one = workspace(world, path, "t1")
    _, two = workspace(world, path, "t2")
    sha1 = world.commit_in(one, {"one.py": "1\n"})
    sha2 = world.commit_in(two, {"two.py": "2\n", "README.md": None})

    first = merge(world, path, since, "t1", sha1)
    assert (first.kind, first.sha, first.files, first.fast_forward) == (
        "fast_forward",
        sha1,
        ("one.py",),
        True,
    )
    second = merge(world, path, since, "t2", sha2)
    assert (second.kind, second.files, second.fast_forward) == (
        "merged",
        ("README.md", "two.py"),
        False,
    )
    expected = {**FILES, "one.py": "1\n", "two.py": "2\n"}
    del expected["README.md"]
    assert world.files(path, INTEGRATION) == expected

    # Redelivered: nothing is written, the same outcome is reported.
    again = merge(world, path, since, "t2", sha2)
    assert (again.kind, again.sha, again.files) == ("already_merged", second.sha, second.files)
    earlier = merge(world, path, since, "t1", sha1)
    assert (earlier.kind, earlier.sha, earlier.fast_forward) == ("already_merged", sha1, True)
    assert world.files(path, INTEGRATION) == expected


def test_the_same_line_changed_on_both_sides_conflicts_and_leaves_the_branch(
    world: World,
) -> None:
    path = world.new_repository()
    since = world.repos.prepare_repository(path, "main", INTEGRATION).base_sha
    _, one = workspace(world, path, "t1")
    _, two = workspace(world, path, "t2")
    head = merge(world, path, since, "t1", world.commit_in(one, {"README.md": "# one\n"})).sha
    conflict = merge(world, path, since, "t2", world.commit_in(two, {"README.md": "# two\n"}))
    assert (conflict.kind, conflict.sha, conflict.files) == ("conflict", head, ("README.md",))
    assert conflict.detail and conflict.refusal == "conflict"
    assert world.files(path, INTEGRATION)["README.md"] == "# one\n"


BLOCK = "<<<<<<< ours\none\n=======\ntwo\n>>>>>>> theirs\n"


def test_a_commit_that_adds_conflict_markers_is_refused_and_the_bases_own_are_not(
    world: World,
) -> None:
    path = world.new_repository()
    world.commit_on_main(path, {"docs/conflicts.md": "# Conflicts\n\n" + BLOCK})
    since = world.repos.prepare_repository(path, "main", INTEGRATION).base_sha
    _, one = workspace(world, path, "t1")
    _, two = workspace(world, path, "t2")
    _, three = workspace(world, path, "t3")
    # A fast-forward that adds a block (and edits the base's own): refused, nothing moves.
    marked = world.commit_in(
        one,
        {
            "app/main.py": "print('hello')\n" + BLOCK,
            "docs/conflicts.md": "# Conflicts, explained\n\n" + BLOCK + "\nResolve them.\n",
        },
    )
    refused = merge(world, path, since, "t1", marked)
    assert (refused.kind, refused.sha, refused.files) == ("conflict", since, ())
    assert refused.detail.splitlines()[0] == "conflict markers left in 1 file(s): app/main.py:2"
    # Named, so the next attempt is not told its verification failed (neither has files).
    assert refused.refusal == "conflict_markers"
    assert world.files(path, INTEGRATION)["app/main.py"] == FILES["app/main.py"]
    # The base's block moved and edited around: merged.
    doc = "Resolve them.\n\n" + BLOCK.replace("one", "first") + "# Conflicts\n"
    clean = merge(world, path, since, "t2", world.commit_in(two, {"docs/conflicts.md": doc}))
    assert clean.kind == "fast_forward"
    # By a merge commit (the branch moved meanwhile): refused alike.
    later = merge(world, path, since, "t3", world.commit_in(three, {"three.py": "x\n" + BLOCK}))
    assert (later.kind, later.sha, later.files) == ("conflict", clean.sha, ())
    assert later.refusal == "conflict_markers"
    assert "three.py:2" in later.detail
    assert "three.py" not in world.files(path, INTEGRATION)


def test_a_commit_that_is_not_in_the_repository_is_refused_as_a_conflict(world: World) -> None:
    path = world.new_repository()
    since = world.repos.prepare_repository(path, "main", INTEGRATION).base_sha
    for sha in ("f" * 40, "not-a-sha"):
        outcome = merge(world, path, since, "t1", sha)
        assert (outcome.kind, outcome.sha) == ("conflict", since)
        assert outcome.detail and outcome.refusal == "missing_commit"


def test_worktrees_and_task_branches_are_cleaned_up_once(world: World) -> None:
    path = world.new_repository()
    world.repos.prepare_repository(path, "main", INTEGRATION)
    branch1, one = workspace(world, path, "t1")
    branch2, two = workspace(world, path, "t2")
    branch3, _ = workspace(world, path, "t3")

    assert world.repos.recycle_worktree(path, one)
    assert world.repos.remove_worktrees_under(path, str(world.worktrees / M)) == sorted(
        [two, str(world.worktrees / M / "t3-a1")]
    )
    assert world.repos.remove_worktrees_under(path, str(world.worktrees / M)) == []

    assert world.repos.delete_branch(path, branch1)
    assert not world.repos.delete_branch(path, branch1)
    assert world.repos.delete_branches(path, f"aether-tasks/{M}/") == [branch2, branch3]
    assert world.repos.delete_branches(path, f"aether-tasks/{M}/") == []
    assert world.has_branch(path, INTEGRATION)
    with pytest.raises(ValueError, match="namespace"):
        world.repos.delete_branches(path, "aether-tasks")
