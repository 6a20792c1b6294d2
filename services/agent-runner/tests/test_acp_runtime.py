"""The ACP runtime: a small real Agent Client Protocol agent (built on the
``agent-client-protocol`` package's agent side) run in the runner's sandbox, spoken to over
its standard input and output by the runner as the protocol's client."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.runtimes.spec import CommandSpec
from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentProgress,
    TranscriptRecorded,
    Usage,
    UsageRecorded,
)
from aether_llm import load_prices
from aether_sandbox import MIB, Limits, SandboxSettings

from .test_command_runtime import needs_sandbox
from .test_processes import runners  # noqa: F401 - the fixture is used by name
from .test_service import git_log

# Whether it is installed, not imported: every worker collects this module, and importing
# the SDK (0.6 s) is only for the worker that runs its tests.
if importlib.util.find_spec("acp") is None:
    pytest.skip("acp is not installed", allow_module_level=True)

AGENT = r"""
import asyncio, json, os, re, sys
import acp
from acp import schema

MODE = sys.argv[1]


class Agent:
    def on_connect(self, conn):
        self.conn = conn

    async def initialize(self, protocol_version, client_capabilities=None, client_info=None, **kw):
        self.fs = client_capabilities.fs
        self.terminal = client_capabilities.terminal
        loads = MODE in ("resumable", "loads")
        return schema.InitializeResponse(
            protocol_version=protocol_version,
            agent_capabilities=schema.AgentCapabilities(load_session=loads))

    # Sessions kept in the agent's home, as a real agent keeps them: what a load finds.
    def saved(self, session_id):
        return os.path.join(os.environ["HOME"], "sessions", session_id + ".json")

    def save(self):
        os.makedirs(os.path.dirname(self.saved(self.session_id)), exist_ok=True)
        with open(self.saved(self.session_id), "w") as out:
            json.dump(self.session, out)

    async def load_session(self, cwd, session_id, mcp_servers=None, **kw):
        if not os.path.exists(self.saved(session_id)):
            raise acp.RequestError.resource_not_found(session_id)
        self.cwd, self.session_id = cwd, session_id
        with open(self.saved(session_id)) as saved:
            self.session = json.load(saved)
        self.session["loaded"] += 1
        self.save()
        # The conversation so far, replayed to the client as the protocol has it.
        for said in self.session["said"]:
            await self.conn.session_update(
                session_id=session_id, update=acp.update_agent_message_text(said))
        update = acp.start_tool_call("r1", "Replayed call", kind="edit", status="completed")
        await self.conn.session_update(session_id=session_id, update=update)
        return schema.LoadSessionResponse()

    async def steps(self, session_id, text):
        # Two steps, the session saved after each; "resumable" waits after the first for
        # the runner to be killed.
        session = self.session
        session["prompts"].append(text[:300])
        self.save()
        if session["steps"] == 0:
            update = acp.start_tool_call("c1", "Write part1.txt", kind="edit", status="pending")
            await self.conn.session_update(session_id=session_id, update=update)
            await self.conn.write_text_file(
                path=os.path.join(self.cwd, "part1.txt"), content="one\n", session_id=session_id)
            session["steps"] = 1
            session["said"].append("wrote part1.txt")
            self.save()
            await self.conn.session_update(
                session_id=session_id, update=acp.update_agent_message_text("wrote part1.txt"))
            if MODE == "resumable":
                open(os.path.join(os.environ["HOME"], "step1.done"), "w").close()
                await asyncio.sleep(600)
        update = acp.start_tool_call("c2", "Write part2.txt", kind="edit", status="pending")
        await self.conn.session_update(session_id=session_id, update=update)
        written = f"after {session['steps']} step(s), loaded {session['loaded']} time(s)\n"
        await self.conn.write_text_file(
            path=os.path.join(self.cwd, "part2.txt"), content=written, session_id=session_id)
        session["steps"] = 2
        self.save()
        restarted = "restarted" in text
        await self.conn.session_update(
            session_id=session_id,
            update=acp.update_agent_message_text(f"done; told of a restart: {restarted}"))
        return schema.PromptResponse(
            stop_reason="end_turn",
            usage=schema.Usage(input_tokens=100, output_tokens=10, total_tokens=110))

    async def terminals(self, session_id):
        # Commands through the client's terminal; what each gave, for the summary.
        if not self.terminal:
            return "no terminal"
        said = []
        conn = self.conn

        async def run(**request):
            made = await conn.create_terminal(session_id=session_id, **request)
            ended = await conn.wait_for_terminal_exit(
                session_id=session_id, terminal_id=made.terminal_id)
            out = await conn.terminal_output(session_id=session_id, terminal_id=made.terminal_id)
            await conn.release_terminal(session_id=session_id, terminal_id=made.terminal_id)
            return ended, out

        count = "import os; print(os.environ['NOTE'], len(open('app.py').read().splitlines()))"
        ended, out = await run(
            command="python", args=["-c", count], cwd=os.path.join(self.cwd, "src"),
            env=[schema.EnvVariable(name="NOTE", value="lines")])
        said.append(f"{ended.exit_code} {out.output.strip()} {out.truncated}")
        # A whole command line, failing, its output kept to its last five bytes.
        ended, out = await run(
            command="python -c \"import sys; print('x' * 40 + 'tail'); sys.exit(3)\"",
            output_byte_limit=5)
        said.append(f"{ended.exit_code} {out.output.strip()} {out.truncated}")
        try:
            await conn.create_terminal(session_id=session_id, command="sh", args=["-c", "true"])
            said.append("sh ran")
        except Exception:
            said.append("sh refused")
        # An allowed name found elsewhere: where programs are found is not the agent's.
        try:
            await conn.create_terminal(
                session_id=session_id, command="python", args=["-V"],
                env=[schema.EnvVariable(name="PATH", value=self.cwd)])
            said.append("PATH set")
        except Exception:
            said.append("PATH refused")
        # What a running command wrote shows as it runs; a kill ends it by a signal.
        sleep = ["-c", "import time; print('started', flush=True); time.sleep(60)"]
        made = await conn.create_terminal(session_id=session_id, command="python", args=sleep)
        for _ in range(200):
            out = await conn.terminal_output(session_id=session_id, terminal_id=made.terminal_id)
            if out.output.strip():
                break
            await asyncio.sleep(0.05)
        said.append(f"{out.output.strip()} {out.exit_status}")
        await conn.kill_terminal(session_id=session_id, terminal_id=made.terminal_id)
        ended = await conn.wait_for_terminal_exit(
            session_id=session_id, terminal_id=made.terminal_id)
        out = await conn.terminal_output(session_id=session_id, terminal_id=made.terminal_id)
        said.append(f"killed {ended.signal} {out.output.strip()}")
        # Left running: the session's end stops it.
        await conn.create_terminal(session_id=session_id, command="python", args=sleep)
        return "; ".join(said)

    async def new_session(self, cwd, mcp_servers=None, **kw):
        self.cwd = cwd
        if MODE in ("resumable", "loads"):
            import uuid
            self.session_id = "sess-" + uuid.uuid4().hex
            self.session = {"steps": 0, "loaded": 0, "said": [], "prompts": []}
            self.save()
            return schema.NewSessionResponse(session_id=self.session_id)
        return schema.NewSessionResponse(session_id="s1")

    async def prompt(self, prompt, session_id, **kw):
        text = "".join(block.text for block in prompt)
        if MODE in ("resumable", "loads"):
            return await self.steps(session_id, text)
        task = json.loads(re.search(r"<task>(.*?)</task>", text, re.S).group(1))
        if MODE == "crash":
            print("the agent broke", file=sys.stderr, flush=True)
            os._exit(4)
        if MODE == "hang":
            await asyncio.sleep(600)
        if MODE == "fill":  # into the worktree itself, far past the attempt's disk cap
            with open(os.path.join(self.cwd, "fill.bin"), "wb") as out:
                for _ in range(300):
                    out.write(b"x" * (1 << 20)); out.flush()
                    await asyncio.sleep(0.03)
            open(os.path.join(os.environ["HOME"], "filler.finished"), "w").close()
            return schema.PromptResponse(stop_reason="end_turn")
        if MODE == "terminal":
            said = await self.terminals(session_id)
            await self.conn.session_update(
                session_id=session_id, update=acp.update_agent_message_text(said))
            await self.conn.write_text_file(
                path=os.path.join(self.cwd, "ran.txt"), content=said + "\n",
                session_id=session_id)
            return schema.PromptResponse(stop_reason="end_turn")
        if MODE == "model":  # through the relay: the sandbox has no network of its own
            import urllib.request
            request = urllib.request.Request(
                os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages",
                data=json.dumps({"model": "claude-sonnet-5-5", "max_tokens": 100,
                                 "messages": [{"role": "user", "content": text}]}).encode(),
                headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"],
                         "anthropic-version": "2023-06-01", "content-type": "application/json"})
            reply = await asyncio.to_thread(
                lambda: json.load(urllib.request.urlopen(request, timeout=30)))
            said = acp.update_agent_message_text(reply["content"][0]["text"])
            await self.conn.session_update(session_id=session_id, update=said)
            tokens = reply["usage"]
            self.usage = schema.Usage(input_tokens=tokens["input_tokens"],
                                      output_tokens=tokens["output_tokens"],
                                      total_tokens=tokens["input_tokens"] + tokens["output_tokens"])
        update = acp.start_tool_call("c1", "Read src/app.py", kind="read", status="pending")
        await self.conn.session_update(session_id=session_id, update=update)
        app = os.path.join(self.cwd, "src", "app.py")
        read = await self.conn.read_text_file(path=app, session_id=session_id)
        update = acp.start_tool_call("c2", "Write acp.txt", kind="edit", status="pending")
        await self.conn.session_update(session_id=session_id, update=update)
        lines = str(len(read.content.splitlines()))
        await self.conn.write_text_file(
            path=os.path.join(self.cwd, "acp.txt"),
            content="task " + task["id"] + ", app has " + lines + " lines\n",
            session_id=session_id,
        )
        refused = "no"
        try:
            await self.conn.write_text_file(
                path="/etc/acp-escape", content="x", session_id=session_id)
        except Exception:
            refused = "yes"
        try:
            await self.conn.write_text_file(
                path=os.path.join(self.cwd, ".git", "config"), content="x", session_id=session_id)
        except Exception:
            refused += "/yes"
        message = acp.update_agent_message_text("wrote acp.txt; escapes refused: " + refused)
        await self.conn.session_update(session_id=session_id, update=message)
        usage = getattr(self, "usage", None)
        if MODE == "usage":
            usage = schema.Usage(input_tokens=800, output_tokens=90, total_tokens=890,
                                 cached_read_tokens=2000)
        return schema.PromptResponse(stop_reason="end_turn", usage=usage)


