"""Handlers with a recording publisher: crash windows, failures and keep-alives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from aether_events import (
    AgentCompleted,
    BranchMerged,
    BranchPushed,
    BranchPushFailed,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceFailed,
    WorkspaceReady,
    new_event_id,
)
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.remote import PushOutcome, Remotes
from aether_git_broker.domain import BrokerState, MergeOutcome, Policy, evolve
from aether_git_broker.handlers import Handlers
from aether_git_broker.naming import Naming
from aether_runtime import Delivery, Projection

NOW = datetime(2026, 1, 1, tzinfo=UTC)
M = "m-h"


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[Event] = []
        self._fail = fail_first

    async def publish(self, event: Event) -> None:
        if self._fail:
            self._fail -= 1
            raise ConnectionError("the stream is unreachable")
        self.events.append(event)

    def of(self, cls: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, cls)]


class RecordingDelivery(Delivery):
    def __init__(self) -> None:
        super().__init__(sequence=1, num_delivered=1, pending=0)
        self.beats = threading.Event()

    async def in_progress(self) -> None:
        self.beats.set()


def meta() -> dict[str, object]:
    return {"event_id": new_event_id(), "mission_id": M, "occurred_at": NOW, "correlation_id": "c"}


def handlers_for(
    worktrees_dir: Path,
    publisher: Recorder,
    git: GitRepositories | None = None,
    *,
    policy: Policy | None = None,
    remotes: Remotes | None = None,
) -> Handlers:
    return Handlers(
        Projection(BrokerState(), evolve),
        git or GitRepositories(),
        Naming(branch_prefix="aether", worktrees_dir=str(worktrees_dir)),
        publisher=lambda: publisher,
        clock=lambda: NOW,
        keepalive_seconds=0.01,
        policy=policy,
        remotes=remotes or Remotes(str(worktrees_dir.parent / "data")),
    )


async def prepare(
    handlers: Handlers, recorder: Recorder, repo: Path | str, verify: str | None = None
) -> RepositoryPrepared:
    await handlers.handle(
        MissionRequested(**meta(), repository=str(repo), requirement="r", verify_command=verify),
        RecordingDelivery(),
    )
    prepared = recorder.of(RepositoryPrepared)[-1]
    assert isinstance(prepared, RepositoryPrepared)
    return prepared


def ready(task_id: str) -> TaskReady:
    return TaskReady(**meta(), task=PlannedTask(id=task_id, title=task_id), attempt=1, model="m")


async def test_a_crash_before_publishing_reuses_the_worktree_and_the_event_id(
    repo: Path, worktrees_dir: Path
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    event = ready("t1")
    recorder._fail = 1
    with pytest.raises(ConnectionError):
        await handlers.handle(event, RecordingDelivery())
    assert (worktrees_dir / M / "t1-a1" / ".git").exists()
    await handlers.handle(event, RecordingDelivery())
    (workspace,) = recorder.of(WorkspaceReady)
    assert isinstance(workspace, WorkspaceReady)
    assert workspace.worktree_path == str(worktrees_dir / M / "t1-a1")
    # A restarted broker replays the stream, then sees the event again: nothing new.
    again = handlers_for(worktrees_dir, recorder)
    for stored in [*recorder.events]:
        again.projection.apply(stored)
    await again.handle(event, RecordingDelivery())
    assert len(recorder.of(WorkspaceReady)) == 1


async def test_a_crash_after_merging_republishes_the_same_merge(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    sha1 = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    sha2 = commit(worktrees_dir / M / "t2-a1", {"two.py": "2\n"}, "two")
    await handlers.handle(
        AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha=sha1, branch=""),
        RecordingDelivery(),
    )
    done = AgentCompleted(**meta(), task_id="t2", attempt=1, commit_sha=sha2, branch="")
    recorder._fail = 1
    with pytest.raises(ConnectionError):
        await handlers.handle(done, RecordingDelivery())
    head = git(repo, "rev-parse", f"aether/{M}")
    await handlers.handle(done, RecordingDelivery())
    merged = recorder.of(BranchMerged)
    assert [m.merge_sha for m in merged if isinstance(m, BranchMerged)] == [sha1, head]
    assert git(repo, "rev-parse", f"aether/{M}") == head
    assert git(repo, "rev-list", "--merges", "--count", head) == "1"


async def test_a_conflict_is_published_and_the_worktree_kept(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    sha1 = commit(worktrees_dir / M / "t1-a1", {"README.md": "one\n"}, "one")
    sha2 = commit(worktrees_dir / M / "t2-a1", {"README.md": "two\n"}, "two")
    for task, sha in (("t1", sha1), ("t2", sha2)):
        await handlers.handle(
            AgentCompleted(**meta(), task_id=task, attempt=1, commit_sha=sha, branch=""),
            RecordingDelivery(),
        )
    (conflict,) = recorder.of(MergeConflicted)
    assert isinstance(conflict, MergeConflicted)
    assert (conflict.task_id, conflict.files, conflict.integration_sha) == (
        "t2",
        ["README.md"],
        sha1,
    )
    assert (worktrees_dir / M / "t2-a1").exists()
    assert not (worktrees_dir / M / "t1-a1").exists()
    assert git(repo, "rev-parse", prepared.integration_branch) == sha1


async def test_a_deleted_integration_branch_fails_the_mission(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    git(repo, "branch", "-D", prepared.integration_branch)
    await handlers.handle(ready("t1"), RecordingDelivery())
    (failed,) = recorder.of(MissionFailed)
    assert isinstance(failed, MissionFailed)
    assert f"integration branch '{prepared.integration_branch}' does not exist" in failed.reason


async def test_slow_repository_work_keeps_its_message_alive(
    repo: Path, worktrees_dir: Path
) -> None:
    class SlowGit(GitRepositories):
        def __init__(self, delivery: RecordingDelivery) -> None:
            super().__init__()
            self._delivery = delivery

        def merge(self, *args: object, **kwargs: object) -> MergeOutcome:
            # Finishes only once the handler has told JetStream it is still working.
            assert self._delivery.beats.wait(timeout=10)
            return MergeOutcome(kind="fast_forward", sha="f" * 40, fast_forward=True)

    delivery = RecordingDelivery()
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder, SlowGit(delivery))
    await prepare(handlers, recorder, repo)
    await handlers.handle(
        AgentCompleted(**meta(), task_id="t1", attempt=1, commit_sha="f" * 40, branch=""),
        delivery,
    )
    assert delivery.beats.is_set()
    assert len(recorder.of(BranchMerged)) == 1


def done(task_id: str, sha: str, attempt: int = 1) -> AgentCompleted:
    return AgentCompleted(**meta(), task_id=task_id, attempt=attempt, commit_sha=sha, branch="")


async def test_a_failed_verification_is_reported_like_a_conflict_with_the_output(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(
        handlers, recorder, repo, verify="test ! -e broken.flag || { echo 'BROKEN build'; exit 1; }"
    )
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    sha1 = commit(worktrees_dir / M / "t1-a1", {"good.py": "1\n"}, "good")
    sha2 = commit(worktrees_dir / M / "t2-a1", {"broken.flag": "x\n"}, "breaks the build")
    await handlers.handle(done("t1", sha1), RecordingDelivery())
    await handlers.handle(done("t2", sha2), RecordingDelivery())
    (merged,) = recorder.of(BranchMerged)
    (refused,) = recorder.of(MergeConflicted)
    assert isinstance(merged, BranchMerged) and isinstance(refused, MergeConflicted)
    assert merged.task_id == "t1"
    assert (refused.task_id, refused.files, refused.integration_sha) == ("t2", [], sha1)
    assert refused.detail.startswith("verification failed:")
    assert "BROKEN build" in refused.detail
    assert git(repo, "rev-parse", prepared.integration_branch) == sha1
    # The same completion again is not verified again: it was answered.
    await handlers.handle(done("t2", sha2), RecordingDelivery())
    assert len(recorder.of(MergeConflicted)) == 1


async def test_a_merge_removes_the_worktree_and_the_next_workspace_the_task_branch(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    """The worktree is gone before BranchMerged is published; the merged task's branch
    once the next workspace is announced (its agent then works, the broker waits)."""
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    await handlers.handle(ready("t1"), RecordingDelivery())
    sha = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    await handlers.handle(done("t1", sha), RecordingDelivery())
    assert not (worktrees_dir / M / "t1-a1").exists()
    assert git(repo, "rev-parse", f"aether/{M}") == sha
    listing = ("branch", "--list", "--format=%(refname:short)", f"aether-tasks/{M}/*")
    assert git(repo, *listing) == f"aether-tasks/{M}/t1/a1"

    await handlers.handle(ready("t2"), RecordingDelivery())

    assert git(repo, *listing) == f"aether-tasks/{M}/t2/a1"
    assert git(repo, "rev-parse", f"aether-tasks/{M}/t2/a1") == sha


async def test_a_cancelled_mission_leaves_no_worktree_or_task_branch(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    await handlers.handle(MissionCancelled(**meta(), reason="changed my mind"), RecordingDelivery())
    assert not (worktrees_dir / M).exists()
    assert git(repo, "branch", "--list", f"aether-tasks/{M}/*") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    # The result branch stays: it is the mission's output, even a partial one.
    assert git(repo, "rev-parse", "--verify", prepared.integration_branch)


async def test_a_task_id_that_cannot_name_a_branch_fails_only_its_workspace(
    repo: Path, worktrees_dir: Path
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    await handlers.handle(ready("$(id)"), RecordingDelivery())
    (failed,) = recorder.of(WorkspaceFailed)
    assert isinstance(failed, WorkspaceFailed)
    assert not failed.retryable
    assert "only letters" in failed.reason
    assert recorder.of(MissionFailed) == []
    assert not (worktrees_dir / M / "$(id)-a1").exists()


async def test_start_up_removes_what_a_crash_left_and_keeps_live_worktrees(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    await prepare(handlers, recorder, repo)
    for task in ("t1", "t2"):
        await handlers.handle(ready(task), RecordingDelivery())
    sha = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    # A crash after merging, before removing anything: only the merge itself happened.
    handlers._git.merge(
        str(repo),
        f"aether/{M}",
        since_sha=git(repo, "rev-parse", "main"),
        mission_id=M,
        task_id="t1",
        attempt=1,
        commit_sha=sha,
        now=NOW,
    )
    merged = BranchMerged(
        **meta(), task_id="t1", attempt=1, merge_sha=sha, integration_branch=f"aether/{M}"
    )
    # Leftovers of other crashes: a half-built worktree and a scratch verification one.
    (worktrees_dir / M / "t3-a1.partial" / "x").mkdir(parents=True)
    handlers._git.prepare_workspace(
        str(repo), f"aether/{M}", "aether-tasks/scratch", str(worktrees_dir / ".verify" / "v1")
    )
    # Another mission that finished while its clean-up was cut short.
    other = "m-old"
    handlers._git.prepare_repository(str(repo), "main", f"aether/{other}")
    handlers._git.prepare_workspace(
        str(repo),
        f"aether/{other}",
        f"aether-tasks/{other}/t1/a1",
        str(worktrees_dir / other / "t1-a1"),
    )
    stored = [*recorder.events, merged]
    old = [
        MissionRequested(
            event_id="o1",
            mission_id=other,
            occurred_at=NOW,
            correlation_id="c",
            repository=str(repo),
            requirement="r",
        ),
        RepositoryPrepared(
            event_id="o2",
            mission_id=other,
            occurred_at=NOW,
            correlation_id="c",
            repository_path=str(repo.resolve()),
            base_branch="main",
            base_sha=sha,
            integration_branch=f"aether/{other}",
        ),
        MissionCancelled(event_id="o3", mission_id=other, occurred_at=NOW, correlation_id="c"),
    ]
    restarted = handlers_for(worktrees_dir, Recorder())
    restarted.projection.apply_all([*stored, *old])
    await restarted.start_up()
    assert sorted(p.name for p in worktrees_dir.iterdir()) == [M]
    assert [p.name for p in (worktrees_dir / M).iterdir()] == ["t2-a1"]
    assert git(worktrees_dir / M / "t2-a1", "status", "--porcelain") == ""
    listing = git(repo, "worktree", "list", "--porcelain")
    assert listing.count("worktree ") == 2
    assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""
    branches = git(repo, "branch", "--list", "aether-tasks/*", "--format=%(refname:short)")
    assert branches.split() == [f"aether-tasks/{M}/t2/a1", "aether-tasks/scratch"]


class CountingRemotes(Remotes):
    def __init__(self, data_dir: str) -> None:
        super().__init__(data_dir)
        self.outcomes: list[str] = []

    def push(self, repository_path: str, target: str, branch: str, sha: str) -> PushOutcome:
        outcome = super().push(repository_path, target, branch, sha)
        self.outcomes.append(outcome.kind)
        return outcome


async def test_a_completed_mission_is_pushed_once_even_when_handled_again_after_a_restart(
    repo: Path,
    worktrees_dir: Path,
    tmp_path: Path,
    commit: Callable[..., str],
    git: Callable[..., str],
) -> None:
    remote = tmp_path / "delivered.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    recorder = Recorder()
    remotes = CountingRemotes(str(tmp_path / "data"))
    policy = Policy(push_remote=str(remote))
    handlers = handlers_for(worktrees_dir, recorder, policy=policy, remotes=remotes)
    prepared = await prepare(handlers, recorder, repo)
    await handlers.handle(ready("t1"), RecordingDelivery())
    sha = commit(worktrees_dir / M / "t1-a1", {"one.py": "1\n"}, "one")
    await handlers.handle(done("t1", sha), RecordingDelivery())
    completed = MissionCompleted(
        **meta(), final_sha=sha, integration_branch=prepared.integration_branch, tasks_merged=1
    )
    await handlers.handle(completed, RecordingDelivery())
    assert git(remote, "rev-parse", prepared.integration_branch) == sha
    # A restart that replays everything, then the same completion delivered again.
    (delivered,) = [e for e in recorder.events if isinstance(e, BranchPushed)]
    assert (delivered.integration_branch, delivered.sha) == (prepared.integration_branch, sha)
    assert (delivered.remote, delivered.already_there) == (str(remote), False)
    assert delivered.causation_id == completed.event_id
    # A broker killed after the push, before its record was stored: started again, it
    # replays everything else, then the same completion comes again.
    unrecorded = [e for e in recorder.events if not isinstance(e, BranchPushed)]
    again = Recorder()
    restarted = handlers_for(worktrees_dir, again, policy=policy, remotes=remotes)
    restarted.projection.apply_all([*unrecorded, completed])
    await restarted.start_up()
    await restarted.handle(completed, RecordingDelivery())
    assert remotes.outcomes == ["pushed", "already_pushed"]
    assert git(remote, "rev-parse", prepared.integration_branch) == sha
    # Recorded again under the same id (a stream that had it keeps the first).
    (repeated,) = [e for e in again.events if isinstance(e, BranchPushed)]
    assert repeated.already_there and repeated.event_id == delivered.event_id
    # With the delivery on the stream, a completion handled again does not look again.
    later = handlers_for(worktrees_dir, Recorder(), policy=policy, remotes=remotes)
    later.projection.apply_all([*recorder.events, completed])
    await later.start_up()
    await later.handle(completed, RecordingDelivery())
    assert remotes.outcomes == ["pushed", "already_pushed"]


async def test_a_push_to_a_branch_someone_else_moved_is_refused(
    repo: Path,
    worktrees_dir: Path,
    tmp_path: Path,
    commit: Callable[..., str],
    git: Callable[..., str],
) -> None:
    remote = tmp_path / "delivered.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    recorder = Recorder()
    handlers = handlers_for(
        worktrees_dir,
        recorder,
        policy=Policy(push_remote=str(remote)),
    )
    prepared = await prepare(handlers, recorder, repo)
    other = commit(repo, {"elsewhere.txt": "x\n"}, "someone else's work")
    git(repo, "push", "-q", str(remote), f"{other}:refs/heads/{prepared.integration_branch}")
    completed = MissionCompleted(
        **meta(),
        final_sha=prepared.base_sha,
        integration_branch=prepared.integration_branch,
        tasks_merged=0,
    )
    with pytest.raises(Exception, match="someone else moved it"):
        await handlers.handle(completed, RecordingDelivery())
    assert not [e for e in recorder.events if isinstance(e, BranchPushed | BranchPushFailed)]
    given_up = REGISTRY.get_sample_value("aether_pushes_total", {"result": "given_up"}) or 0.0
    delivery = RecordingDelivery()
    delivery.num_delivered = 3  # the last attempt: given up and recorded, not retried
    await handlers.handle(completed, delivery)
    assert REGISTRY.get_sample_value("aether_pushes_total", {"result": "given_up"}) == given_up + 1
    assert git(remote, "rev-parse", prepared.integration_branch) == other
    (failed,) = [e for e in recorder.events if isinstance(e, BranchPushed | BranchPushFailed)]
    assert isinstance(failed, BranchPushFailed)
    assert (failed.integration_branch, failed.sha) == (
        prepared.integration_branch,
        prepared.base_sha,
    )
    assert failed.remote == str(remote) and "someone else moved it" in failed.reason
    # Given up, a completion handled again does nothing; a person who put the branch back
    # asks for the delivery again, and the result is pushed, recorded under the retry.
    await handlers.handle(completed, RecordingDelivery())
    assert git(remote, "rev-parse", prepared.integration_branch) == other
    git(remote, "update-ref", "-d", f"refs/heads/{prepared.integration_branch}")
    retry = DeliveryRetryRequested(**meta(), requested_by="ada")
    await handlers.handle(retry, RecordingDelivery())
    assert git(remote, "rev-parse", prepared.integration_branch) == prepared.base_sha
    pushed = recorder.events[-1]
    assert isinstance(pushed, BranchPushed) and not pushed.already_there
    assert pushed.causation_id == retry.event_id
    assert pushed.event_id not in {e.event_id for e in recorder.events[:-1]}
    # Delivered now: the same request again (a redelivery) pushes nothing more.
    handled = len(recorder.events)
    await handlers.handle(retry, RecordingDelivery())
    assert len(recorder.events) == handled


async def test_a_cancel_heard_ahead_withholds_the_merge_once_and_a_restart_records_it_once(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    """The cancel is heard before the ordered consumer reaches the result stored ahead of
    it: nothing lands, the stream says why, a redelivery does nothing. A broker killed
    between hearing and recording records it after its restart, under the same id."""
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    await handlers.handle(ready("t1"), RecordingDelivery())
    head = git(repo, "rev-parse", prepared.integration_branch)
    sha = commit(worktrees_dir / M / "t1-a1", {"late.py": "1\n"}, "late work")
    result = done("t1", sha)
    cancel = MissionCancelled(**meta(), reason="not needed", requested_by="alice")
    # The stream as a restarted broker replays it: the result stored before the cancel.
    stream = [*handlers.projection.state.mission(M).ready.values(), *recorder.events, result]
    stream.append(cancel)

    handlers.hear_cancel(cancel)
    await handlers.handle(result, RecordingDelivery())
    (withheld,) = recorder.of(MergeWithheld)
    assert isinstance(withheld, MergeWithheld)
    assert (withheld.task_id, withheld.commit_sha, withheld.integration_sha) == ("t1", sha, head)
    assert withheld.reason == "the mission was cancelled by alice: not needed"
    assert not recorder.of(BranchMerged)
    assert git(repo, "rev-parse", prepared.integration_branch) == head
    await handlers.handle(result, RecordingDelivery())
    await handlers.handle(cancel, RecordingDelivery())
    assert len(recorder.of(MergeWithheld)) == 1 and not handlers.cancels

    # Restarted before recording: the replay has the result and the cancel, not the record.
    again = Recorder()
    restarted = handlers_for(worktrees_dir, again)
    restarted.projection.apply_all(stream)
    await restarted.handle(result, RecordingDelivery())
    (recorded,) = again.of(MergeWithheld)
    assert recorded.event_id == withheld.event_id
    assert git(repo, "rev-parse", prepared.integration_branch) == head
    # Restarted after recording: nothing more.
    restarted.projection.apply(recorded)
    await restarted.handle(result, RecordingDelivery())
    assert len(again.events) == 1


async def test_a_merge_a_killed_broker_made_before_the_cancel_is_reported_as_merged(
    repo: Path, worktrees_dir: Path, commit: Callable[..., str], git: Callable[..., str]
) -> None:
    """The branch moved, then the broker died before BranchMerged, then the mission was
    cancelled: after the restart the stream says what the branch holds, not withheld."""
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    prepared = await prepare(handlers, recorder, repo)
    await handlers.handle(ready("t1"), RecordingDelivery())
    sha = commit(worktrees_dir / M / "t1-a1", {"landed.py": "1\n"}, "landed")
    GitRepositories().merge(
        prepared.repository_path,
        prepared.integration_branch,
        since_sha=prepared.base_sha,
        mission_id=M,
        task_id="t1",
        attempt=1,
        commit_sha=sha,
        now=NOW,
    )
    result = done("t1", sha)
    handlers.projection.apply(result)
    await handlers.handle(MissionCancelled(**meta()), RecordingDelivery())
    await handlers.handle(result, RecordingDelivery())
    (merged,) = recorder.of(BranchMerged)
    assert isinstance(merged, BranchMerged) and merged.merge_sha == sha
    assert not recorder.of(MergeWithheld)
