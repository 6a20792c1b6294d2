"""Lock files a killed broker left behind: cleared at start-up and when met, on real repos.

A broker SIGKILLed inside a dulwich write leaves ``<file>.lock`` next to the file (a ref,
``packed-refs``, an index). Every later write of that file fails with ``FileLocked``;
before this, the same message failed on every redelivery and held up all later ones.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aether_events import AgentCompleted, BranchMerged, WorkspaceReady
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.locks import clear_locks
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.domain import BrokerState, evolve
from aether_git_broker.handlers import Handlers
from aether_git_broker.naming import Naming
from aether_runtime import Projection

from .test_handlers import NOW, M, Recorder, RecordingDelivery, meta, prepare, ready


def handlers_for(worktrees_dir: Path, recorder: Recorder, stale_after: float) -> Handlers:
    return Handlers(
        Projection(BrokerState(), evolve),
        GitRepositories(),
        Naming(branch_prefix="aether", worktrees_dir=str(worktrees_dir)),
        publisher=lambda: recorder,
        clock=lambda: NOW,
        keepalive_seconds=0.01,
        remotes=Remotes(str(worktrees_dir.parent / "data")),
        lock_stale_seconds=stale_after,
    )


def leave_lock(path: Path, age: float = 0.0) -> Path:
    """A lock file as a killed writer leaves it: created, written, never renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"0" * 40 + b"\n")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


async def test_a_task_branch_lock_left_by_a_killed_broker_is_cleared_and_the_workspace_made(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder, stale_after=30.0)
    await prepare(handlers, recorder, repo)
    lock = leave_lock(repo / ".git" / "refs" / "heads" / "aether-tasks" / M / "t2" / "a1.lock", 60)
    await asyncio.wait_for(handlers.handle(ready("t2"), RecordingDelivery()), 10)
    (workspace,) = recorder.of(WorkspaceReady)
    assert isinstance(workspace, WorkspaceReady) and workspace.task.id == "t2"
    assert not lock.exists()
    assert git(repo, "rev-parse", f"aether-tasks/{M}/t2/a1") == workspace.base_sha


async def test_a_fresh_lock_is_waited_out_until_stale_then_removed(
    repo: Path, worktrees_dir: Path
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder, stale_after=0.6)
    await prepare(handlers, recorder, repo)
    lock = leave_lock(repo / ".git" / "refs" / "heads" / "aether-tasks" / M / "t1" / "a1.lock")
    began = time.monotonic()
    await asyncio.wait_for(handlers.handle(ready("t1"), RecordingDelivery()), 10)
    assert time.monotonic() - began >= 0.5, "a lock younger than the bound was removed"
    assert len(recorder.of(WorkspaceReady)) == 1 and not lock.exists()


async def test_a_lock_its_live_writer_releases_is_left_to_it(
    repo: Path, worktrees_dir: Path
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder, stale_after=60.0)
    await prepare(handlers, recorder, repo)
    lock = leave_lock(repo / ".git" / "refs" / "heads" / "aether-tasks" / M / "t1" / "a1.lock")
    released = threading.Timer(0.3, lock.unlink)
    released.start()
    try:
        await asyncio.wait_for(handlers.handle(ready("t1"), RecordingDelivery()), 10)
    finally:
        released.cancel()
    assert len(recorder.of(WorkspaceReady)) == 1


async def test_a_stale_lock_on_the_integration_branch_does_not_block_the_merge(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder, stale_after=30.0)
    await prepare(handlers, recorder, repo)
    await handlers.handle(ready("t1"), RecordingDelivery())
    sha = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    lock = leave_lock(repo / ".git" / "refs" / "heads" / "aether" / f"{M}.lock", 120)
    done = AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha=sha, branch="")
    await asyncio.wait_for(handlers.handle(done, RecordingDelivery()), 10)
    (merged,) = recorder.of(BranchMerged)
    assert isinstance(merged, BranchMerged)
    assert git(repo, "rev-parse", f"aether/{M}") == merged.merge_sha
    assert not lock.exists()