asyncio.run(acp.run_agent(Agent()))
"""


@pytest.fixture
def acp_spec(tmp_path: Path) -> Callable[..., CommandSpec]:
    tool = tmp_path / "tool"
    tool.mkdir()
    program = tool / "acp_agent.py"
    program.write_text(AGENT)

    def make(mode: str, executable: str = sys.executable, **fields: Any) -> CommandSpec:
        return CommandSpec(
            name="acp-fake",
            command=[executable, str(program), mode],
            protocol="acp",
            read_only=[str(tool)],
            **fields,
        )

    return make


async def start(
    spec: CommandSpec,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    mission_id: str,
    workspace_ready: Callable[..., Any],
    **settings: Any,
) -> None:
    await start_runner(model({}), runtime="acp-fake", command_runtimes=(spec,), **settings)
    await publish(workspace_ready(task_repo, mission_id))


@needs_sandbox
@pytest.mark.parametrize("mode", ["quiet", "usage"])
async def test_an_acp_agent_works_the_task_through_the_runners_file_layer(
    mode: str,
    acp_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await start(
        acp_spec(mode), task_repo, model, start_runner, publish, mission_id, workspace_ready
    )
    done = await events.first(AgentCompleted)

    lines = len((task_repo.worktree / "src" / "app.py").read_text().splitlines())
    assert (task_repo.worktree / "acp.txt").read_text() == f"task t1, app has {lines} lines\n"
    assert done.files_changed == ["acp.txt"]
    assert done.summary == "wrote acp.txt; escapes refused: yes/yes"
    assert "Aether-Task: t1" in git_log(task_repo, task_repo.branch)
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "Read src/app.py" in actions and "Write acp.txt" in actions
    # The transcript: each tool call the agent started, then its last words and how its
    # prompt ended.
    entries = sorted(events.of(TranscriptRecorded), key=lambda e: e.sequence)
    assert [(e.kind, e.tool) for e in entries] == [
        ("tool_call", "Read src/app.py"),
        ("tool_call", "Write acp.txt"),
        ("turn", ""),
    ]
    assert [e.sequence for e in entries] == list(range(3))
    last = entries[-1]
    assert last.text == done.summary and last.stop_reason == "end_turn"
    if mode == "usage":
        counts = Usage(input_tokens=800, output_tokens=90, cache_read_input_tokens=2000)
        priced = load_prices().priced("claude-sonnet-5-5", counts)
        assert done.usage == priced
        assert [u.usage for u in events.of(UsageRecorded)] == [priced]
        assert last.usage == priced
    else:
        assert done.usage.cost_usd is None  # not reported: unknown, never zero
        assert events.of(UsageRecorded) == []


@needs_sandbox
@pytest.mark.parametrize(
    ("mode", "executable", "settings", "reason", "retryable"),
    [
        ("ok", "/nonexistent/acp-agent", {}, "cannot start", False),
        ("crash", None, {}, "exited with 4 in the middle of its session: the agent broke", True),
        ("hang", None, {"max_seconds": 2.0}, "wall-time limit reached: 2 s allowed", False),
    ],
    ids=["missing", "crashing", "hanging"],
)
async def test_an_acp_agent_that_cannot_finish_fails_the_task_with_the_reason(
    mode: str,
    executable: str | None,
    settings: dict[str, Any],
    reason: str,
    retryable: bool,
    acp_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    chosen = acp_spec(mode, executable or sys.executable)
    await start(
        chosen, task_repo, model, start_runner, publish, mission_id, workspace_ready, **settings
    )
    failed = await events.first(AgentFailed)

    assert reason in failed.reason
    assert failed.retryable is retryable


@needs_sandbox
async def test_an_acp_agent_reaches_the_model_through_the_relay(
    acp_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    from aether_llm import Reply, text_block

    reply = Reply([text_block("answered by the model")], "end_turn", 70, 9)
    scripted = model({"t1": [lambda request: reply]})
    spec = acp_spec("model", model_endpoint=True)
    await start_runner(scripted, runtime="acp-fake", command_runtimes=(spec,))
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)

    assert len(scripted.script.requests) == 1
    assert done.summary.startswith("answered by the model")
    priced = load_prices().priced("claude-sonnet-5-5", Usage(input_tokens=70, output_tokens=9))
    assert done.usage == priced


@needs_sandbox
@pytest.mark.usefixtures("python_on_path")
@pytest.mark.parametrize("commands", [("python",), ()], ids=["python allowed", "none allowed"])
async def test_an_acp_agent_runs_commands_through_the_clients_terminal_under_the_policy(
    commands: tuple[str, ...],
    acp_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """The terminal is offered when the task's agent may run commands: each runs as
    ``run_command`` does (its allow-list, in the sandbox, in the worktree), with the
    agent's variables and output limit; a refused program is an error to the agent, a
    killed command ends by a signal, one left running ends with the session. Without
    commands no terminal is offered."""
    await start(
        acp_spec("terminal"),
        task_repo,
        model,
        start_runner,
        publish,
        mission_id,
        workspace_ready,
        commands=commands,
    )
    done = await events.first(AgentCompleted)

    if not commands:
        assert done.summary == "no terminal"
        return
    lines = len((task_repo.worktree / "src" / "app.py").read_text().splitlines())
    said = (
        f"0 lines {lines} False; 3 tail True; sh refused; PATH refused; started None;"
        " killed SIGKILL started"
    )
    assert done.summary == said
    assert (task_repo.worktree / "ran.txt").read_text() == done.summary + "\n"
    entries = [e for e in events.of(TranscriptRecorded) if e.kind == "command"]
    assert [(e.exit_code, e.status.split(" after")[0]) for e in entries[:2]] == [
        (0, "exit code 0"),
        (3, "exit code 3"),
    ]
    assert {e.status for e in entries[2:]} == {"stopped before it ended"}
    assert len(entries) == 4


async def test_what_an_agent_says_past_the_bound_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent's messages are kept for the transcript and the summary up to
    ``MAX_TEXT_CHARS``, and nothing after: one that talks without end does not grow the
    runner's memory."""
    import acp

    from aether_agent_runner.runtimes import acp_client

    monkeypatch.setattr(acp_client, "MAX_TEXT_CHARS", 10)
    client = acp_client._Client(job=None)  # type: ignore[arg-type]  # not reached here
    for said in ("hello ", "world", "!" * 1000, "."):
        await client.session_update("s1", acp.update_agent_message_text(said))
    assert client.summary() == "hello" and client.text_dropped
    assert client.text_chars == 6


