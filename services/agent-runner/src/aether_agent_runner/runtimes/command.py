"""A CLI agent as a runtime, started from a declarative spec (``runtimes.spec``).

The whole tool runs inside the runner's sandbox (``aether_sandbox``, as ``run_command``'s
commands do): the worktree its only writable place and its ``.git`` read-only, the
sandbox's memory, process, CPU, output and disk limits, and the attempt's wall time, after
which the whole sandbox is killed; a stop order or a crash ends it the same way. Its
environment is the one the runner's commands get (no credentials) plus what its spec asks
for. With the model endpoint and no network, the tool reaches the runner's metered model
endpoint and nothing else (``runtimes.relay``, ``runtimes.model_endpoint``), with a key
made for the attempt: each of its model calls is recorded as it is answered, and a call
past the attempt's turn, token or cost limit is refused and ends the attempt. Each line
it prints (standard output and error together) is progress; the usage it reports (if its
spec says how) is recorded when its calls are not metered, and usage it does not report
stays unknown. The output, in batches of lines, and how the tool ended are the attempt's
transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from aether_agent_runner.adapters.commands import CommandResult, command_env
from aether_agent_runner.adapters.git import reset_to
from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.adapters.tools import SANDBOX_SCRATCH
from aether_agent_runner.adapters.transcript import Entry, OutputLines
from aether_agent_runner.adapters.workspace import ToolError
from aether_agent_runner.runtimes import Job
from aether_agent_runner.runtimes.model_endpoint import Meter, ModelEndpoint
from aether_agent_runner.runtimes.prompt import repository_view, task_prompt
from aether_agent_runner.runtimes.relay import RelayRefused, check_endpoint, relayed
from aether_agent_runner.runtimes.roles import role_prompt
from aether_agent_runner.runtimes.session import (
    COMMAND_START,
    Earlier,
    earlier_run,
    start_record,
    turn_record,
)
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_events import Usage
from aether_llm import PriceTable, load_prices
from aether_sandbox import (
    CommandRunner,
    Request,
    Sandbox,
    SandboxUnavailable,
    execute,
    open_sandbox,
)
from aether_sandbox import Outcome as Ran
from aether_sandbox.environment import is_secret_name
from aether_sandbox.trees import remove_tree

_PLACEHOLDER = re.compile(r"\{(prompt|prompt_file|model)\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_LINE = 4000
# Progress lines (and transcript batches) waiting to be published; beyond this, telemetry
# is dropped (a dropped batch is counted in the next one).
MAX_PENDING = 1000
# What bubblewrap, or the relay inside the sandbox, prints when the program is not there.
NOT_STARTED = ("bwrap: execvp ", "aether-relay: cannot start ")


@dataclass
class _Seen:
    lines: int = 0
    last_text: str = ""
    reported: Usage | None = None
    # Whether every report carried its own cost (else the price table prices the tokens).
    all_costed: bool = True
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    first: str = ""
    # The attempt's model calls, when they pass the metered endpoint (the tool's own
    # reports are then not counted).
    meter: Meter | None = None

    @property
    def turns(self) -> int:
        return self.meter.turns if self.meter is not None else 0

    @property
    def usage(self) -> Usage:
        if self.meter is not None:
            return self.meter.usage
        return self.reported or Usage(cost_usd=None)


class _Failed(Exception):
    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass
class CommandRuntime:
    spec: CommandSpec
    base_url: str
    api_key: str
    prices: PriceTable | None = None
    # The models a metered call may name besides the attempt's own (the runner's tiers);
    # ``None``: any.
    models: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    async def run(self, job: Job) -> Outcome:
        ready, worktree = job.ready, job.worktree
        earlier = await self._earlier(job)
        if earlier is None:
            await asyncio.to_thread(reset_to, job.git, ready.base_sha)
        repo_map, skills = await asyncio.to_thread(repository_view, worktree)
        prompt = task_prompt(ready, repo_map, job.limits, skills)
        if job.role is not None:
            prompt = role_prompt(job.role) + "\n\n" + prompt
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aether-cli-"))
        try:
            sandbox = self._sandbox(job)
            prompt_file = scratch / "prompt.md"
            prompt_file.write_text(prompt)
            values = {"prompt": prompt, "prompt_file": str(prompt_file), "model": ready.model}
            argv = [_fill(part, values) for part in self.spec.command]
            return await self._run(job, sandbox, argv, prompt_file, scratch, earlier)
        except _Failed as failure:
            return Outcome(False, reason=failure.reason, retryable=failure.retryable)
        finally:
            await asyncio.to_thread(remove_tree, scratch)

    async def _earlier(self, job: Job) -> Earlier | None:
        """The session of this attempt a dead runner left, to go on with (its worktree
        then kept as it is), or ``None``: a command runtime starts over, from the base."""
        return None

    def _sandbox(self, job: Job) -> Sandbox:
        try:
            sandbox = job.toolbox.sandbox()
        except ToolError as error:
            raise _Failed(f"the {self.name} runtime runs only in a sandbox: {error}") from None
        if isinstance(sandbox, CommandRunner):  # a test's fake runs no program
            raise _Failed(f"the {self.name} runtime needs a sandbox backend, not {sandbox.name}")
        if self.spec.network == "host" and sandbox.confined:
            settings = dataclasses.replace(sandbox.settings, network="host")
            try:
                return open_sandbox(settings)
            except SandboxUnavailable as error:
                raise _Failed(f"the {self.name} runtime cannot start: {error}") from None
        return sandbox

    def _env(
        self, sandbox: Sandbox, scratch: Path, endpoint: ModelEndpoint | None = None
    ) -> dict[str, str]:
        passed = tuple(name for name in self.spec.env if not is_secret_name(name))
        if sandbox.confined:
            # HOME, TMPDIR and caches live in the sandbox's own private /tmp.
            env = command_env(os.environ, SANDBOX_SCRATCH, passed, make_dirs=False)
        else:
            env = command_env(os.environ, scratch / "env", passed)
        if endpoint is not None:
            # The relay inside points ANTHROPIC_BASE_URL at the sandbox's loopback.
            env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1"
            env["ANTHROPIC_API_KEY"] = endpoint.placeholder
        elif self.spec.model_endpoint:
            env["ANTHROPIC_BASE_URL"] = self.base_url
            env["ANTHROPIC_API_KEY"] = self.api_key
        return env

    def _metered(self, job: Job, sandbox: Sandbox, earlier: Earlier | None = None) -> Meter | None:
        """The meter of the attempt's model calls: when the tool needs the model endpoint
        and the sandbox has no network of its own (``network: host`` and an unconfined
        runner give it the endpoint itself, unmetered)."""
        offline = sandbox.confined and sandbox.settings.network != "host"
        if not (self.spec.model_endpoint and offline):
            return None
        meter = Meter(job.limits, job.observer, self.prices or load_prices())
        if earlier is not None:
            meter.turns, meter.usage = earlier.turns, earlier.usage
        return meter

    async def _counted_on(self, job: Job, meter: Meter | None) -> Meter | None:
        """``meter``, counting on from the calls an earlier run of the attempt made (a
        runner that died mid-run: the tool starts over, but its calls were made and
        published), each call journalled before it is published: a later run's usage
        events then never reuse an earlier one's ids (the stream would drop them)."""
        if meter is None:
            return None
        records = await asyncio.to_thread(job.journal.read)
        spent = earlier_run(
            records, job.identity, meter.prices, job.ready.model, kind=COMMAND_START
        )
        if spent is not None:
            meter.turns, meter.usage = spent.turns, spent.usage
        begin = start_record(job.identity, "run", spent, kind=COMMAND_START)
        await asyncio.to_thread(job.journal.start, begin)

        async def journalled(model: str, usage: Usage) -> None:
            await asyncio.to_thread(job.journal.append, turn_record(model, usage))

        meter.record = journalled
        return meter

    @contextlib.asynccontextmanager
    async def _endpoint(
        self, job: Job, argv: list[str], scratch: Path, meter: Meter | None
    ) -> AsyncIterator[tuple[list[str], ModelEndpoint | None]]:
        """``argv`` as the sandbox starts it, and the endpoint it calls the model at:
        behind the metered endpoint when its calls are metered (``meter``)."""
        if meter is None:
            yield argv, None
            return
        models = None if self.models is None else self.models | {job.ready.model}
        endpoint = ModelEndpoint(self.base_url, self.api_key, meter, models)
        async with contextlib.AsyncExitStack() as stack:
            try:
                check_endpoint(self.base_url)
            except RelayRefused as error:
                reason = f"the {self.name} runtime cannot reach the model: {error}"
                raise _Failed(reason) from None
            inside = await stack.enter_async_context(relayed(endpoint, argv, scratch))
            yield inside, endpoint

    async def _run(
        self,
        job: Job,
        sandbox: Sandbox,
        argv: list[str],
        prompt_file: Path,
        scratch: Path,
        earlier: Earlier | None,
    ) -> Outcome:
        worktree = job.worktree
        seen = _Seen(meter=await self._counted_on(job, self._metered(job, sandbox)))
        lines = _Lines(self, job, seen)
        async with self._endpoint(job, argv, scratch, seen.meter) as (launched, endpoint):
            request = Request(
                argv=launched,
                workdir=worktree,
                cwd=worktree,
                env=self._env(sandbox, scratch, endpoint),
                limits=job.toolbox.command_limits().with_wall(job.limits.max_seconds),
                read_only=(scratch, *(Path(entry) for entry in self.spec.read_only)),
                protect=(worktree / ".git",),
                stdin=prompt_file if self.spec.prompt == "stdin" else None,
            )
            publisher = asyncio.create_task(lines.publish())
            try:
                ran = await until_refused(execute(sandbox, request, 16_000, lines.feed), seen.meter)
            except (FileNotFoundError, PermissionError) as error:
                reason = f"the {self.name} runtime cannot start {argv[0]!r}: {error.strerror}"
                raise _Failed(reason) from None
            finally:
                lines.close()
                await publisher
        meter = seen.meter
        if ran is None:
            # A call past a limit was refused: the tool was stopped, as a limit ends the
            # built-in loop.
            assert meter is not None
            assert meter.reason is not None
            ran = Ran(None, False, "", 0.0, sandbox.name, stopped="limit")
            await self._transcribe_end(job, seen, ran)
            return self._ended(seen, meter.reason, retryable=False, usage=meter.usage)
        await self._transcribe_end(job, seen, ran)
        if ran.exit_code is not None and ran.exit_code != 0 and seen.first.startswith(NOT_STARTED):
            said = seen.first.split(": ", 2)[-1]
            raise _Failed(f"the {self.name} runtime cannot start {argv[0]!r}: {said}")
        if meter is not None:
            usage: Usage | None = meter.usage if meter.turns else None
        else:
            usage = self._usage(seen, job.ready.model)
            if usage is not None:
                await job.observer.model_called(max(seen.lines, 1), usage)
        if ran.timed_out:
            reason = f"wall-time limit reached: {job.limits.max_seconds:g} s allowed"
            return self._ended(seen, reason, retryable=False, usage=usage)
        if ran.exit_code is None:
            reason = f"{self.name} was stopped: {ran.stopped}"
            return self._ended(seen, reason, retryable=False, usage=usage)
        if ran.exit_code != 0:
            errors = " | ".join(seen.tail)
            reason = f"{self.name} exited with {ran.exit_code}" + (f": {errors}" if errors else "")
            return self._ended(seen, reason[:2000], retryable=True, usage=usage)
        return Outcome(
            True,
            summary=seen.last_text or "(no summary)",
            turns=seen.turns,
            tool_calls=seen.lines,
            usage=usage if usage is not None else Usage(cost_usd=None),
        )

    async def _transcribe_end(self, job: Job, seen: _Seen, ran: Ran) -> None:
        """The transcript's last entry: the tool's command line (as its spec has it: the
        prompt stays a placeholder), how it ended and the end of its output."""
        if job.transcript is None:
            return
        ended = CommandResult(ran.exit_code, ran.timed_out, "", ran.seconds, stopped=ran.stopped)
        await job.transcript.add(
            Entry(
                kind="command",
                tool=self.name,
                arguments=" ".join(self.spec.command),
                result="\n".join(seen.tail),
                is_error=ran.exit_code != 0,
                exit_code=ran.exit_code,
                status=ended.status(),
            )
        )

    def line(self, line: str, seen: _Seen) -> Progress | None:
        """Take one line of the tool's output; the progress it makes, if any."""
        line = _clean(line)
        if not line:
            return None
        if not seen.first:
            seen.first = line
        seen.lines += 1
        seen.tail.append(line[:300])
        text = self._take(line, seen)
        if not text:
            return None
        seen.last_text = text
        return Progress(
            turns=seen.turns,
            tool_calls=seen.lines,
            files_changed=[],
            usage=seen.usage,
            last_action=text if len(text) <= 120 else text[:117] + "…",
        )

    def _take(self, line: str, seen: _Seen) -> str:
        """The line's text for progress; a usage report is added up instead."""
        if self.spec.usage != "json" or not line.startswith("{"):
            return line
        try:
            data = json.loads(line)
        except ValueError:
            return line
        if not isinstance(data, dict):
            return line
        report = data.get("usage")
        if isinstance(report, dict) and seen.meter is None:
            counted = _usage(report)
            if counted is not None:
                seen.all_costed = seen.all_costed and counted.cost_usd is not None
                seen.reported = counted if seen.reported is None else seen.reported.plus(counted)
        text = data.get("text") or data.get("message") or data.get("result")
        return str(text) if isinstance(text, str) else ""

    def _usage(self, seen: _Seen, model: str) -> Usage | None:
        if seen.reported is None:
            return None
        if seen.all_costed:
            return seen.reported
        tokens = msgspec.structs.replace(seen.reported, cost_usd=None, cost_complete=True)
        return (self.prices or load_prices()).priced(model, tokens)

    @staticmethod
    def _ended(seen: _Seen, reason: str, *, retryable: bool, usage: Usage | None = None) -> Outcome:
        return Outcome(
            False,
            reason=reason,
            retryable=retryable,
            turns=seen.turns,
            tool_calls=seen.lines,
            usage=usage if usage is not None else Usage(cost_usd=None),
        )


