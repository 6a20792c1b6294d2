"""An Agent Client Protocol agent as a runtime, through the ``agent-client-protocol``
package (the ``acp`` extra).

The agent runs inside the runner's sandbox like any command runtime (``runtimes.command``:
the worktree its only writable place, the sandbox's limits, the attempt's wall time, the
model relay); its standard input and output are a connection to a unix socket the runner
serves (``stdio_inside``), over which the runner is the protocol's client: it opens one
session in the worktree and sends the task's prompt. The agent's tool calls become
progress; its file reads and writes go through the runner's worktree file layer (paths
outside the worktree or in ``.git`` are refused); a permission request is granted once
(the agent is confined whatever it runs); no terminal is offered. Usage is what the
prompt's response reports, priced by the price table, else unknown. The transcript holds
the agent's text (a ``turn`` entry before each tool call and at the end, with the stop
reason and usage) and each tool call it starts (its title and input).

When the task's agent may run commands, the client offers the protocol's terminal: a
command the agent starts there runs as the built-in loop's ``run_command`` does (the same
allow-list, a sandbox of its own, its time limit and output cut), one ``command`` entry in
the transcript when it ends. ``terminal/output`` gives what it has written so far (its
last ``LIVE_BYTES``), its whole output once it ends; killing or releasing a terminal stops
its command, and every command still running when the session ends is stopped.

An attempt outlives its runner when its agent can load sessions: the agent's ``HOME`` is a
directory beside the attempt's journal (not the sandbox's private ``/tmp``), the session
id is journalled once the agent makes it, and each tool call and reported usage as they
come. A runner that finds that session in the journal keeps the worktree as it is, loads
the session (what the agent replays of it is not reported again) and tells the agent to
carry on; an agent that cannot load it gets a fresh session from the base commit, and a
notice says so. Usage and progress count on from the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import acp
from acp import schema

from aether_agent_runner.adapters.git import reset_to
from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.adapters.tools import ToolResult
from aether_agent_runner.adapters.transcript import Entry, as_json, command_entry
from aether_agent_runner.adapters.workspace import ToolError
from aether_agent_runner.runtimes import Job
from aether_agent_runner.runtimes.command import (
    NOT_STARTED,
    CommandRuntime,
    _Failed,
    _Seen,
    until_refused,
)
from aether_agent_runner.runtimes.model_endpoint import Meter
from aether_agent_runner.runtimes.prompt import CONTINUE
from aether_agent_runner.runtimes.relay import stdio_argv
from aether_agent_runner.runtimes.session import (
    ACP_START,
    Earlier,
    earlier_run,
    start_record,
    tool_record,
    turn_record,
)
from aether_events import Usage
from aether_llm import load_prices
from aether_sandbox import Outcome as Ran
from aether_sandbox import Request, Sandbox, execute
from aether_sandbox.trees import remove_tree

log = logging.getLogger("aether.agent-runner.acp")

MAX_SUMMARY = 2000
# The agent's home, beside the attempt's journal: where it keeps the sessions a restarted
# runner loads. Kept when the runner dies; emptied when the attempt starts afresh.
HOME_DIRECTORY = "acp-home"
# The most characters of an agent's messages kept for the transcript and the summary: what
# an agent says beyond them is left out (it would otherwise grow the runner's memory).
MAX_TEXT_CHARS = 1_000_000
# What the sandbox puts in place of the middle of a command's output past its cut.
_CUT_MARK = "bytes of output omitted"
# How much of a running terminal command's output is kept for ``terminal/output``.
LIVE_BYTES = 256 * 1024
# How long an agent is given to exit once its session is done and its input closed.
EXIT_GRACE_SECONDS = 5.0


def refused_variable(name: str) -> str | None:
    """Why an agent may not set ``name`` for its command, or None. Where programs are
    found and what the loader adds are the runner's: with them an agent could run any
    program under an allowed name."""
    if not name or "=" in name or "\0" in name:
        return f"{name!r} is not a variable name"
    if name == "PATH" or name.startswith(("LD_", "DYLD_")):
        return f"{name} decides which program runs; it is the runner's to set"
    return None


@dataclass
class _Live:
    """The end of a running command's output, as it comes."""

    data: bytearray = field(default_factory=bytearray)
    trimmed: bool = False

    def keep(self, chunk: bytes) -> None:
        self.data.extend(chunk)
        if len(self.data) > LIVE_BYTES:
            del self.data[: len(self.data) - LIVE_BYTES]
            self.trimmed = True


