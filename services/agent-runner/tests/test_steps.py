"""The runner's own blocking steps within a deadline (``adapters.steps``), with threads
really stuck in the kernel: each opens a FIFO no one writes to until the test does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.adapters import attempt as attempt_module
from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.journal import AttemptLock, state_dir
from aether_agent_runner.adapters.steps import Step, Steps, StepStuck
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_events import AgentFailed, Event, WorkspaceReady
from aether_llm import make_client

from .conftest import TIMEOUT, Model, TaskRepo, Turn


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO whose reader waits in ``open`` until ``let_go`` opens it for writing."""
    path = tmp_path / "never-answers"
    os.mkfifo(path)
    yield path
    let_go(path)  # a thread a failed test left waiting is not left for good


def let_go(path: Path) -> None:
    """The reader's ``open`` returns, and it reads a blank line: a journal with no record,
    which a preparation goes on from as from none."""
    # No reader waits (ENXIO), or the FIFO is gone: nothing to let go.
    with contextlib.suppress(OSError):
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(writer, b"\n")
        finally:
            os.close(writer)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_step_past_its_deadline_is_given_up_and_its_thread_kept_until_it_returns(
    fifo: Path,
) -> None:
    """The caller gets ``StepStuck`` once the deadline passes; the runner is not ready
    while the thread is out, not live once it has been out a second deadline, and both
    again once it returns, whose result goes to ``late`` (what it took, released)."""
    clock = Clock()
    steps = Steps(0.3, monotonic=clock)
    loop = asyncio.get_running_loop()
    returned: asyncio.Future[bytes] = loop.create_future()
    seen: list[Step] = []

    def read(step: Step, path: Path) -> bytes:
        seen.append(step)
        return path.read_bytes()

    with pytest.raises(StepStuck) as stuck:
        await steps.run("preparation", "m/t/a1", read, fifo, late=returned.set_result)
    assert str(stuck.value) == "preparation of attempt m/t/a1 has not finished in 0.3 s"
    assert seen[0].abandoned.is_set()
    ready, why = steps.ready()
    assert not ready and why.startswith("preparation of attempt m/t/a1 stuck in a worker thread")
    assert steps.live() == (True, "ok")
    clock.now += 0.5
    assert not steps.live()[0]

    let_go(fifo)
    assert await asyncio.wait_for(returned, TIMEOUT) == b"\n"
    await asyncio.wait_for(stuck.value.thread, TIMEOUT)
    assert steps.ready() == (True, "ok") and steps.live() == (True, "ok")
    assert steps.stuck() == []


async def test_a_step_within_its_deadline_returns_its_result_or_raises_its_error() -> None:
    steps = Steps(5.0)

    def fail(step: Step) -> None:
        raise ValueError("no")

    assert await steps.run("commit", "m/t/a1", lambda step, x: x + 1, 1) == 2
    with pytest.raises(ValueError, match="no"):
        await steps.run("commit", "m/t/a1", fail)
    assert steps.ready() == (True, "ok")


async def test_a_given_up_preparation_fails_the_attempt_and_changes_nothing_more(
    task_repo: TaskRepo,
    workspace_ready: Callable[..., WorkspaceReady],
    model: Callable[[dict[str, list[Turn]]], Model],
    fifo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attempt's journal is a FIFO: its preparation waits in ``open``. Past the step
    timeout the attempt fails, retryably, with the reason, nothing is emitted for it, and
    the thread, let go at last, neither resets the worktree nor begins the journal; the
    attempt's lock is released as it returns."""
    ready = workspace_ready(task_repo, "m-stuck")
    directory = state_dir(attempt_module._git_dir(ready, Path(ready.worktree_path)))
    journal = directory / "transcript.jsonl"
    os.link(fifo, journal)
    (task_repo.worktree / "stray.txt").write_text("left by an earlier attempt\n")
    attempts = Attempts(
        runtimes=lambda name: BuiltinRuntime(make_client(model({}).llm())),
        settings=AgentSettings(commands=(), step_timeout_seconds=0.5),
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )
    returned = asyncio.Event()
    real_returned = attempts.steps._returned

    def note_return(*args: Any) -> None:
        real_returned(*args)
        returned.set()

    monkeypatch.setattr(attempts.steps, "_returned", note_return)
    emitted: list[Event] = []

    async def emit(event: Event) -> None:
        emitted.append(event)

    result = await asyncio.wait_for(attempts.work(ready, emit), TIMEOUT)
    assert isinstance(result, AgentFailed) and result.retryable
    assert result.reason == "preparation of attempt m-stuck/t1/a1 has not finished in 0.5 s"
    assert emitted == []
    assert not attempts.steps.ready()[0]
    # The stuck thread holds the attempt's lock.
    assert not AttemptLock(directory).acquire()

    let_go(fifo)
    await asyncio.wait_for(returned.wait(), TIMEOUT)
    lock = AttemptLock(directory)
    assert lock.acquire()
    lock.release()
    assert attempts.steps.ready() == (True, "ok")
    assert emitted == []
    assert (task_repo.worktree / "stray.txt").exists()
    assert stat.S_ISFIFO(os.lstat(journal).st_mode)
    assert not journal.with_suffix(".tmp").exists()


def test_a_runner_stopped_with_a_thread_stuck_exits_without_waiting_for_it(
    fifo: Path,
) -> None:
    """The interpreter waits for every worker thread at its exit (``asyncio.run`` first of
    all): with one stuck in the kernel, a stopped runner never ended. Its last stop hook
    ends it at once."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from aether_agent_runner.adapters.steps import Steps, StepStuck, exit_past_stuck_threads

        def read(step):
            return Path({str(fifo)!r}).read_bytes()

        async def main():
            steps = Steps(0.2)
            try:
                await steps.run("preparation", "m/t/a1", read)
            except StepStuck:
                pass
            await exit_past_stuck_threads(steps)()

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=TIMEOUT, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert b"leaving threads of given-up steps behind" in done.stderr + done.stdout
