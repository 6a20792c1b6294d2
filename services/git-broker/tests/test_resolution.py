"""A resolution attempt's workspace: the conflicting commit merged in, conflicts marked."""

from __future__ import annotations

from pathlib import Path

from aether_git_broker.adapters.git import GitRepositories

from .test_git_adapter import INTEGRATION, Commit, Git, broker, merge, prepared, workspace

__all__ = ["broker", "prepared"]  # fixtures shared with the adapter tests

LINES = "".join(f"line {i}\n" for i in range(1, 11))


def test_a_resolution_workspace_holds_the_merge_with_conflicts_marked(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    prepared: str,
    git: Git,
    commit: Commit,
) -> None:
    wt0 = workspace(broker, repo, worktrees_dir, "t0").worktree_path
    sha0 = commit(wt0, {"shared.txt": LINES}, "shared file")
    assert merge(broker, repo, prepared, "t0", sha0).kind == "fast_forward"
    wt1 = workspace(broker, repo, worktrees_dir, "t1").worktree_path
    wt2 = workspace(broker, repo, worktrees_dir, "t2").worktree_path
    sha1 = commit(wt1, {"shared.txt": LINES.replace("line 5\n", "one\n")}, "task one")
    sha2 = commit(
        wt2,
        {"shared.txt": LINES.replace("line 5\n", "two\n"), "extra.txt": "more\n"},
        "task two",
    )
    assert merge(broker, repo, prepared, "t1", sha1).kind == "fast_forward"
    conflicted = merge(broker, repo, prepared, "t2", sha2)
    assert conflicted.kind == "conflict" and conflicted.files == ("shared.txt",)
    outcome = broker.prepare_workspace(
        str(repo),
        INTEGRATION,
        "aether-tasks/m-1/t2/a2",
        str(worktrees_dir / "m-1" / "t2-a2"),
        sha2,
    )
    assert outcome.conflicted_files == ("shared.txt",)
    # It starts from a merge of the integration head and the conflicting commit.
    parents = git(repo, "log", "-1", "--format=%P", outcome.base_sha).split()
    assert parents == [git(repo, "rev-parse", INTEGRATION), sha2]
    assert git(repo, "rev-parse", "aether-tasks/m-1/t2/a2") == outcome.base_sha
    work = Path(outcome.worktree_path)
    assert (work / "shared.txt").read_text() == LINES.replace(
        "line 5\n", "<<<<<<< ours\none\n=======\ntwo\n>>>>>>> theirs\n"
    )
    assert (work / "extra.txt").read_text() == "more\n"  # the clean part of the merge
    # Prepared again (a redelivery): the branch and the agent's work are left alone.
    again = broker.prepare_workspace(
        str(repo), INTEGRATION, "aether-tasks/m-1/t2/a2", str(work), sha2
    )
    assert again.conflicted_files == ("shared.txt",) and not again.created
    assert again.base_sha == outcome.base_sha
    # The agent resolves and commits on the head: an ordinary fast-forward merge.
    resolved = commit(
        work,
        {"shared.txt": LINES.replace("line 5\n", "one\ntwo\n"), "extra.txt": "more\n"},
        "resolve",
    )
    assert merge(broker, repo, prepared, "t2", resolved, attempt=2).kind == "fast_forward"
    assert git(repo, "show", f"{INTEGRATION}:shared.txt") == LINES.replace(
        "line 5\n", "one\ntwo\n"
    ).rstrip("\n")
    assert git(repo, "show", f"{INTEGRATION}:extra.txt") == "more"


def test_a_resolution_of_an_unknown_commit_starts_from_the_head(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, prepared: str, git: Git
) -> None:
    outcome = broker.prepare_workspace(
        str(repo), INTEGRATION, "aether-tasks/m-1/t9/a2", str(worktrees_dir / "t9"), "ab" * 20
    )
    assert outcome.base_sha == git(repo, "rev-parse", INTEGRATION)
    assert outcome.conflicted_files == ()