@dataclass
class _Terminal:
    """A command the agent started through the protocol's terminal."""

    running: asyncio.Task[ToolResult]
    byte_limit: int | None
    live: _Live
    killed: bool = False

    def output(self) -> tuple[str, bool]:
        """What the command wrote so far (once it ended: its whole output, or why it did
        not run), cut to the byte limit from its start; and whether anything was cut."""
        if self.killed or not self.running.done() or self.running.cancelled():
            # Running, or stopped: what it wrote until then.
            data, cut = bytes(self.live.data), self.live.trimmed
        else:
            result = self.running.result()
            text = result.content if result.ran is None else result.ran.output
            data, cut = text.encode(), _CUT_MARK in text
        limit = self.byte_limit
        if limit is not None and 0 <= limit < len(data):
            data, cut = data[len(data) - limit :], True
        return data.decode("utf-8", "ignore"), cut

    def exit_status(self) -> schema.TerminalExitStatus | None:
        """How it ended (None while it runs): a signal when it was stopped, 127 when it
        could not run at all."""
        if self.killed or self.running.cancelled():
            return schema.TerminalExitStatus(exit_code=None, signal="SIGKILL")
        if not self.running.done():
            return None
        ran = self.running.result().ran
        if ran is None:
            return schema.TerminalExitStatus(exit_code=127, signal=None)
        if ran.exit_code is None:
            return schema.TerminalExitStatus(exit_code=None, signal="SIGKILL")
        return schema.TerminalExitStatus(exit_code=ran.exit_code, signal=None)

    async def stop(self) -> None:
        if not self.running.done():
            self.killed = True
            self.running.cancel()
        await ended(self.running)


async def ended(running: asyncio.Task[Any]) -> None:
    """Wait for ``running`` to end, however it ends; a cancellation of the waiter itself
    still propagates."""
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 - its outcome is read from the task where it matters
        pass


