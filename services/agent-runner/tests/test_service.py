"""The runner as a service: real NATS JetStream, real worktrees, a scripted model over HTTP.

Each test publishes WorkspaceReady the way the git broker does and follows the mission's
events (and telemetry) from the streams.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    MissionCancelled,
    TaskTimedOut,
    TranscriptEntries,
    TranscriptRecorded,
    UsageRecorded,
    new_event_id,
)
from aether_llm import Reply, text_block
from aether_sandbox import SandboxSettings

from .conftest import QUICK_PYTEST

# Commands the tests run find the Python they run on (its virtual environment's bin).
pytestmark = pytest.mark.usefixtures("python_on_path")


def control_meta(mission_id: str) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": f"corr-{mission_id}",
    }


def git_log(repo: Any, ref: str) -> str:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(repo.repo), "log", "-1", "--format=%B", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def test_a_task_that_reads_edits_runs_a_command_and_finishes(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    scripted = model(
        {
            "t1": [
                reply(tool("search", pattern="def greet")),
                reply(tool("read_file", path="src/app.py", start_line=1, end_line=2)),
                reply(
                    tool(
                        "edit_file",
                        path="src/app.py",
                        old_text='"Hello, "',
                        new_text='"Hello there, "',
                    ),
                    tool(
                        "edit_file",
                        path="tests/test_app.py",
                        old_text='"Hello, Ada"',
                        new_text='"Hello there, Ada"',
                    ),
                ),
                # No plugin autoloaded: each installed beside pytest costs its start.
                reply(tool("run_command", command=f"{QUICK_PYTEST} tests")),
                finish("greet says hello there; tests updated and passing"),
            ]
        }
    )
    # Beats every 50 ms: the first one falls due an interval after the attempt starts,
    # well within an attempt that runs the tests in the sandbox.
    await start_runner(scripted, heartbeat_seconds=0.05)
    ready = workspace_ready(task_repo, mission_id)

    await publish(ready)
    done = await events.first(AgentCompleted)

    assert done.commit_sha == task_repo_head(task_repo)
    assert done.files_changed == ["src/app.py", "tests/test_app.py"]
    # The plan scoped the task to src/app.py: the test it also changed is scope drift.
    assert done.files_outside_scope == ["tests/test_app.py"]
    assert done.summary == "greet says hello there; tests updated and passing"
    assert done.usage.input_tokens == 500 and done.usage.cost_usd is not None
    assert done.causation_id == ready.event_id
    # All told, as no progress report (taken every few seconds) need have counted them.
    assert (done.turns, done.tool_calls) == (5, 6)
    message = git_log(task_repo, task_repo.branch)
    for trailer in (
        f"Aether-Mission: {mission_id}",
        "Aether-Task: t1",
        "Aether-Attempt: 1",
        "Aether-Model: claude-sonnet-5-5",
        f"Aether-Cost-USD: {done.usage.cost_usd:.6f}",
    ):
        assert trailer in message
    assert "1 passed" in str(scripted.script.requests[4]["messages"][-1]["content"])
    started = events.of(AgentStarted)
    assert len(started) == 1 and started[0].model == "claude-sonnet-5-5"
    assert started[0].runtime == "builtin"
    # The tests ran inside the sandbox, and the event says so.
    assert started[0].sandbox == "bubblewrap"
    usage = events.of(UsageRecorded)
    assert [u.step for u in usage] == [f"agent:t1:a1:turn{n}" for n in range(1, 6)]
    assert events.of(AgentProgress) and events.of(AgentHeartbeat)
    assert events.of(AgentProgress)[-1].tool_calls >= 4
    trail = [
        type(e).__name__
        for e in events.events
        if not isinstance(
            e, AgentHeartbeat | AgentProgress | TranscriptRecorded | TranscriptEntries
        )
    ]
    assert trail == ["WorkspaceReady", "AgentStarted", *["UsageRecorded"] * 5, "AgentCompleted"]


def task_repo_head(repo: Any) -> str:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(repo.repo), "rev-parse", repo.branch],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.parametrize(
    ("settings", "turn", "reason"),
    [
        ({"max_turns": 2}, None, "turn limit reached: 2 model calls of 2 allowed"),
        ({"max_tokens": 1000}, 800, "token limit reached: 1,640 tokens of 1,000 allowed"),
        ({"max_cost_usd": 0.001}, 1000, "cost limit reached: $0.0022 spent of $0.0010 allowed"),
        ({"max_seconds": 1.0}, "slow", "wall-time limit reached: 1.0 s of 1 s allowed"),
    ],
    ids=["turns", "tokens", "cost", "wall-time"],
)
async def test_each_limit_ends_the_task_with_agent_failed(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    settings: dict[str, Any],
    turn: Any,
    reason: str,
) -> None:
    if turn == "slow":

        def step(request: dict[str, Any]) -> Reply:
            return Reply([text_block("…")], "end_turn", 1, 1, delay_seconds=30)

    else:
        step = reply(tool("list_dir", path="."), input_tokens=turn or 100, output_tokens=20)
    await start_runner(model({"t1": [step] * 10}), **settings)

    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed)

    if turn == "slow":
        # The time measured when the limit cut the call: 1.0 s, or a little more when the
        # event loop woke late on a loaded machine.
        cut = re.fullmatch(r"wall-time limit reached: (\d+\.\d) s of 1 s allowed", failed.reason)
        assert cut is not None and 1.0 <= float(cut.group(1)) < 5.0, failed.reason
    else:
        assert failed.reason == reason
    assert failed.retryable is False
    assert not events.of(AgentCompleted)
    if settings == {"max_turns": 2}:
        # The result counts the attempt's model replies and tool calls, all told.
        assert (failed.turns, failed.tool_calls) == (2, 2)


async def test_the_tasks_own_cost_cap_applies(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
) -> None:
    step = reply(tool("list_dir", path="."), input_tokens=1000, output_tokens=20)
    await start_runner(model({"t1": [step] * 10}), max_cost_usd=100.0)
    await publish(workspace_ready(task_repo, mission_id, max_cost_usd=0.004))
    failed = await events.first(AgentFailed)
    assert failed.reason == "cost limit reached: $0.0044 spent of $0.0040 allowed"


async def test_an_empty_change_is_a_failure_with_the_agents_reason(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    finish: Any,
) -> None:
    await start_runner(model({"t1": [finish("already done"), finish("it was already done")]}))
    await publish(workspace_ready(task_repo, mission_id))
    failed = await events.first(AgentFailed)
    assert failed.reason == ("the agent finished without changing any file: it was already done")
    assert failed.retryable


async def test_cancelling_the_mission_stops_a_model_call_within_seconds(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    scripted = model({"t1": [reply(tool("write_file", path="a.txt", content="a")), finish()]})
    gate = scripted.script.gates[("t1", 1)] = threading.Event()
    arrived = signal_on(scripted, "t1", 1)
    runner = await start_runner(scripted)
    await publish(workspace_ready(task_repo, mission_id))
    await arrived.wait()  # the agent waits on its second model call

    # The model call is held until the gate opens (after this), so an AgentFailed at all
    # shows the cancellation stopped the attempt mid-call.
    await publish(MissionCancelled(**control_meta(mission_id), reason="not needed any more"))
    failed = await events.first(AgentFailed, timeout=60)
    gate.set()

    assert failed.reason == "stopped: the mission was cancelled: not needed any more"
    assert not failed.retryable
    assert len(runner.handlers.running) == 0
    assert (task_repo.worktree / "a.txt").exists()  # the worktree is left to the broker
    assert not events.of(AgentCompleted)


async def test_cancelling_the_mission_kills_a_running_command(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
) -> None:
    report = await PidReport().start()
    marker = f"cancel-me-{mission_id}"
    code = (
        "import os, socket, time; "
        f"s = socket.create_connection(('127.0.0.1', {report.port})); "
        "s.sendall(str(os.getpid()).encode()); s.close(); time.sleep(120)"
    )
    command = f'python -c "{code}" {marker}'
    scripted = model({"t1": [reply(tool("run_command", command=command))]})
    # The host's network (an operator's explicit choice) lets the command report in; the
    # pid it reports is one of its sandbox, so the test finds its host pid by its marker.
    await start_runner(scripted, sandbox=SandboxSettings(network="host"))
    await publish(workspace_ready(task_repo, mission_id))
    await report.received()
    (pid,) = running(marker)

    # The command sleeps 120 s: an AgentFailed well before that shows it was stopped.
    await publish(MissionCancelled(**control_meta(mission_id)))
    failed = await events.first(AgentFailed, timeout=60)

    assert failed.reason == "stopped: the mission was cancelled"
    assert not alive(pid)


async def test_a_timed_out_attempt_is_stopped_and_others_go_on(
    tmp_path: Path,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    first, second = make_repo(tmp_path, "t1"), make_repo(tmp_path, "t2")
    scripted = model(
        {
            "t1": [reply(tool("write_file", path="a", content="a")), finish()],
            "t2": [reply(tool("write_file", path="b", content="b")), finish()],
        }
    )
    gates = {task: threading.Event() for task in ("t1", "t2")}
    for task, gate in gates.items():
        scripted.script.gates[(task, 1)] = gate
    both = signal_after(scripted, {("t1", 1), ("t2", 1)})
    await start_runner(scripted, concurrency=2)
    await publish(workspace_ready(first, mission_id, "t1"))
    await publish(workspace_ready(second, mission_id, "t2"))
    await both.wait()

    await publish(TaskTimedOut(**control_meta(mission_id), task_id="t1", attempt=1))
    failed = await events.first(AgentFailed, timeout=10)
    gates["t2"].set()
    done = await events.first(AgentCompleted)
    gates["t1"].set()

    assert (failed.task_id, failed.reason) == (
        "t1",
        "stopped: the scheduler timed this attempt out",
    )
    assert done.task_id == "t2"


async def after_everything_before(
    tmp_path: Path,
    make_repo: Callable[..., Any],
    publish: Callable[..., Any],
    watch: Callable[..., Any],
    workspace_ready: Callable[..., Any],
) -> None:
    """A barrier: a marker task of another mission, published now, has completed. With a
    single lane the runner handles deliveries in stream order, so everything published
    before the marker has been handled."""
    marker_mission = f"m-marker-{new_event_id()[:8]}"
    log = await watch(marker_mission)
    await publish(workspace_ready(make_repo(tmp_path, "marker"), marker_mission, "marker"))
    await log.first(AgentCompleted)


async def test_a_workspace_ready_for_a_settled_attempt_runs_nothing(
    tmp_path: Path,
    task_repo: Any,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    watch: Callable[..., Any],
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    write = reply(tool("write_file", path="a", content="a"))
    scripted = model({"t1": [write, finish()], "marker": [write, finish()]})
    await start_runner(scripted, concurrency=1)
    await publish(workspace_ready(task_repo, mission_id))
    await events.first(AgentCompleted)

    await publish(workspace_ready(task_repo, mission_id))  # the same attempt once more
    await after_everything_before(tmp_path, make_repo, publish, watch, workspace_ready)

    assert len(events.of(AgentCompleted)) == 1 and len(events.of(AgentStarted)) == 1
    assert [call for call in scripted.script.calls if call.startswith("t1")] == ["t1:0", "t1:1"]


async def test_a_mission_cancelled_before_its_workspace_arrives_never_starts(
    tmp_path: Path,
    task_repo: Any,
    make_repo: Callable[..., Any],
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    watch: Callable[..., Any],
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    write = reply(tool("write_file", path="a", content="a"))
    scripted = model({"t1": [write, finish()], "marker": [write, finish()]})
    await publish(MissionCancelled(**control_meta(mission_id)))
    await start_runner(scripted, concurrency=1)
    await publish(workspace_ready(task_repo, mission_id))
    await after_everything_before(tmp_path, make_repo, publish, watch, workspace_ready)

    assert not [call for call in scripted.script.calls if call.startswith("t1")]
    assert not events.of(AgentStarted)


# --- helpers ------------------------------------------------------------------------


def signal_on(scripted: Any, task: str, turn: int) -> Any:
    return signal_after(scripted, {(task, turn)})


def signal_after(scripted: Any, wanted: set[tuple[str, int]]) -> Any:
    """An awaitable that completes once the model has received each (task, turn) call."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    seen: set[tuple[str, int]] = set()
    lock = threading.Lock()

    def on_call(task: str, turn: int) -> None:
        with lock:
            seen.add((task, turn))
            if wanted <= seen:
                loop.call_soon_threadsafe(event.set)

    scripted.script.on_call = on_call

    class Waiter:
        async def wait(self, timeout: float = 30.0) -> None:
            await asyncio.wait_for(event.wait(), timeout)

    return Waiter()