async def test_start_up_removes_the_broker_s_locks_and_stale_shared_ones_only(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    recorder = Recorder()
    first = handlers_for(worktrees_dir, recorder, stale_after=30.0)
    await prepare(first, recorder, repo)
    await first.handle(ready("t1"), RecordingDelivery())
    dot_git = repo / ".git"
    admin = next((dot_git / "worktrees").iterdir())
    broker_only = [
        leave_lock(dot_git / "refs" / "heads" / "aether" / f"{M}.lock"),
        leave_lock(dot_git / "packed-refs.lock"),
        leave_lock(dot_git / "index.lock"),
        leave_lock(dot_git / "HEAD.lock"),
        leave_lock(dot_git / "config.lock"),
    ]
    stale_shared = [
        leave_lock(dot_git / "refs" / "heads" / "aether-tasks" / M / "t2" / "a1.lock", 60),
        leave_lock(admin / "index.lock", 60),
    ]
    # An agent runner may be committing in t1's worktree right now: its locks stay.
    live_shared = [
        leave_lock(dot_git / "refs" / "heads" / "aether-tasks" / M / "t1" / "a1.lock"),
        leave_lock(admin / "HEAD.lock"),
    ]
    # Files of the project that happen to end in .lock are not git's.
    project_file = repo / "uv.lock"
    project_file.write_text("lock of the project\n")
    in_worktree = worktrees_dir / M / "t1-a1" / "poetry.lock"
    in_worktree.write_text("also the project's\n")
    second = Recorder()
    restarted = handlers_for(worktrees_dir, second, stale_after=30.0)
    restarted.projection.apply_all(recorder.events)
    await restarted.start_up()
    assert [p for p in broker_only + stale_shared if p.exists()] == []
    assert all(p.exists() for p in live_shared)
    assert project_file.exists() and in_worktree.exists()
    # With them gone, the broker writes those files again.
    for lock in live_shared:
        lock.unlink()
    await restarted.handle(ready("t2"), RecordingDelivery())
    assert [e.task.id for e in second.of(WorkspaceReady)] == ["t2"]
    assert git(repo, "rev-parse", "--verify", f"aether-tasks/{M}/t2/a1")


async def test_start_up_clears_locks_in_clones_of_remote_repositories(tmp_path: Path) -> None:
    remotes = Remotes(str(tmp_path / "data"))
    clone = tmp_path / "data" / "repositories" / "example.com" / "team" / "tool.git"
    (clone / "objects").mkdir(parents=True)
    (clone / "HEAD").write_text("ref: refs/heads/main\n")
    lock = leave_lock(clone / "refs" / "heads" / "main.lock")
    assert remotes.clear_locks() == [str(lock)]
    assert not lock.exists()


def test_clear_locks_says_what_it_removed(tmp_path: Path) -> None:
    common = tmp_path / "git"
    fresh = leave_lock(common / "objects" / "ab" / "cdef.lock")
    old = leave_lock(common / "objects" / "ab" / "0123.lock", 60)
    mine = leave_lock(common / "refs" / "heads" / "x.lock")
    removed = clear_locks(str(common), lambda relative: relative.startswith("objects/"), 30)
    assert sorted(removed) == sorted([str(old), str(mine)])
    assert fresh.exists()


async def test_start_up_leaves_a_branch_whose_fresh_lock_it_may_not_remove(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    """A broker killed while it deleted a merged task's branch leaves that ref's lock,
    fresh: at the next start it is a shared lock (a runner might be committing) and stays
    until stale. The start-up's sweep would delete that branch: it is left for later,
    rather than the start failing on the lock (the service exited at every start until
    the lock was stale)."""
    recorder = Recorder()
    first = handlers_for(worktrees_dir, recorder, stale_after=30.0)
    await prepare(first, recorder, repo)
    await first.handle(ready("t1"), RecordingDelivery())
    sha = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    done = AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha=sha, branch="")
    await asyncio.wait_for(first.handle(done, RecordingDelivery()), 10)
    assert recorder.of(BranchMerged)
    branch = f"aether-tasks/{M}/t1/a1"
    assert git(repo, "rev-parse", "--verify", branch)  # deleted at the next preparation
    lock = leave_lock(repo / ".git" / "refs" / "heads" / "aether-tasks" / M / "t1" / "a1.lock")
    second = Recorder()
    restarted = handlers_for(worktrees_dir, second, stale_after=30.0)
    restarted.projection.apply_all(recorder.events)
    await restarted.start_up()
    assert lock.exists()
    assert branch in git(repo, "branch", "--list", branch)
    # Once the lock is gone, the branch goes with the next preparation or start.
    lock.unlink()
    third = handlers_for(worktrees_dir, Recorder(), stale_after=30.0)
    third.projection.apply_all(recorder.events)
    await third.start_up()
    assert git(repo, "branch", "--list", branch) == ""