@dataclass
class _Client:
    """The protocol's client side, for one agent working one worktree."""

    job: Job
    tool_calls: int = 0
    text: list[str] = field(default_factory=list)
    # How much of ``text`` the transcript holds already.
    transcribed: int = 0
    # How many characters ``text`` holds, and whether some were left out (MAX_TEXT_CHARS).
    text_chars: int = 0
    text_dropped: bool = False
    # How the prompt ended, once it has (for the transcript's last turn).
    stop_reason: str | None = None
    usage: Usage | None = None
    # Tool calls waiting for their progress and transcript entries (see ``session_update``).
    updates: asyncio.Queue[tuple[schema.ToolCallStart, int, int] | None] = field(
        default_factory=asyncio.Queue
    )
    worker: asyncio.Task[None] | None = None
    terminals: dict[str, _Terminal] = field(default_factory=dict)
    terminals_started: int = 0
    # While a session is loaded: what the agent replays of it was reported by the run
    # that lived it, and is not taken again.
    replaying: bool = False

    async def notice(self, text: str) -> None:
        """A progress event of the runner's own (counted as a step, journalled as one: its
        id is new, and stays unused by any later run)."""
        self.tool_calls += 1
        self.job.journal.append(tool_record())
        await self.job.observer.progressed(
            Progress(
                turns=0,
                tool_calls=self.tool_calls,
                files_changed=list(self.job.toolbox.workspace.changed),
                usage=Usage(cost_usd=None),
                last_action=text,
            ),
            always=True,
        )

    async def transcribe(self, entry: Entry) -> None:
        if self.job.transcript is not None:
            await self.job.transcript.add(entry)

    def _new_text(self, upto: int | None = None) -> str:
        upto = len(self.text) if upto is None else upto
        text = "".join(self.text[self.transcribed : upto]).strip()
        self.transcribed = max(self.transcribed, upto)
        return text

    def start(self) -> None:
        self.worker = asyncio.create_task(self._work())

    async def drained(self) -> None:
        """Wait until every tool call so far has its progress and entries published."""
        if self.worker is not None and not self.worker.done():
            self.updates.put_nowait(None)
            await self.worker

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()

    async def finish(self) -> None:
        """The agent's last words (and how its prompt ended) as the transcript's turn."""
        await self.drained()
        text = self._new_text()
        if self.text_dropped:
            left_out = f"the agent's messages past {MAX_TEXT_CHARS:,} characters were left out"
            await self.transcribe(Entry(kind="note", text=left_out))
        if text or self.stop_reason is not None:
            await self.transcribe(
                Entry(kind="turn", text=text, stop_reason=self.stop_reason, usage=self.usage)
            )

    def _relative(self, path: str) -> str:
        root = self.job.toolbox.workspace.root
        candidate = Path(path)
        if not candidate.is_absolute():
            raise acp.RequestError.invalid_params({"path": "an absolute path is required"})
        try:
            return candidate.relative_to(root).as_posix() or "."
        except ValueError:
            raise acp.RequestError.invalid_params(
                {"path": f"{path!r} is outside the repository"}
            ) from None

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        # Taken without waiting: the connection runs each notification as a task of its
        # own (and cancels those still running when it closes), so what must wait, the
        # publishing, is done in arrival order by ``_work``.
        if self.replaying:
            return
        if isinstance(update, schema.AgentMessageChunk):
            if isinstance(update.content, schema.TextContentBlock):
                said = update.content.text
                if self.text_dropped or self.text_chars + len(said) > MAX_TEXT_CHARS:
                    self.text_dropped = True
                else:
                    self.text.append(said)
                    self.text_chars += len(said)
        elif isinstance(update, schema.ToolCallStart):
            self.tool_calls += 1
            # Journalled as it is counted: a later run's progress counts on from it.
            self.job.journal.append(tool_record())
            self.updates.put_nowait((update, len(self.text), self.tool_calls))

    async def _work(self) -> None:
        while (item := await self.updates.get()) is not None:
            update, said_before, number = item
            title = " ".join(update.title.split())
            if said := self._new_text(said_before):
                await self.transcribe(Entry(kind="turn", text=said, tool=title))
            await self.transcribe(
                Entry(
                    kind="tool_call",
                    tool=title,
                    arguments="" if update.raw_input is None else as_json(update.raw_input),
                )
            )
            await self.job.observer.progressed(
                Progress(
                    turns=0,
                    tool_calls=number,
                    files_changed=list(self.job.toolbox.workspace.changed),
                    usage=Usage(cost_usd=None),
                    last_action=title if len(title) <= 120 else title[:117] + "…",
                )
            )

    async def request_permission(
        self, options: list[schema.PermissionOption], session_id: str, tool_call: Any, **kwargs: Any
    ) -> schema.RequestPermissionResponse:
        chosen = next((option for option in options if option.kind == "allow_once"), None)
        if chosen is None:
            return schema.RequestPermissionResponse(
                outcome=schema.DeniedOutcome(outcome="cancelled")
            )
        return schema.RequestPermissionResponse(
            outcome=schema.AllowedOutcome(option_id=chosen.option_id, outcome="selected")
        )

    async def read_text_file(
        self,
        path: str,
        session_id: str,
        limit: int | None = None,
        line: int | None = None,
        **kwargs: Any,
    ) -> schema.ReadTextFileResponse:
        workspace = self.job.toolbox.workspace
        try:
            text = await asyncio.to_thread(workspace.read_file, self._relative(path))
        except ToolError as error:
            raise acp.RequestError.invalid_params({"path": str(error)}) from None
        if line is not None or limit is not None:
            lines = text.splitlines(keepends=True)
            first = max((line or 1) - 1, 0)
            text = "".join(lines[first : None if limit is None else first + max(limit, 0)])
        return schema.ReadTextFileResponse(content=text)

    async def write_text_file(
        self, content: str, path: str, session_id: str, **kwargs: Any
    ) -> schema.WriteTextFileResponse | None:
        workspace = self.job.toolbox.workspace
        try:
            await asyncio.to_thread(workspace.write_file, self._relative(path), content)
        except ToolError as error:
            raise acp.RequestError.invalid_params({"path": str(error)}) from None
        return schema.WriteTextFileResponse()

    async def create_terminal(
        self,
        command: str,
        session_id: str,
        args: list[str] | None = None,
        env: list[schema.EnvVariable] | None = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **kwargs: Any,
    ) -> schema.CreateTerminalResponse:
        line = shlex.join([command, *args]) if args else command
        try:
            self.job.toolbox.command_argv(line)
        except ToolError as error:
            raise acp.RequestError.invalid_params({"command": str(error)}) from None
        where = self._relative(cwd) if cwd else "."
        variables = {variable.name: variable.value for variable in env or []}
        for name in variables:
            if (why := refused_variable(name)) is not None:
                raise acp.RequestError.invalid_params({"env": why})
        self.terminals_started += 1
        terminal_id = f"terminal-{self.terminals_started}"
        live = _Live()
        running = asyncio.create_task(self._command(line, where, variables, live))
        self.terminals[terminal_id] = _Terminal(running, output_byte_limit, live)
        return schema.CreateTerminalResponse(terminal_id=terminal_id)

    async def _command(self, line: str, cwd: str, env: dict[str, str], live: _Live) -> ToolResult:
        arguments = {"command": line, "cwd": cwd}
        try:
            result = await self.job.toolbox.call(
                "run_command", arguments, env=env, on_output=live.keep
            )
        except asyncio.CancelledError:
            stopped = Entry(
                kind="command",
                tool="terminal",
                arguments=as_json(arguments),
                is_error=True,
                status="stopped before it ended",
            )
            await self.transcribe(stopped)
            raise
        await self.transcribe(command_entry("terminal", arguments, result))
        return result

    def _terminal(self, terminal_id: str) -> _Terminal:
        terminal = self.terminals.get(terminal_id)
        if terminal is None:
            raise acp.RequestError.invalid_params({"terminal_id": f"no terminal {terminal_id!r}"})
        return terminal

    async def terminal_output(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> schema.TerminalOutputResponse:
        terminal = self._terminal(terminal_id)
        output, truncated = terminal.output()
        return schema.TerminalOutputResponse(
            output=output, truncated=truncated, exit_status=terminal.exit_status()
        )

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> schema.WaitForTerminalExitResponse:
        terminal = self._terminal(terminal_id)
        await ended(terminal.running)
        status = terminal.exit_status()
        assert status is not None
        return schema.WaitForTerminalExitResponse(exit_code=status.exit_code, signal=status.signal)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> schema.KillTerminalResponse:
        await self._terminal(terminal_id).stop()
        return schema.KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> schema.ReleaseTerminalResponse:
        await self._terminal(terminal_id).stop()
        del self.terminals[terminal_id]
        return schema.ReleaseTerminalResponse()

    async def stop_terminals(self) -> None:
        """Stop every command still running (the session is over)."""
        for terminal in list(self.terminals.values()):
            await terminal.stop()

    def summary(self) -> str:
        text = "".join(self.text).strip()
        return text[-MAX_SUMMARY:] if text else "(no summary)"


@dataclass
class AcpRuntime(CommandRuntime):
    """A command runtime whose spec says ``protocol: acp``."""

    async def _earlier(self, job: Job) -> Earlier | None:
        records = await asyncio.to_thread(job.journal.read)
        prices = self.prices or load_prices()
        return earlier_run(records, job.identity, prices, job.ready.model, kind=ACP_START)

    async def _run(
        self,
        job: Job,
        sandbox: Sandbox,
        argv: list[str],
        prompt_file: Path,
        scratch: Path,
        earlier: Earlier | None,
    ) -> Outcome:
        prompt = await asyncio.to_thread(prompt_file.read_text)
        home = job.journal.path.parent / HOME_DIRECTORY
        if earlier is None:
            await asyncio.to_thread(remove_tree, home)
        await asyncio.to_thread(home.mkdir, exist_ok=True)
        seen = _Seen()
        socket_path = scratch / "acp.sock"
        loop = asyncio.get_running_loop()
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        connected = loop.create_future()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connected.done():
                writer.close()  # one agent, one connection
            else:
                connected.set_result((reader, writer))

        server = await asyncio.start_unix_server(
            accepted, path=str(socket_path), limit=acp.core.DEFAULT_STDIO_BUFFER_LIMIT_BYTES
        )
        buffer = bytearray()

        def errors(chunk: bytes) -> None:  # the agent's standard error: kept for reasons
            buffer.extend(chunk)
            *lines, rest = bytes(buffer).split(b"\n")
            buffer[:] = rest[-4000:]
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line:
                    seen.first = seen.first or line
                    seen.tail.append(line[:300])

        client = _Client(job, tool_calls=earlier.tool_calls if earlier else 0)
        client.start()
        meter = self._metered(job, sandbox, earlier)
        if meter is not None:

            async def journalled(model: str, usage: Usage) -> None:
                # Synced before it is published: a resumed run counts it, and numbers its
                # own calls after it.
                await asyncio.to_thread(job.journal.append, turn_record(model, usage))

            meter.record = journalled
        inside = stdio_argv(socket_path, argv)
        try:
            async with self._endpoint(job, inside, scratch, meter) as (launched, endpoint):
                request = Request(
                    argv=launched,
                    workdir=job.worktree,
                    cwd=job.worktree,
                    env=self._env(sandbox, scratch, endpoint),
                    limits=job.toolbox.command_limits().with_wall(job.limits.max_seconds),
                    read_only=(scratch, *(Path(entry) for entry in self.spec.read_only)),
                    protect=(job.worktree / ".git",),
                    home=home,
                )
                running = asyncio.create_task(
                    until_refused(execute(sandbox, request, 16_000, errors), meter)
                )
                try:
                    outcome = await self._converse(
                        job, client, prompt, connected, running, seen, earlier, meter
                    )
                    await client.finish()
                    return outcome
                finally:
                    if not running.done():
                        running.cancel()  # its cancellation kills the whole sandbox
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await running
        finally:
            await client.stop_terminals()
            client.stop()
            server.close()
            if connected.done():
                connected.result()[1].close()

    async def _converse(
        self,
        job: Job,
        client: _Client,
        prompt: str,
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
        running: asyncio.Task[Ran | None],
        seen: _Seen,
        earlier: Earlier | None,
        meter: Meter | None,
    ) -> Outcome:
        first: set[asyncio.Future[Any]] = {connected, running}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not connected.done():
            return self._exited(await running, job, client, seen, "before it spoke", meter)
        reader, writer = connected.result()
        connection = acp.connect_to_agent(client, writer, reader)  # type: ignore[arg-type]
        talking = asyncio.create_task(self._talk(connection, job, client, prompt, earlier))
        try:
            pending: set[asyncio.Future[Any]] = {talking, running}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not talking.done():
                ran = await running
                return self._exited(ran, job, client, seen, "in the middle of its session", meter)
            try:
                response, spent = talking.result()
            except acp.RequestError as error:
                reason = f"{self.name} refused the session: {error}"
                return Outcome(False, reason=reason[:2000], tool_calls=client.tool_calls)
            except (ConnectionError, OSError, ValueError) as error:
                # The connection broke or carried something that is not the protocol.
                with contextlib.suppress(TimeoutError):
                    ran = await asyncio.wait_for(asyncio.shield(running), EXIT_GRACE_SECONDS)
                    when = "in the middle of its session"
                    return self._exited(ran, job, client, seen, when, meter)
                reason = f"{self.name} broke the protocol: {error!r}"
                return Outcome(False, reason=reason[:2000], tool_calls=client.tool_calls)
        finally:
            if not talking.done():
                talking.cancel()
            with contextlib.suppress(Exception):
                await connection.close()
            writer.close()
        await client.drained()
        # Its input closed: a well-behaved agent exits; one that does not is killed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(running), EXIT_GRACE_SECONDS)
        if meter is not None:
            # Every call was counted as it was answered; what the agent reports is not.
            counted = meter.usage if meter.turns else Usage(cost_usd=None)
            client.stop_reason, client.usage = response.stop_reason, counted
            return self._answered(job, client, response, counted, meter.turns)
        usage = self._reported(response.usage, job.ready.model)
        client.stop_reason, client.usage = response.stop_reason, usage
        if usage is not None:
            # Journalled first (and synced: a paid call): a resumed run counts it, and
            # numbers its own report after it.
            await asyncio.to_thread(job.journal.append, turn_record(job.ready.model, usage))
            await job.observer.model_called(spent.turns + 1, usage)
        total = usage if spent.turns == 0 else spent.usage.plus(usage or Usage(cost_usd=None))
        return self._answered(job, client, response, total or Usage(cost_usd=None), 0)

    def _answered(
        self,
        job: Job,
        client: _Client,
        response: schema.PromptResponse,
        total: Usage,
        turns: int,
    ) -> Outcome:
        """How the attempt ends when the agent answered its prompt."""
        if response.stop_reason != "end_turn":
            reason = f"{self.name} stopped: {response.stop_reason}"
            return Outcome(
                False,
                reason=reason,
                retryable=False,
                turns=turns,
                tool_calls=client.tool_calls,
                usage=total,
            )
        return Outcome(
            True,
            summary=client.summary(),
            turns=turns,
            tool_calls=client.tool_calls,
            usage=total,
            files_changed=list(job.toolbox.workspace.changed),
        )

    async def _talk(
        self, connection: Any, job: Job, client: _Client, prompt: str, earlier: Earlier | None
    ) -> tuple[schema.PromptResponse, Earlier]:
        """The session's prompt and its answer; with it, what earlier sessions of the
        attempt spent (their reported turns and usage, counted with this one's)."""
        started = await connection.initialize(
            protocol_version=acp.PROTOCOL_VERSION,
            client_capabilities=schema.ClientCapabilities(
                fs=schema.FileSystemCapabilities(read_text_file=True, write_text_file=True),
                terminal=job.toolbox.runs_commands,
            ),
            client_info=schema.Implementation(name="aether", version="1"),
        )
        session_id = None
        if earlier is not None:
            session_id = await self._load(connection, job, client, started, earlier)
        if session_id is not None:
            text = CONTINUE
            assert earlier is not None
            spent = earlier
        else:
            session = await connection.new_session(cwd=str(job.worktree), mcp_servers=[])
            session_id = session.session_id
            spent = Earlier(
                session_id=session_id,
                turns=earlier.turns if earlier else 0,
                tool_calls=client.tool_calls,
                usage=earlier.usage if earlier else Usage(cost_usd=0.0),
            )
            carried = spent if earlier is not None else None
            record = start_record(job.identity, session_id, carried, kind=ACP_START)
            await asyncio.to_thread(job.journal.start, record)
            text = prompt
        # What the agent replayed came before its answer to the load, each update handled
        # by a task of its own made as it arrived: one turn of the loop lets those still
        # waiting run, and what comes from here on is the new run's.
        await asyncio.sleep(0)
        client.replaying = False
        response: schema.PromptResponse = await connection.prompt(
            session_id=session_id, prompt=[acp.text_block(text)]
        )
        return response, spent

    @staticmethod
    async def _load(
        connection: Any,
        job: Job,
        client: _Client,
        started: schema.InitializeResponse,
        earlier: Earlier,
    ) -> str | None:
        """Load the attempt's earlier session; its id, or ``None`` (the worktree then back
        at the base commit, for a fresh session)."""
        capabilities = started.agent_capabilities
        why = "the agent does not load sessions"
        if capabilities is not None and capabilities.load_session:
            client.replaying = True
            try:
                await connection.load_session(
                    session_id=earlier.session_id, cwd=str(job.worktree), mcp_servers=[]
                )
                why = ""
            except acp.RequestError as error:
                why = str(error)[:500]
        if not why:
            log.info("resuming the ACP session", extra={"session": earlier.session_id})
            await client.notice(f"resuming ACP session {earlier.session_id}")
            return earlier.session_id
        notice = f"could not resume ACP session {earlier.session_id}; starting a fresh session"
        log.warning(notice, extra={"reason": why})
        await client.notice(notice)
        if await asyncio.to_thread(reset_to, job.git, job.ready.base_sha):
            log.warning("restarting cleanly: discarded changes of an earlier run")
        return None

    def _exited(
        self,
        ran: Ran | None,
        job: Job,
        client: _Client,
        seen: _Seen,
        when: str,
        meter: Meter | None = None,
    ) -> Outcome:
        if ran is None:
            # The metered endpoint refused a call past a limit, and the agent was stopped.
            assert meter is not None
            assert meter.reason is not None
            return Outcome(
                False,
                reason=meter.reason,
                retryable=False,
                turns=meter.turns,
                tool_calls=client.tool_calls,
                usage=meter.usage,
            )
        unknown = Usage(cost_usd=None)
        used = meter.usage if meter is not None and meter.turns else unknown
        if ran.timed_out:
            reason = f"wall-time limit reached: {job.limits.max_seconds:g} s allowed"
            return Outcome(False, reason=reason, retryable=False, usage=used)
        if seen.first.startswith(NOT_STARTED):
            raise _Failed(f"the {self.name} runtime cannot start: {seen.first}")
        said = " | ".join(seen.tail)
        code = ran.exit_code if ran.exit_code is not None else f"stopped ({ran.stopped})"
        reason = f"{self.name} exited with {code} {when}" + (f": {said}" if said else "")
        return Outcome(
            False,
            reason=reason[:2000],
            retryable=True,
            tool_calls=client.tool_calls,
            usage=used,
        )

    def _reported(self, reported: schema.Usage | None, model: str) -> Usage | None:
        if reported is None:
            return None
        tokens = Usage(
            input_tokens=max(reported.input_tokens, 0),
            output_tokens=max(reported.output_tokens, 0),
            cache_creation_input_tokens=max(reported.cached_write_tokens or 0, 0),
            cache_read_input_tokens=max(reported.cached_read_tokens or 0, 0),
        )
        return (self.prices or load_prices()).priced(model, tokens)