def _journal_dir(worktree: Path) -> Path:
    from aether_agent_runner.adapters.journal import DIRECTORY

    from .conftest import git

    admin = Path(git(worktree, "rev-parse", "--git-dir"))
    return (admin if admin.is_absolute() else worktree / admin) / DIRECTORY


@needs_sandbox
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_an_acp_attempt_loads_its_session_after_the_runner_is_killed(
    acp_spec: Any,
    tmp_path: Path,
    task_repo: Any,
    model: Callable[..., Any],
    runners: Callable[..., Any],  # noqa: F811
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """A runner process killed with SIGKILL in the middle of an ACP agent's session (the
    agent done with its first step, its session saved in its home), and a second runner:
    it finds the session in the journal, keeps the worktree as the kill left it, loads
    the session (what the agent replays of it is not reported again), tells the agent
    it was restarted, and the agent goes on with its second step, not its first."""
    import asyncio
    import json

    import msgspec

    from aether_agent_runner.runtimes.acp_client import HOME_DIRECTORY

    from .conftest import git

    specs = tmp_path / "runtimes.json"
    specs.write_bytes(msgspec.json.encode([acp_spec("resumable")]))
    settings = {
        "AETHER_AGENT_RUNTIME": "acp-fake",
        "AETHER_AGENT_COMMAND_RUNTIMES": str(specs),
        "AETHER_AGENT_PROGRESS_SECONDS": "0",
    }
    worktree = task_repo.worktree
    base = git(worktree, "rev-parse", "HEAD")
    ready = msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base)
    scripted = model({})
    first = runners(scripted.url, **settings)
    await publish(ready)
    home = _journal_dir(worktree) / HOME_DIRECTORY
    async with asyncio.timeout(120):
        while not (home / "step1.done").exists():
            await asyncio.sleep(0.05)
    await asyncio.to_thread(first.kill, "agent-runner")  # the runner, and its sandbox with it
    assert (worktree / "part1.txt").read_text() == "one\n"

    second = runners(scripted.url, **settings)
    done = await events.first(AgentCompleted, timeout=120)

    [saved] = (home / "sessions").glob("*.json")
    session = json.loads(saved.read_text())
    # The first step was not made again: the loaded session went on with the second.
    assert (session["steps"], session["loaded"]) == (2, 1)
    assert "The runner working this task was restarted" in session["prompts"][-1]
    assert (worktree / "part2.txt").read_text() == "after 1 step(s), loaded 1 time(s)\n"
    assert set(done.files_changed) == {"part1.txt", "part2.txt"}
    assert done.summary == "done; told of a restart: True"
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert f"resuming ACP session {saved.stem}" in actions
    assert actions.count("Write part1.txt") == 1 and "Write part2.txt" in actions
    assert "Replayed call" not in actions
    # No progress event of the second run reuses an id of the first's (each would be
    # dropped by the stream as a copy), nor would a third run's: the journal counts the
    # notice as a step too.
    assert len(events.of(AgentProgress)) == len(actions) == 3
    from aether_agent_runner.runtimes.session import TOOL

    journal = (home.parent / "transcript.jsonl").read_text().splitlines()
    assert sum(json.loads(line).get("kind") == TOOL for line in journal) == 3
    entries = sorted(events.of(TranscriptRecorded), key=lambda e: e.sequence)
    assert len({e.sequence for e in entries}) == len(entries)
    assert not any(e.tool == "Replayed call" for e in entries)
    assert [e.tool for e in entries if e.kind == "tool_call"] == [
        "Write part1.txt",
        "Write part2.txt",
    ]
    # The second run's usage, reported once.
    priced = load_prices().priced("claude-sonnet-5-5", Usage(input_tokens=100, output_tokens=10))
    assert [u.usage for u in events.of(UsageRecorded)] == [priced]
    assert done.usage == priced
    log = (second.home / "logs" / "agent-runner.log").read_text()
    assert "resuming the ACP session" in log