class PidReport:
    """A local TCP server a command reports its pid to, so the test knows it runs."""

    def __init__(self) -> None:
        self.port = 0
        self._pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def start(self) -> PidReport:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()
            if not self._pid.done():
                self._pid.set_result(int(data))
            writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def received(self, timeout: float = 30.0) -> int:
        try:
            return await asyncio.wait_for(self._pid, timeout)
        finally:
            self._server.close()


def running(marker: str) -> list[int]:
    """Host pids of the processes whose command line ends with ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv[-3:] and b"python" in argv[0]:
                found.append(int(entry))
    return found


def alive(pid: int, grace: float = 5.0) -> bool:
    """Whether ``pid`` is still alive ``grace`` seconds from now at the latest: a process
    sent SIGKILL takes a moment to die, and its pidfd turns readable when it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        readable, _, _ = select.select([fd], [], [], grace)
    finally:
        os.close(fd)
    return not readable


class AckedDespiteCancel:
    """The real publisher, except that a cancellation arriving while a publish waits for
    its acknowledgement is lost once the acknowledgement comes: what ``asyncio.wait_for``
    inside the NATS client does on Python 3.11 when the two meet."""

    def __init__(self, publish: Callable[..., Any]) -> None:
        self._publish = publish
        self.in_flight = asyncio.Event()

    async def publish(self, event: Any) -> Any:
        sent = asyncio.ensure_future(self._publish(event))
        self.in_flight.set()
        try:
            return await asyncio.shield(sent)
        except asyncio.CancelledError:
            return await sent


async def test_a_heartbeat_whose_cancellation_is_swallowed_still_stops(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """The agent's result is published after its heartbeat has stopped; a beat that only
    stopped on its cancellation went on forever when the cancellation met a publish's
    acknowledgement (an attempt cut by its wall-time limit was then never reported)."""
    runner = await start_runner(model({"t1": []}), heartbeat_seconds=0.0)
    handlers = runner.handlers
    wrapper = AckedDespiteCancel(publish)
    handlers._publisher = lambda: wrapper  # type: ignore[assignment,return-value]
    ready = workspace_ready(task_repo, mission_id)

    async def work_while_beating() -> None:
        async with handlers._heartbeat(ready):
            await events.first(AgentHeartbeat)
            wrapper.in_flight.clear()
            await wrapper.in_flight.wait()  # a beat is waiting for its acknowledgement

    body = asyncio.create_task(work_while_beating())
    done, _ = await asyncio.wait({body}, timeout=20)
    assert body in done, "the heartbeat went on after the work ended"
    beats = len(events.of(AgentHeartbeat))
    await asyncio.sleep(0.5)
    assert len(events.of(AgentHeartbeat)) <= beats + 1