async def until_refused(running: Awaitable[Ran], meter: Meter | None) -> Ran | None:
    """How the tool ran; ``None`` when the metered endpoint refused a call past a limit
    first (the tool then stopped: its sandbox killed with the cancelled run)."""
    if meter is None:
        return await running
    task = asyncio.ensure_future(running)
    refused = asyncio.ensure_future(meter.ended.wait())
    try:
        await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()


def _usage(report: dict[str, Any]) -> Usage | None:
    def count(key: str) -> int:
        value = report.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(key)
        return value

    try:
        usage = Usage(
            input_tokens=count("input_tokens"),
            output_tokens=count("output_tokens"),
            cache_creation_input_tokens=count("cache_creation_input_tokens"),
            cache_read_input_tokens=count("cache_read_input_tokens"),
        )
    except ValueError:
        return None  # a malformed report is ignored, not trusted
    cost = report.get("cost_usd")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
        return msgspec.structs.replace(usage, cost_usd=float(cost))
    return usage


def _clean(line: str) -> str:
    return _CONTROL.sub("", line).strip()[:MAX_LINE]


def _fill(part: str, values: dict[str, str]) -> str:
    # One pass: a prompt that itself holds "{model}" is not filled again.
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], part)


class _Lines:
    """Splits the tool's output into lines as it arrives (from the event loop) and
    publishes their progress and transcript batches in order, off the loop's reading path."""

    def __init__(self, runtime: CommandRuntime, job: Job, seen: _Seen) -> None:
        self._runtime = runtime
        self._job = job
        self._seen = seen
        self._buffer = bytearray()
        self._queue: asyncio.Queue[Progress | Entry | None] = asyncio.Queue()
        self._output = OutputLines()
        self._dropped = 0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > 4 * MAX_LINE:  # no line end in sight: cut one here
                    end = len(self._buffer)
                else:
                    return
            raw, self._buffer = bytes(self._buffer[:end]), self._buffer[end + 1 :]
            self._take(raw)

    def _take(self, raw: bytes) -> None:
        text = raw.decode(errors="replace")
        progress = self._runtime.line(text, self._seen)
        if progress is not None and self._queue.qsize() < MAX_PENDING:
            self._queue.put_nowait(progress)
        if self._job.transcript is not None and (line := _clean(text)):
            self._batch(self._output.line(line))

    def _batch(self, text: str | None) -> None:
        if text is None:
            return
        if self._queue.qsize() >= MAX_PENDING:
            self._dropped += text.count("\n") + 1
            return
        if self._dropped:
            text = f"[… {self._dropped} lines not recorded: the transcript fell behind …]\n{text}"
            self._dropped = 0
        self._queue.put_nowait(Entry(kind="output", text=text))

    def close(self) -> None:
        if self._buffer:
            self._take(bytes(self._buffer))
            self._buffer.clear()
        self._batch(self._output.rest())
        if self._dropped:  # no batch left to say so: an entry of its own, past the bound
            said = f"[… {self._dropped} lines not recorded: the transcript fell behind …]"
            self._queue.put_nowait(Entry(kind="output", text=said))
        self._queue.put_nowait(None)

    async def publish(self) -> None:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, Entry):
                if self._job.transcript is not None:
                    await self._job.transcript.add(item)
            else:
                await self._job.observer.progressed(item)
