"""The repository adapter against real repositories, checked with the git CLI."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dulwich.file import FileLocked

from aether_git_broker.adapters import merge as merge_module
from aether_git_broker.adapters.git import GitRepositories, RefMoved, RepositoryError
from aether_git_broker.domain import WorkspaceOutcome

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
INTEGRATION = "aether/m-1"

Git = Callable[..., str]
Commit = Callable[..., str]


@pytest.fixture
def broker() -> GitRepositories:
    return GitRepositories()


@pytest.fixture
def prepared(broker: GitRepositories, repo: Path) -> str:
    """The repository with its integration branch; returns the base sha."""
    return broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha


def workspace(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, task: str, attempt: int = 1
) -> WorkspaceOutcome:
    return broker.prepare_workspace(
        str(repo),
        INTEGRATION,
        f"aether-tasks/m-1/{task}/a{attempt}",
        str(worktrees_dir / "m-1" / f"{task}-a{attempt}"),
    )


def merge(broker: GitRepositories, repo: Path, base: str, task: str, sha: str, attempt: int = 1):
    return broker.merge(
        str(repo),
        INTEGRATION,
        since_sha=base,
        mission_id="m-1",
        task_id=task,
        attempt=attempt,
        commit_sha=sha,
        now=NOW,
    )


# --- repositories ------------------------------------------------------------------


def test_prepare_creates_the_integration_branch_at_the_base_head(
    broker: GitRepositories, repo: Path, git: Git
) -> None:
    outcome = broker.prepare_repository(str(repo), "main", INTEGRATION)
    main = git(repo, "rev-parse", "main")
    assert outcome.base_sha == main
    assert git(repo, "rev-parse", INTEGRATION) == main
    assert outcome.path == str(repo.resolve())
    assert outcome.integration_branch == INTEGRATION
    assert {f.path: f.size for f in outcome.files} == {
        "README.md": 7,
        "app/main.py": 15,
        "app/util.py": 25,
    }
    assert outcome.file_count == 3
    assert not outcome.files_truncated


def test_prepare_again_keeps_the_branch_and_reports_where_it_forked(
    broker: GitRepositories, repo: Path, git: Git, commit: Commit
) -> None:
    first = broker.prepare_repository(str(repo), "main", INTEGRATION)
    commit(repo, {"later.txt": "x\n"}, "main moves on")
    second = broker.prepare_repository(str(repo), "main", INTEGRATION)
    assert second.base_sha == first.base_sha
    assert git(repo, "rev-parse", INTEGRATION) == first.base_sha


def test_the_file_index_is_capped(repo: Path) -> None:
    outcome = GitRepositories(max_listed_files=2).prepare_repository(str(repo), "main", "x/y")
    assert len(outcome.files) == 2
    assert outcome.file_count == 3
    assert outcome.files_truncated


def test_a_missing_path_is_rejected(broker: GitRepositories, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        broker.prepare_repository(str(tmp_path / "nowhere"), "main", INTEGRATION)


def test_a_directory_that_is_not_a_repository_is_rejected(
    broker: GitRepositories, tmp_path: Path
) -> None:
    with pytest.raises(RepositoryError, match="is not a git repository"):
        broker.prepare_repository(str(tmp_path), "main", INTEGRATION)


def test_a_missing_base_branch_is_rejected(broker: GitRepositories, repo: Path) -> None:
    with pytest.raises(RepositoryError, match="base branch 'develop' does not exist"):
        broker.prepare_repository(str(repo), "develop", INTEGRATION)


def test_an_empty_repository_has_no_base_branch(
    broker: GitRepositories, tmp_path: Path, git: Git
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(RepositoryError, match="does not exist"):
        broker.prepare_repository(str(empty), "main", INTEGRATION)


def test_a_file_url_names_a_local_repository(broker: GitRepositories, repo: Path) -> None:
    outcome = broker.prepare_repository(f"file://{repo}", "main", INTEGRATION)
    assert outcome.path == str(repo.resolve())


# --- worktrees ---------------------------------------------------------------------


def test_a_worktree_starts_at_the_integration_head_and_git_sees_it(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, git: Git
) -> None:
    outcome = workspace(broker, repo, worktrees_dir, "t1")
    wt = Path(outcome.worktree_path)
    assert outcome.created
    assert outcome.base_sha == prepared
    assert git(repo, "rev-parse", "aether-tasks/m-1/t1/a1") == prepared
    assert (wt / "app" / "main.py").read_text() == "print('hello')\n"
    listing = git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {wt}" in listing
    assert "branch refs/heads/aether-tasks/m-1/t1/a1" in listing
    assert git(wt, "status", "--porcelain") == ""
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD") == "aether-tasks/m-1/t1/a1"


def test_a_commit_in_the_worktree_lands_on_the_task_branch(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt = Path(workspace(broker, repo, worktrees_dir, "t1").worktree_path)
    sha = commit(wt, {"feature.py": "x = 1\n"}, "add feature")
    assert git(repo, "rev-parse", "aether-tasks/m-1/t1/a1") == sha
    assert git(repo, "rev-parse", INTEGRATION) == prepared
    assert git(repo, "fsck", "--no-progress") == ""


def test_an_existing_worktree_is_reused_untouched(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, commit: Commit
) -> None:
    first = workspace(broker, repo, worktrees_dir, "t1")
    wt = Path(first.worktree_path)
    commit(wt, {"feature.py": "x = 1\n"}, "agent work")
    (wt / "scratch.txt").write_text("uncommitted\n")
    again = workspace(broker, repo, worktrees_dir, "t1")
    assert not again.created
    assert (wt / "scratch.txt").read_text() == "uncommitted\n"
    assert again.worktree_path == first.worktree_path


def test_a_half_built_worktree_is_rebuilt(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, git: Git
) -> None:
    target = worktrees_dir / "m-1" / "t1-a1"
    (worktrees_dir / "m-1" / "t1-a1.partial").mkdir(parents=True)
    target.mkdir()
    (target / "junk").write_text("left by a crash\n")
    outcome = workspace(broker, repo, worktrees_dir, "t1")
    assert outcome.created
    assert not (target / "junk").exists()
    assert not (worktrees_dir / "m-1" / "t1-a1.partial").exists()
    assert git(target, "status", "--porcelain") == ""


def test_a_dependent_task_starts_from_the_merged_head(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    commit: Commit,
) -> None:
    first = workspace(broker, repo, worktrees_dir, "t1")
    sha = commit(first.worktree_path, {"one.txt": "1\n"}, "task one")
    merge(broker, repo, prepared, "t1", sha)
    second = workspace(broker, repo, worktrees_dir, "t2")
    assert second.base_sha == sha
    assert (Path(second.worktree_path) / "one.txt").read_text() == "1\n"


def test_the_same_task_id_in_two_missions_gets_two_worktrees(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, git: Git
) -> None:
    broker.prepare_repository(str(repo), "main", "aether/m-2")
    a = workspace(broker, repo, worktrees_dir, "t1")
    b = broker.prepare_workspace(
        str(repo), "aether/m-2", "aether-tasks/m-2/t1/a1", str(worktrees_dir / "m-2" / "t1-a1")
    )
    listing = git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {a.worktree_path}" in listing
    assert f"worktree {b.worktree_path}" in listing
    assert git(a.worktree_path, "status", "--porcelain") == ""
    assert git(b.worktree_path, "status", "--porcelain") == ""


def test_removing_a_worktree_keeps_its_branch(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, git: Git
) -> None:
    wt = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    assert broker.remove_worktree(str(repo), wt)
    assert not Path(wt).exists()
    assert wt not in git(repo, "worktree", "list", "--porcelain")
    assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""
    assert git(repo, "rev-parse", "aether-tasks/m-1/t1/a1") == prepared
    assert not broker.remove_worktree(str(repo), wt)


def test_removing_a_missions_worktrees_removes_all_of_them(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, git: Git
) -> None:
    paths = [workspace(broker, repo, worktrees_dir, task).worktree_path for task in ("t1", "t2")]
    removed = broker.remove_worktrees_under(str(repo), str(worktrees_dir / "m-1"))
    assert sorted(removed) == sorted(paths)
    assert not (worktrees_dir / "m-1").exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


# --- merges ------------------------------------------------------------------------


def test_a_task_on_top_of_the_integration_head_fast_forwards(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    sha = commit(wt, {"feature.py": "x = 1\n", "README.md": "# demo v2\n"}, "feature")
    outcome = merge(broker, repo, prepared, "t1", sha)
    assert outcome.kind == "fast_forward"
    assert outcome.fast_forward
    assert outcome.sha == sha
    assert outcome.files == ("README.md", "feature.py")
    assert git(repo, "rev-parse", INTEGRATION) == sha


def test_disjoint_changes_merge_three_way_with_both_sides(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt1 = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    wt2 = workspace(broker, repo, worktrees_dir, "t2").worktree_path
    sha1 = commit(wt1, {"one.py": "1\n", "app/main.py": "print('one')\n"}, "task one")
    sha2 = commit(wt2, {"two.py": "2\n", "app/util.py": None}, "task two")
    assert merge(broker, repo, prepared, "t1", sha1).kind == "fast_forward"
    outcome = merge(broker, repo, prepared, "t2", sha2, attempt=1)
    assert outcome.kind == "merged"
    assert not outcome.fast_forward
    assert outcome.files == ("app/util.py", "two.py")
    head = git(repo, "rev-parse", INTEGRATION)
    assert head == outcome.sha
    assert git(repo, "rev-parse", f"{head}^1") == sha1
    assert git(repo, "rev-parse", f"{head}^2") == sha2
    assert git(repo, "ls-tree", "-r", "--name-only", head).split() == [
        "README.md",
        "app/main.py",
        "one.py",
        "two.py",
    ]
    assert git(repo, "show", f"{head}:app/main.py") == "print('one')"
    message = git(repo, "log", "-1", "--format=%B", head)
    assert message.splitlines()[0] == "Merge task t2 (attempt 1)"
    trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", head)
    assert trailers.splitlines() == ["Aether-Mission: m-1", "Aether-Task: t2", "Aether-Attempt: 1"]
    assert git(repo, "fsck", "--no-progress") == ""


def test_conflicting_changes_leave_the_integration_branch_untouched(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt1 = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    wt2 = workspace(broker, repo, worktrees_dir, "t2").worktree_path
    sha1 = commit(wt1, {"README.md": "# one\n", "one.py": "1\n"}, "task one")
    sha2 = commit(wt2, {"README.md": "# two\n", "two.py": "2\n"}, "task two")
    merge(broker, repo, prepared, "t1", sha1)
    outcome = merge(broker, repo, prepared, "t2", sha2)
    assert outcome.kind == "conflict"
    assert outcome.files == ("README.md",)
    assert outcome.sha == sha1
    assert git(repo, "rev-parse", INTEGRATION) == sha1


def test_merging_the_same_commit_twice_merges_once(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt1 = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    wt2 = workspace(broker, repo, worktrees_dir, "t2").worktree_path
    sha1 = commit(wt1, {"one.py": "1\n"}, "task one")
    sha2 = commit(wt2, {"two.py": "2\n"}, "task two")
    merge(broker, repo, prepared, "t1", sha1)
    first = merge(broker, repo, prepared, "t2", sha2)
    commit_count = git(repo, "rev-list", "--count", INTEGRATION)
    again = merge(broker, repo, prepared, "t2", sha2)
    assert first.kind == "merged"
    assert again.kind == "already_merged"
    assert again.sha == first.sha
    assert again.files == first.files
    assert git(repo, "rev-parse", INTEGRATION) == first.sha
    assert git(repo, "rev-list", "--count", INTEGRATION) == commit_count
    assert git(repo, "rev-list", "--merges", "--count", INTEGRATION) == "1"


def test_a_fast_forwarded_commit_is_already_merged_the_second_time(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    sha = commit(wt, {"one.py": "1\n"}, "task one")
    merge(broker, repo, prepared, "t1", sha)
    again = merge(broker, repo, prepared, "t1", sha)
    assert again.kind == "already_merged"
    assert again.sha == sha
    assert git(repo, "rev-parse", INTEGRATION) == sha


def test_a_commit_the_repository_lacks_cannot_merge(
    broker: GitRepositories, repo: Path, prepared: str, git: Git
) -> None:
    outcome = merge(broker, repo, prepared, "t1", "0" * 40)
    assert outcome.kind == "conflict"
    assert "not in the repository" in outcome.detail
    assert git(repo, "rev-parse", INTEGRATION) == prepared


def test_a_missing_integration_branch_is_reported(
    broker: GitRepositories, repo: Path, git: Git
) -> None:
    sha = git(repo, "rev-parse", "main")
    with pytest.raises(RepositoryError, match="integration branch 'aether/m-1' does not exist"):
        merge(broker, repo, sha, "t1", sha)


def test_a_branch_moved_by_someone_else_mid_merge_is_not_overwritten(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wt = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    sha = commit(wt, {"one.py": "1\n"}, "task one")
    intruder = git(
        repo, "commit-tree", "-p", prepared, "-m", "someone else", f"{prepared}^{{tree}}"
    )
    original = merge_module.move_branch

    def racing(*args: object, **kwargs: object) -> bool:
        # Someone moves the branch after the merge was computed, before it is written.
        git(repo, "update-ref", f"refs/heads/{INTEGRATION}", intruder)
        monkeypatch.setattr(merge_module, "move_branch", original)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(merge_module, "move_branch", racing)
    with pytest.raises(RefMoved):
        merge(broker, repo, prepared, "t1", sha)
    assert git(repo, "rev-parse", INTEGRATION) == intruder
    retried = merge(broker, repo, prepared, "t1", sha)
    assert retried.kind == "merged"
    assert git(repo, "rev-parse", f"{retried.sha}^1") == intruder


@pytest.mark.parametrize("reported", ["not-a-sha", "a" * 64, "$(id)", "HEAD", "tree"])
def test_a_reported_commit_that_is_not_one_is_a_conflict_not_a_crash(
    broker: GitRepositories, repo: Path, prepared: str, git: Git, reported: str
) -> None:
    if reported == "tree":
        reported = git(repo, "rev-parse", "main^{tree}")
    outcome = merge(broker, repo, prepared, "t1", reported)
    assert outcome.kind == "conflict"
    assert outcome.detail
    assert git(repo, "rev-parse", INTEGRATION) == prepared


def test_deleting_a_task_branch_takes_its_empty_directory_and_a_packed_copy(
    broker: GitRepositories, repo: Path, git: Callable[..., str]
) -> None:
    git(repo, "branch", "packed", "main")
    git(repo, "pack-refs", "--all")
    heads = repo / ".git" / "refs" / "heads"
    (heads / "packed").write_text(git(repo, "rev-parse", "main"))  # loose over packed
    git(repo, "branch", "aether-tasks/m1/t1/a1", "main")
    git(repo, "branch", "aether-tasks/m1/t2/a1", "main")
    git(repo, "branch", "aether-tasks/m1/t2/a2", "main")

    assert broker.delete_branch(str(repo), "aether-tasks/m1/t1/a1")
    assert broker.delete_branch(str(repo), "aether-tasks/m1/t2/a1")
    assert broker.delete_branch(str(repo), "packed")
    assert not broker.delete_branch(str(repo), "aether-tasks/m1/t1/a1")  # gone already

    listed = git(repo, "branch", "--list", "--format=%(refname:short)").split()
    assert listed == ["aether-tasks/m1/t2/a2", "main"]
    assert not (heads / "aether-tasks" / "m1" / "t1").exists()  # left empty: removed
    assert (heads / "aether-tasks" / "m1" / "t2").is_dir()  # another attempt's is there
    assert not list((repo / ".git").rglob("*.lock"))


def test_a_branch_whose_lock_is_held_is_not_deleted(
    broker: GitRepositories, repo: Path, git: Callable[..., str]
) -> None:
    git(repo, "branch", "aether-tasks/m1/t1/a1", "main")
    lock = repo / ".git" / "refs" / "heads" / "aether-tasks" / "m1" / "t1" / "a1.lock"
    lock.write_text("")
    with pytest.raises(FileLocked):
        broker.delete_branch(str(repo), "aether-tasks/m1/t1/a1")
    assert "aether-tasks/m1/t1/a1" in git(repo, "branch", "--list")


def test_deleting_a_namespace_can_leave_the_branches_whose_lock_is_held(
    broker: GitRepositories, repo: Path, git: Callable[..., str]
) -> None:
    for name in ("a1", "a2", "a3"):
        git(repo, "branch", f"aether-tasks/m1/t1/{name}", "main")
    lock = repo / ".git" / "refs" / "heads" / "aether-tasks" / "m1" / "t1" / "a2.lock"
    lock.write_text("")
    # Without a list for them, the first locked branch stops the deletion (a1 went).
    with pytest.raises(FileLocked):
        broker.delete_branches(str(repo), "aether-tasks/m1/")
    locked: list[str] = []
    deleted = broker.delete_branches(str(repo), "aether-tasks/m1/", locked)
    assert deleted == ["aether-tasks/m1/t1/a3"]
    assert locked == [str(lock)]
    assert git(repo, "branch", "--list", "aether-tasks/*", "--format=%(refname:short)").split() == [
        "aether-tasks/m1/t1/a2"
    ]
