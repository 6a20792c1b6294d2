"""An attempt's preparation: what happens between WorkspaceReady and the first model call.

A fresh built-in attempt takes its lock, reads its journal, looks for a commit of its own
and begins its conversation (reset, repository map, first record) in one hand-off to a
worker thread; its own bus connection, asked of the authorizer through the auth callout,
is opened once it has begun (or a heartbeat's interval into a long preparation), and a
refusal there ends the attempt at once and hands its delivery back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from aether_agent_runner.adapters import attempt as attempt_module
from aether_agent_runner.adapters import git as git_module
from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.journal import AttemptLock, Journal, state_dir
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.domain import State, evolve
from aether_agent_runner.handlers import Handlers
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_agent_runner.testing import Edit, Finish, Hold, ScriptedRuntime
from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentStarted,
    Event,
    WorkspaceReady,
)
from aether_events.testing import InMemoryPublisher
from aether_llm import make_client
from aether_runtime import Delivery, Projection
from aether_runtime.attempt_auth import CredentialRefused

from .conftest import TIMEOUT, Model, TaskRepo, Turn, git


async def test_a_fresh_builtin_attempt_is_prepared_in_one_hand_off(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    reply: Callable[..., Turn],
    tool: Callable[..., dict[str, Any]],
    finish: Callable[..., Turn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lock, journal, own commit and the conversation's beginning (which resets what no
    journal accounts for) all happen in the one hand-off before the first model call;
    the runtime does not begin the conversation again."""
    scripted = model(
        {"t1": [reply(tool("write_file", path="src/app.py", content="x = 1\n")), finish()]}
    )
    handed: list[str] = []
    before_first_call: list[list[str]] = []
    scripted.script.on_call = lambda task, turn: (
        before_first_call.append(list(handed)) if turn == 0 else None
    )
    real_to_thread = asyncio.to_thread

    async def to_thread(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        # The runner's own hand-offs (the SDK makes one of its own at its first call).
        if getattr(function, "__module__", "").startswith("aether_agent_runner"):
            handed.append(function.__name__)
        return await real_to_thread(function, *args, **kwargs)

    # Left by an earlier attempt in this (pooled) worktree: reset before the agent starts.
    (task_repo.worktree / "stray.txt").write_text("not this attempt's\n")
    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    attempts = builtin_attempts(scripted)
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    result = await attempts.work(workspace_ready(task_repo, "m-prepared"), emit)

    assert isinstance(result, AgentCompleted), result
    assert before_first_call == [["_prepare"]]
    assert isinstance(emitted[0], AgentStarted)
    assert result.files_changed == ["src/app.py"]
    assert not (task_repo.worktree / "stray.txt").exists()
    shown = git(task_repo.repo, "show", "--name-only", "--format=", result.commit_sha)
    assert shown.split() == ["src/app.py"]


async def test_an_attempts_own_steps_are_timed(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    reply: Callable[..., Turn],
    tool: Callable[..., dict[str, Any]],
    finish: Callable[..., Turn],
) -> None:
    """The preparation, the finish check and the commit each add one observation to
    ``aether_agent_step_duration_seconds`` (where an attempt's time goes besides its
    model calls and tools, which have their own)."""
    scripted = model({"t1": [reply(tool("write_file", path="timed.py", content="x\n")), finish()]})
    steps = ("preparation", "finish_check", "commit")

    def observed() -> list[float]:
        return [
            REGISTRY.get_sample_value("aether_agent_step_duration_seconds_count", {"step": s})
            or 0.0
            for s in steps
        ]

    before = observed()

    async def emit(event: Event) -> None:
        pass

    ready = workspace_ready(task_repo, "m-timed")
    result = await builtin_attempts(scripted).work(ready, emit, first_delivery=True)

    assert isinstance(result, AgentCompleted), result
    assert [after - earlier for after, earlier in zip(observed(), before, strict=True)] == [1, 1, 1]


# --- a refused credential ------------------------------------------------------------------


class RefusingBus:
    """The publisher an attempt gets when the bus refuses its credential: opening its
    connection, and every publish, raises ``CredentialRefused`` once the attempt is at
    work (the callout's answer arriving while the worktree is prepared and the agent
    has started)."""

    def __init__(self, at_work: asyncio.Event) -> None:
        self._at_work = at_work
        self.tried: list[Event] = []
        self.opened = 0

    async def open(self) -> None:
        self.opened += 1
        await self._at_work.wait()
        raise CredentialRefused("the attempt is not open")

    async def publish(self, event: Event, **options: Any) -> Any:
        self.tried.append(event)
        await self._at_work.wait()
        raise CredentialRefused("the attempt is not open")


async def test_a_refused_credential_stops_the_attempt_and_hands_it_back(
    task_repo: TaskRepo, workspace_ready: Callable[..., WorkspaceReady]
) -> None:
    """The attempt's connection is opened as the attempt starts; refused, the attempt
    is cancelled (not left holding its lane and worktree,
    its agent spending model calls nothing could report), what it emitted is dropped,
    and the delivery is handed back for later (``RetryLater``)."""
    hold = Hold()
    runtime = ScriptedRuntime([hold])
    bus = RefusingBus(hold.reached)
    attempts = Attempts(
        runtimes=lambda name: runtime,
        settings=AgentSettings(commands=()),
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )
    # No heartbeat falls due during the test: the refusal comes from opening.
    handlers = Handlers(Projection(State(), evolve), lambda: bus, attempts, heartbeat_seconds=60)
    refused_before = refusals()
    ready = workspace_ready(task_repo, "m-refused")

    with pytest.raises(CredentialRefused):
        # A bound, not an expectation: before, the attempt never ended.
        await asyncio.wait_for(handlers.handle(ready, Delivery(1, 1, 0)), 4 * TIMEOUT)

    assert hold.reached.is_set() and len(runtime.jobs) == 1
    assert len(handlers.running) == 0
    assert refusals() == refused_before + 1
    # Refused at the opening of its connection, before any heartbeat was due.
    assert bus.opened == 1
    assert not any(isinstance(event, AgentHeartbeat) for event in bus.tried)
    assert not any(isinstance(event, AgentCompleted | AgentFailed) for event in bus.tried)
    git_dir = attempt_module._git_dir(ready, Path(ready.worktree_path))
    lock = AttemptLock(attempt_module.state_dir(git_dir))
    assert lock.acquire()
    lock.release()


class OpeningBus(InMemoryPublisher):
    """A bus that grants the attempt's credential: notes, as its connection is opened,
    whether the attempt's preparation had ended."""

    def __init__(self, prepared: asyncio.Event) -> None:
        super().__init__()
        self._prepared = prepared
        self.opened_prepared: list[bool] = []

    async def open(self) -> None:
        self.opened_prepared.append(self._prepared.is_set())


def noted_preparation(monkeypatch: pytest.MonkeyPatch, taking: float = 0.0) -> asyncio.Event:
    """Set once an attempt's preparation (its hand-off to a worker thread) has ended;
    ``taking``: how long the preparation is made to take."""
    prepared = asyncio.Event()
    loop = asyncio.get_running_loop()
    real_prepare = Attempts._prepare

    def prepare(self: Attempts, *args: Any, **kwargs: Any) -> Any:
        time.sleep(taking)
        try:
            return real_prepare(self, *args, **kwargs)
        finally:
            loop.call_soon_threadsafe(prepared.set)

    monkeypatch.setattr(Attempts, "_prepare", prepare)
    return prepared


@pytest.mark.parametrize("beat_seconds", [60.0, 0.2], ids=["quick", "slow-preparation"])
async def test_the_attempts_connection_is_opened_once_it_has_begun(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    monkeypatch: pytest.MonkeyPatch,
    beat_seconds: float,
) -> None:
    """Opened as the preparation began, the connection's handshake held up the
    preparation's worker thread: it is opened once the attempt has begun (AgentStarted
    emitted), or, should the preparation outlast a heartbeat's interval, then (and the
    attempt completes either way)."""
    prepared = noted_preparation(monkeypatch, taking=0.0 if beat_seconds > 1 else 1.0)
    runtime = ScriptedRuntime([Edit("src/app.py", "x = 1\n"), Finish("done")])
    bus = OpeningBus(prepared)
    attempts = Attempts(
        runtimes=lambda name: runtime,
        settings=AgentSettings(commands=()),
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )
    handlers = Handlers(
        Projection(State(), evolve), lambda: bus, attempts, heartbeat_seconds=beat_seconds
    )
    ready = workspace_ready(task_repo, "m-opened")

    await asyncio.wait_for(handlers.handle(ready, Delivery(1, 1, 0)), 4 * TIMEOUT)

    assert bus.opened_prepared == [beat_seconds > 1]
    assert len(bus.of(AgentCompleted)) == 1


def refusals() -> float:
    found = REGISTRY.get_sample_value(
        "aether_agent_results_total", {"result": "credential_refused"}
    )
    return found or 0.0


# --- one scan fewer -------------------------------------------------------------------------


def counted_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commit each scan of a worktree compares it with, in order, from now on; a
    scan of only the ways to what the file tools wrote is marked ``(ways)``."""
    scans: list[str] = []
    real_state = git_module._state

    def counted(git_dir: Any, at: Any, max_hash: int, written: Any = None) -> Any:
        scans.append(at.decode() + (" (ways)" if written is not None else ""))
        return real_state(git_dir, at, max_hash, written)

    monkeypatch.setattr(git_module, "_state", counted)
    return scans


def builtin_attempts(scripted: Model) -> Attempts:
    return Attempts(
        runtimes=lambda name: BuiltinRuntime(make_client(scripted.llm())),
        settings=AgentSettings(commands=()),
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )


async def test_the_commit_takes_the_finish_checks_look_at_the_worktree_not_a_new_scan(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    reply: Callable[..., Turn],
    tool: Callable[..., dict[str, Any]],
    finish: Callable[..., Turn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each scan reads every file's status, so a worktree of thousands of files pays for
    each: a built-in attempt scans at its reset and at the finish check, and commits what
    that check found (no tool call ran in between); a finish after a tool call that
    followed the check is committed from a scan of its own (below)."""
    scripted = model(
        {"t1": [reply(tool("write_file", path="src/app.py", content="x = 1\n")), finish()]}
    )
    scans = counted_scans(monkeypatch)
    attempts = builtin_attempts(scripted)
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    ready = workspace_ready(task_repo, "m-one-scan")
    result = await attempts.work(ready, emit)

    assert isinstance(result, AgentCompleted), result
    assert scans == [ready.base_sha, ready.base_sha]  # the reset, the finish check
    assert result.files_changed == ["src/app.py"]
    shown = git(task_repo.repo, "show", "--name-only", "--format=", result.commit_sha)
    assert shown.split() == ["src/app.py"]


async def test_a_first_delivery_starts_from_the_brokers_checkout_without_a_reset_scan(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    reply: Callable[..., Turn],
    tool: Callable[..., dict[str, Any]],
    finish: Callable[..., Turn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WorkspaceReady's first delivery, no journal and the branch at the base: nothing
    ran in the worktree since the broker checked it out and verified it, so it is not
    scanned again before the agent starts, and the finish check walks only the ways to
    what the file tools wrote. Anything of an earlier run (a journal, here another
    attempt's) and it is reset and checked whole as before."""
    scans = counted_scans(monkeypatch)

    async def emit(event: Event) -> None:
        pass

    turns = [reply(tool("write_file", path="src/app.py", content="x = 1\n")), finish()]
    ready = workspace_ready(task_repo, "m-first")
    first = await builtin_attempts(model({"t1": turns})).work(ready, emit, first_delivery=True)
    assert isinstance(first, AgentCompleted), first
    assert scans == [f"{ready.base_sha} (ways)"]  # the finish check's alone

    scans.clear()
    git(task_repo.worktree, "reset", "-q", "--hard", ready.base_sha)
    journal = Journal(state_dir(task_repo.git_dir))
    journal.start({"kind": "begin", "identity": {"mission": "m-other", "task": "t1"}})
    (task_repo.worktree / "stray.txt").write_text("an earlier run's\n")
    again = workspace_ready(task_repo, "m-again")
    second = await builtin_attempts(model({"t1": turns})).work(again, emit, first_delivery=True)
    assert isinstance(second, AgentCompleted), second
    assert scans == [again.base_sha, again.base_sha]  # the reset, the finish check
    assert not (task_repo.worktree / "stray.txt").exists()


async def test_a_finish_after_a_tool_call_that_followed_the_last_check_is_scanned_again(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    reply: Callable[..., Turn],
    tool: Callable[..., dict[str, Any]],
    finish: Callable[..., Turn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first finish is checked (nothing changed: objected to), the agent then writes
    a file and finishes again, unchecked (one objection is all it gets): the look from
    the check is older than the write, so the commit scans for itself and holds it."""
    scripted = model(
        {
            "t1": [
                finish(),
                reply(tool("write_file", path="src/late.py", content="late = 1\n")),
                finish(),
            ]
        }
    )
    scans = counted_scans(monkeypatch)
    attempts = builtin_attempts(scripted)

    async def emit(event: Event) -> None:
        pass

    ready = workspace_ready(task_repo, "m-late-write")
    result = await attempts.work(ready, emit)

    assert isinstance(result, AgentCompleted), result
    assert len(scans) == 3  # the reset, the first finish's check, the commit
    assert result.files_changed == ["src/late.py"]


def test_a_look_taken_before_the_branch_moved_is_not_committed(tmp_path: Path) -> None:
    """``commit_all`` takes a caller's snapshot only if it was taken against the head it
    commits on: one from before the last commit would commit that commit's changes again
    and miss the new ones, so the worktree is scanned afresh."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    task = git_module.GitDir.clone(repo, "main")
    (repo / "b.txt").write_text("b\n")
    early = git_module.snapshot(task)
    first, changed = git_module.commit_all(task, "first\n", scanned=early)
    assert first is not None and changed == ["b.txt"]
    (repo / "c.txt").write_text("c\n")

    second, changed = git_module.commit_all(task, "second\n", scanned=early)

    assert second is not None and changed == ["c.txt"]
    assert git(repo, "show", "--name-only", "--format=", second).split() == ["c.txt"]


# --- an attempt taken over from a runner killed mid-commit ------------------------------


async def test_an_attempt_taken_over_removes_the_locks_its_killed_runner_left(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    reply: Callable[..., Turn],
    tool: Callable[..., dict[str, Any]],
    finish: Callable[..., Turn],
) -> None:
    """A runner killed while it committed leaves its task branch's ref lock and its
    worktree's index lock. The runner that takes the attempt over (a redelivery) holds
    the attempt's lock, so nobody else writes either: it removes them, and its commit
    goes through. Before, every commit of the attempt failed on them, its failed step
    started the liveness clock and the attempt waited for the heartbeat timeout (a chaos
    trial: 118.7 s)."""
    ready = workspace_ready(task_repo, "m-taken-over")
    git_dir = attempt_module._git_dir(ready, Path(ready.worktree_path))
    ref_lock = Path(git_dir.common) / (git_dir.ref.decode() + ".lock")
    index_lock = Path(git_dir.admin) / "index.lock"
    for lock in (ref_lock, index_lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_bytes(b"")
    scripted = model(
        {"t1": [reply(tool("write_file", path="src/app.py", content="x = 2\n")), finish()]}
    )

    async def emit(event: Event) -> None:
        pass

    result = await builtin_attempts(scripted).work(ready, emit, first_delivery=False)

    assert isinstance(result, AgentCompleted), result
    assert not ref_lock.exists() and not index_lock.exists()
    assert git(task_repo.repo, "rev-parse", ready.branch) == result.commit_sha


async def test_a_first_delivery_leaves_locks_alone(
    task_repo: TaskRepo, workspace_ready: Callable[..., WorkspaceReady]
) -> None:
    """No runner had the attempt before its first delivery: a lock then is not one a
    runner of it left, and is not touched."""
    ready = workspace_ready(task_repo, "m-first")
    git_dir = attempt_module._git_dir(ready, Path(ready.worktree_path))
    index_lock = Path(git_dir.admin) / "index.lock"
    index_lock.write_bytes(b"")
    attempts = Attempts(
        runtimes=lambda name: ScriptedRuntime([Finish("nothing to do")]),
        settings=AgentSettings(commands=()),
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )

    async def emit(event: Event) -> None:
        pass

    await attempts.work(ready, emit, first_delivery=True)
    assert index_lock.exists()