@needs_sandbox
async def test_an_acp_session_that_cannot_be_loaded_starts_fresh_from_the_base_and_says_so(
    acp_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """The journal names a session the agent does not have: the worktree goes back to
    the attempt's base, a notice says so, and a fresh session works the whole task."""
    import json

    import msgspec

    from aether_agent_runner.adapters.conversation import identity
    from aether_agent_runner.runtimes.session import ACP_START, start_record, tool_record

    from .conftest import git

    worktree = task_repo.worktree
    base = git(worktree, "rev-parse", "HEAD")
    ready = msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base)
    journal = _journal_dir(worktree)
    journal.mkdir(parents=True, exist_ok=True)
    me = identity(mission_id, "t1", 1, base)
    records = [start_record(me, "sess-lost", kind=ACP_START), tool_record()]
    (journal / "transcript.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (worktree / "stray.txt").write_text("left by the lost run\n")

    await start_runner(model({}), runtime="acp-fake", command_runtimes=(acp_spec("loads"),))
    await publish(ready)
    done = await events.first(AgentCompleted)

    assert not (worktree / "stray.txt").exists()
    assert set(done.files_changed) == {"part1.txt", "part2.txt"}
    assert (worktree / "part2.txt").read_text() == "after 1 step(s), loaded 0 time(s)\n"
    # The agent's messages of the run, as it sent them (no separator of the runner's).
    assert done.summary == "wrote part1.txtdone; told of a restart: False"
    progress = events.of(AgentProgress)
    notice = "could not resume ACP session sess-lost; starting a fresh session"
    assert [p.last_action for p in progress] == [notice, "Write part1.txt", "Write part2.txt"]
    # Counted on from the journal: the lost run's one tool call, then the notice.
    assert [p.tool_calls for p in progress] == [2, 3, 4]


@needs_sandbox
async def test_an_acp_agent_that_writes_past_the_attempts_disk_cap_is_stopped_while_it_runs(
    tmp_path: Path,
    acp_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """Under every limit of its sandbox but the attempt's disk cap, the agent is stopped
    while it writes, not when it ends; the attempt fails, not to be retried, naming the
    cap, and what it wrote is gone from the worktree."""
    sandbox = SandboxSettings(limits=Limits(attempt_disk_bytes=8 * MIB))
    await start(
        acp_spec("fill"),
        task_repo,
        model,
        start_runner,
        publish,
        mission_id,
        workspace_ready,
        sandbox=sandbox,
    )
    failed = await events.first(AgentFailed, timeout=120)

    assert "went over its disk cap" in failed.reason, failed.reason
    assert not failed.retryable
    # Before, it wrote its 300 MiB and ended its turn; only then was the cap checked.
    assert list(tmp_path.rglob("filler.finished")) == []
    assert not (task_repo.worktree / "fill.bin").exists()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"],
        cwd=task_repo.worktree,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""
