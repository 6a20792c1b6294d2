"""A CLI agent as a runtime, started from a declarative spec (``runtimes.spec``).

The tool runs in the worktree in its own process group, with the environment the
runner's commands get (no credentials) plus what its spec asks for; each line it prints
is progress; the usage it reports (if its spec says how) is recorded, and usage it does
not report stays unknown. A wall-time limit, a stop order or a crash ends the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from aether_agent_runner.adapters.git import reset_to
from aether_agent_runner.agent import Outcome, Progress
from aether_agent_runner.commands import command_env, is_secret_name
from aether_agent_runner.prompt import repository_map, task_prompt
from aether_agent_runner.runtimes import Job
from aether_agent_runner.runtimes.roles import role_prompt
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_agent_runner.transcript import Entry, OutputLines
from aether_events import Usage
from aether_llm import PriceTable, load_prices

_PLACEHOLDER = re.compile(r"\{(prompt|prompt_file|model)\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_LINE = 4000


@dataclass
class _Seen:
    lines: int = 0
    last_text: str = ""
    reported: Usage | None = None
    # Whether every report carried its own cost (else the price table prices the tokens).
    all_costed: bool = True
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    output: OutputLines = field(default_factory=lambda: OutputLines(None))


@dataclass
class CommandRuntime:
    spec: CommandSpec
    base_url: str
    api_key: str
    prices: PriceTable | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    async def run(self, job: Job) -> Outcome:
        ready, worktree = job.ready, job.worktree
        await asyncio.to_thread(reset_to, job.git, ready.base_sha)
        repo_map = await asyncio.to_thread(repository_map, worktree)
        prompt = task_prompt(ready, repo_map, job.limits)
        if job.role is not None:
            prompt = role_prompt(job.role) + "\n\n" + prompt
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aether-cli-"))
        try:
            prompt_file = scratch / "prompt.md"
            prompt_file.write_text(prompt)
            values = {"prompt": prompt, "prompt_file": str(prompt_file), "model": ready.model}
            argv = [_fill(part, values) for part in self.spec.command]
            return await self._run(job, argv, prompt, scratch)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    def _env(self, scratch: Path) -> dict[str, str]:
        passed = tuple(name for name in self.spec.env if not is_secret_name(name))
        env = command_env(os.environ, scratch, passed)
        if self.spec.model_endpoint:
            env["ANTHROPIC_BASE_URL"] = self.base_url
            env["ANTHROPIC_API_KEY"] = self.api_key
        return env

    async def _run(self, job: Job, argv: list[str], prompt: str, scratch: Path) -> Outcome:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=job.worktree,
                env=self._env(scratch),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as error:
            reason = f"the {self.name} runtime cannot start {argv[0]!r}: {error.strerror}"
            return Outcome(False, reason=reason, retryable=False)
        seen = _Seen(output=OutputLines(job.transcript))
        code: int | None = None
        try:
            async with asyncio.timeout(job.limits.max_seconds):
                await self._feed(process, prompt)
                assert process.stdout is not None
                assert process.stderr is not None
                await asyncio.gather(
                    self._read(process.stdout, job, seen),
                    _tail(process.stderr, seen.tail),
                )
                code = await process.wait()
        except TimeoutError:
            return self._ended(
                seen,
                f"wall-time limit reached: {job.limits.max_seconds:g} s allowed",
                retryable=False,
            )
        finally:
            _kill_group(process.pid)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await self._transcribe_end(job, seen, code)
        usage = self._usage(seen, job.ready.model)
        if usage is not None:
            await job.observer.model_called(max(seen.lines, 1), usage)
        if code != 0:
            errors = " | ".join(seen.tail)
            reason = f"{self.name} exited with {code}" + (f": {errors}" if errors else "")
            return self._ended(seen, reason[:2000], retryable=True, usage=usage)
        return Outcome(
            True,
            summary=seen.last_text or "(no summary)",
            turns=0,
            tool_calls=seen.lines,
            usage=usage if usage is not None else Usage(cost_usd=None),
        )

    async def _transcribe_end(self, job: Job, seen: _Seen, code: int | None) -> None:
        """The output not yet recorded, then the tool's command line (as its spec has it:
        the prompt stays a placeholder) and how it ended."""
        await seen.output.flush()
        if job.transcript is None:
            return
        status = "stopped (wall-time limit or stop order)" if code is None else f"exit code {code}"
        await job.transcript.add(
            Entry(
                kind="command",
                tool=self.name,
                arguments=" ".join(self.spec.command),
                result="\n".join(seen.tail),
                is_error=code != 0,
                exit_code=code,
                status=status,
            )
        )

    async def _feed(self, process: asyncio.subprocess.Process, prompt: str) -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self.spec.prompt == "stdin":
                process.stdin.write(prompt.encode())
                await process.stdin.drain()
            process.stdin.close()

    async def _read(self, stream: asyncio.StreamReader, job: Job, seen: _Seen) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: skip what it holds
                raw = await stream.read(65536)
            if not raw:
                return
            line = _CONTROL.sub("", raw.decode(errors="replace")).strip()[:MAX_LINE]
            if not line:
                continue
            seen.lines += 1
            await seen.output.line(line)
            text = self._take(line, seen)
            if text:
                seen.last_text = text
                await job.observer.progressed(
                    Progress(
                        turns=0,
                        tool_calls=seen.lines,
                        files_changed=[],
                        usage=seen.reported or Usage(cost_usd=None),
                        last_action=text if len(text) <= 120 else text[:117] + "…",
                    )
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
        if isinstance(report, dict):
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
            tool_calls=seen.lines,
            usage=usage if usage is not None else Usage(cost_usd=None),
        )


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


async def _tail(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            raw = await stream.read(65536)
        if not raw:
            return
        line = _CONTROL.sub("", raw.decode(errors="replace")).strip()
        if line:
            tail.append(line[:300])


def _fill(part: str, values: dict[str, str]) -> str:
    # One pass: a prompt that itself holds "{model}" is not filled again.
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], part)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
