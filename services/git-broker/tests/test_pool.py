"""Pooled worktrees: a finished task's directory becomes the next task's, exactly right."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dulwich.objects import Commit as CommitObject
from dulwich.repo import Repo

from aether_git_broker.adapters import checkout as checkout_module
from aether_git_broker.adapters import worktrees as worktrees_module
from aether_git_broker.adapters.git import GitRepositories

INTEGRATION = "aether/m-p"
Git = Callable[..., str]
Commit = Callable[..., str]


@pytest.fixture
def broker(worktrees_dir: Path) -> GitRepositories:
    return GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)


def _workspace(broker: GitRepositories, repo: Path, worktrees_dir: Path, task: str) -> Path:
    outcome = broker.prepare_workspace(
        str(repo), INTEGRATION, f"aether-tasks/m-p/{task}/a1", str(worktrees_dir / "m-p" / task)
    )
    return Path(outcome.worktree_path)


def _prepared(repo: Path, worktrees_dir: Path, capacity: int) -> tuple[GitRepositories, str]:
    """A broker whose pool keeps ``capacity`` worktrees, and the integration branch's base."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=capacity)
    return broker, broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha


def _pooled(worktrees_dir: Path) -> list[Path]:
    pools = list((worktrees_dir / ".pool").glob("*"))
    return [
        p for pool in pools for p in pool.iterdir() if not p.name.endswith((".index", ".admin"))
    ]


def test_a_reused_worktree_is_exactly_the_new_head_whatever_the_agent_left(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, git: Git, commit: Commit
) -> None:
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    first = _workspace(broker, repo, worktrees_dir, "t1")
    sha = commit(first, {"feature.py": "F = 1\n", "app/util.py": None}, "agent's work")
    # Things an agent leaves: an untracked file and directory, an uncommitted edit of
    # the same size, a mode change, a file where a directory was.
    (first / "scratch.log").write_text("noise\n")
    (first / "build" / "out").mkdir(parents=True)
    (first / "build" / "out" / "a.o").write_bytes(b"\0\1")
    (first / "README.md").write_text("# DEMO\n")
    (first / "app" / "main.py").chmod(0o755)
    broker.merge(
        str(repo),
        INTEGRATION,
        since_sha=base,
        mission_id="m-p",
        task_id="t1",
        attempt=1,
        commit_sha=sha,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert broker.recycle_worktree(str(repo), str(first))
    assert not first.exists()
    assert len(_pooled(worktrees_dir)) == 1
    assert str(first) not in git(repo, "worktree", "list", "--porcelain")

    second = _workspace(broker, repo, worktrees_dir, "t2")
    assert _pooled(worktrees_dir) == []
    assert git(second, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert git(second, "diff-files", "--quiet") == ""
    assert git(second, "rev-parse", "HEAD") == sha
    assert (second / "README.md").read_text() == "# demo\n"
    assert not os.stat(second / "app" / "main.py").st_mode & 0o100
    assert not (second / "app" / "util.py").exists()
    assert (second / "feature.py").read_text() == "F = 1\n"
    assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""


def test_an_edit_with_its_time_put_back_is_still_noticed(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, git: Git
) -> None:
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    first = _workspace(broker, repo, worktrees_dir, "t1")
    target = first / "app" / "main.py"
    before = os.stat(target)
    target.write_text("print('HELLO')\n")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    broker.recycle_worktree(str(repo), str(first))
    second = _workspace(broker, repo, worktrees_dir, "t2")
    assert (second / "app" / "main.py").read_text() == "print('hello')\n"
    assert git(second, "status", "--porcelain") == ""


def test_the_pool_keeps_only_a_few_worktrees_and_goes_with_its_last_mission(
    broker: GitRepositories, repo: Path, worktrees_dir: Path
) -> None:
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    paths = [_workspace(broker, repo, worktrees_dir, f"t{n}") for n in range(3)]
    for path in paths:
        broker.recycle_worktree(str(repo), str(path))
    assert len(_pooled(worktrees_dir)) == 2
    assert not any(p.exists() for p in paths)
    assert broker.drop_idle_pools([str(repo)]) == []
    assert len(_pooled(worktrees_dir)) == 2
    assert broker.drop_pool(str(repo))
    assert _pooled(worktrees_dir) == []
    _workspace(broker, repo, worktrees_dir, "t9")
    broker.recycle_worktree(str(repo), str(worktrees_dir / "m-p" / "t9"))
    assert len(broker.drop_idle_pools([])) == 1
    assert _pooled(worktrees_dir) == []


def test_a_pooled_worktree_cut_short_is_not_reused(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, git: Git
) -> None:
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    first = _workspace(broker, repo, worktrees_dir, "t1")
    broker.recycle_worktree(str(repo), str(first))
    (pooled,) = _pooled(worktrees_dir)
    shutil.rmtree(str(pooled) + ".admin")  # a crash between moving the files and the index
    (pooled / "junk.txt").write_text("x\n")
    second = _workspace(broker, repo, worktrees_dir, "t2")
    assert not (second / "junk.txt").exists()
    assert git(second, "status", "--porcelain", "--untracked-files=all") == ""
    assert _pooled(worktrees_dir) == []


def test_a_warmed_pool_serves_the_first_tasks_without_a_full_checkout(
    repo: Path, worktrees_dir: Path, git: Git, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, base = _prepared(repo, worktrees_dir, 3)
    assert broker.prewarm(str(repo), base, count=2)
    broker.close()  # waits for the warm-up
    assert len(_pooled(worktrees_dir)) == 2
    written: list[int] = []
    original = checkout_module.checkout

    def counting(*args: object, **kwargs: object) -> int:
        written.append(original(*args, **kwargs))  # type: ignore[arg-type]
        return written[-1]

    monkeypatch.setattr(worktrees_module, "checkout", counting)
    wt = _workspace(broker, repo, worktrees_dir, "t1")
    assert written == [0]  # every file was already there
    assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    assert len(_pooled(worktrees_dir)) == 1


def test_a_warm_up_makes_every_loose_object_directory_and_git_reads_the_repository_as_before(
    repo: Path, worktrees_dir: Path, git: Git
) -> None:
    """A new mission's first objects each made their directory on the tasks' path; the
    warm-up makes the 256 first, and git sees nothing amiss in empty ones."""
    git(repo, "gc", "--quiet")  # packed: no loose object directory is left
    objects = repo / ".git" / "objects"
    assert not [d for d in objects.iterdir() if len(d.name) == 2]
    broker, base = _prepared(repo, worktrees_dir, 3)
    assert broker.prewarm(str(repo), base, count=1)
    broker.close()  # waits for the warm-up
    fanouts = sorted(d.name for d in objects.iterdir() if len(d.name) == 2 and d.is_dir())
    assert fanouts == [f"{i:02x}" for i in range(256)]
    assert worktrees_module.ensure_fanouts(str(objects)) == 0
    wt = _workspace(broker, repo, worktrees_dir, "t1")
    (wt / "new.txt").write_text("new\n")
    git(wt, "add", "new.txt")
    git(wt, "commit", "-q", "-m", "new")
    git(repo, "fsck", "--strict", "--no-progress")


def test_a_warm_up_does_not_replace_the_worktrees_tasks_take_while_it_runs(
    repo: Path, worktrees_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base = _prepared(repo, worktrees_dir, 3)
    with Repo(str(repo)) as opened:
        pool = worktrees_module.pool_of(opened, str(worktrees_dir))
        commit = opened[base.encode()]
    assert isinstance(commit, CommitObject)
    original = checkout_module.checkout
    built: list[str] = []

    def claimed_meanwhile(*args: object, **kwargs: object) -> int:
        # A task takes the worktree made before this one while this one is built.
        for made in _pooled(worktrees_dir):
            if not made.name.endswith(".warming"):
                shutil.rmtree(made)
        built.append(str(args[3]))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worktrees_module, "checkout", claimed_meanwhile)
    made = worktrees_module.warm_pool(str(repo), commit.tree, pool, 2)
    assert made == 2
    assert len(built) == 2
    assert len(_pooled(worktrees_dir)) == 1


def test_a_warm_up_stops_once_the_first_task_takes_a_workspace(
    repo: Path, worktrees_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan that comes at once (the offline model's) has its first tasks check out
    what the pool lacks: the warm-up finishes the worktree it is making and stops,
    rather than take the cores from them for worktrees the pool would then not keep."""
    broker, base = _prepared(repo, worktrees_dir, 3)
    original = checkout_module.checkout
    gate, making = threading.Event(), threading.Event()
    warmed: list[str] = []

    def gated(*args: object, **kwargs: object) -> int:
        if str(args[3]).endswith(".warming"):
            warmed.append(str(args[3]))
            making.set()
            assert gate.wait(30)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worktrees_module, "checkout", gated)
    assert broker.prewarm(str(repo), base, count=3)
    assert making.wait(30)
    _workspace(broker, repo, worktrees_dir, "t1")  # the first task, while it warms
    gate.set()
    broker.close()  # waits for the warm-up
    assert len(warmed) == 1
    assert len(_pooled(worktrees_dir)) == 1


def test_a_warm_up_runs_at_the_lowest_priority(
    repo: Path, worktrees_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, base = _prepared(repo, worktrees_dir, 2)
    niceness: list[int] = []

    def warm(*args: object) -> int:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return 0

    monkeypatch.setattr(worktrees_module, "warm_pool", warm)
    assert broker.prewarm(str(repo), base, count=2)
    broker.close()
    assert niceness == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


def test_start_up_clears_pool_entries_cut_short(
    broker: GitRepositories, repo: Path, worktrees_dir: Path
) -> None:
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    first = _workspace(broker, repo, worktrees_dir, "t1")
    broker.recycle_worktree(str(repo), str(first))
    (pool,) = (worktrees_dir / ".pool").iterdir()
    (pool / "warm-dead.warming" / "src").mkdir(parents=True)
    (pool / "gone.index").write_bytes(b"DIRC")
    (pool / "lost.admin").mkdir()
    removed = broker.clear_pool_leftovers()
    assert sorted(Path(p).name for p in removed) == [
        "gone.index",
        "lost.admin",
        "warm-dead.warming",
    ]
    assert len(_pooled(worktrees_dir)) == 1


def test_a_pooled_worktree_takes_its_administrative_files_along_without_the_attempts_state(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, git: Git
) -> None:
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    first = _workspace(broker, repo, worktrees_dir, "t1")
    admin = Path(git(first, "rev-parse", "--absolute-git-dir"))
    runner = admin / "aether-agent"
    (runner / "home" / ".cache").mkdir(parents=True)
    (runner / "lock").write_bytes(b"")
    (runner / "transcript.jsonl").write_text('{"kind":"begin"}\n')
    (admin / "ORIG_HEAD").write_text("0" * 40 + "\n")
    lock_inode = (runner / "lock").stat().st_ino
    assert broker.recycle_worktree(str(repo), str(first))
    assert not admin.exists()

    second = _workspace(broker, repo, worktrees_dir, "t2")
    moved = Path(git(second, "rev-parse", "--absolute-git-dir"))
    assert moved != admin
    assert sorted(p.name for p in moved.iterdir()) == [
        "HEAD",
        "aether-agent",
        "commondir",
        "gitdir",
        "index",
        "locked",
    ]
    # The lock file is kept (nobody holds it); what the attempt kept is gone.
    assert [p.name for p in (moved / "aether-agent").iterdir()] == ["lock"]
    assert (moved / "aether-agent" / "lock").stat().st_ino == lock_inode
    assert git(second, "symbolic-ref", "HEAD") == "refs/heads/aether-tasks/m-p/t2/a1"
    assert git(second, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""
    listed = git(repo, "worktree", "list", "--porcelain")
    assert str(second) in listed and str(first) not in listed


def test_a_lock_still_held_is_not_handed_to_the_next_worktree(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, git: Git
) -> None:
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    first = _workspace(broker, repo, worktrees_dir, "t1")
    runner = Path(git(first, "rev-parse", "--absolute-git-dir")) / "aether-agent"
    runner.mkdir()
    held = os.open(runner / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert broker.recycle_worktree(str(repo), str(first))
        second = _workspace(broker, repo, worktrees_dir, "t2")
        admin = Path(git(second, "rev-parse", "--absolute-git-dir"))
        assert list((admin / "aether-agent").iterdir()) == []
    finally:
        os.close(held)


@pytest.mark.parametrize("pooled", [False, True])
def test_a_git_prune_while_a_worktree_is_checked_out_leaves_it_alone(
    broker: GitRepositories,
    repo: Path,
    worktrees_dir: Path,
    git: Git,
    monkeypatch: pytest.MonkeyPatch,
    pooled: bool,
) -> None:
    """git prunes a worktree whose directory is missing (it is, until the checkout ends)
    and whose index is missing or old, and runs such a prune in the background of its
    gc: the broker's worktrees are locked, from before they are registered."""
    broker.prepare_repository(str(repo), "main", INTEGRATION)
    if pooled:
        broker.recycle_worktree(str(repo), str(_workspace(broker, repo, worktrees_dir, "t0")))
    original = worktrees_module.checkout
    pruned: list[str] = []

    def pruning(*args: object, **kwargs: object) -> int:
        pruned.append(git(repo, "worktree", "prune", "-v"))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worktrees_module, "checkout", pruning)
    second = _workspace(broker, repo, worktrees_dir, "t1")
    assert pruned == [""]
    assert git(second, "status", "--porcelain", "--untracked-files=all") == ""
    listed = git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {second}\n" in listed + "\n"
    assert f"locked {worktrees_module.LOCK_REASON}" in listed
    assert not list(repo.glob(".git/aether-new-*"))
