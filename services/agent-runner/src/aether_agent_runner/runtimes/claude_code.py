"""Claude Code as a runtime, through the ``claude-agent-sdk`` package (which carries the
Claude Code CLI).

What is mapped: the task's prompt, with the repository's own ``CLAUDE.md`` / ``AGENTS.md``
appended to Claude Code's system prompt; its PreToolUse, PostToolUse and Stop hooks to
progress (tool, file, command); each model reply's usage (from the stream, cache reads and
writes included), priced by the price table and recorded as one ``UsageRecorded`` per
call, the sum checked at the end against the cost the CLI reports; the turn and cost
limits; the model's endpoint (``ANTHROPIC_BASE_URL``, the runner's own).

What it may do: read and edit files inside the worktree (its Read, Write, Edit, Glob and
Grep tools; a PreToolUse hook refuses any path outside it or in ``.git``) and run programs
only through the runner's ``run_command`` (offered as an in-process MCP tool, so it goes
through the same policy and sandbox as the built-in loop's). Its own Bash and web tools are
not offered. Nothing from the repository configures it: no project settings (their hooks
would run outside any sandbox), no ``.mcp.json`` servers. Its environment carries the
model endpoint and key and none of the runner's other variables.

Resuming after a runner crash: the session id is chosen here and journalled before the
CLI starts, and the CLI's configuration directory (which holds its session transcripts)
lives beside the journal, outside the worktree. When the same attempt is delivered again
(its runner died), the CLI is started with ``resume`` on that session and told to carry
on, the worktree kept as the crash left it; the turns whose replies the CLI had written to
its transcript are not asked of the model again. If it cannot resume, a fresh session
starts from the base commit, and a progress event says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import claude_agent_sdk as sdk
import msgspec

from aether_agent_runner.adapters.git import reset_to
from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.adapters.tools import ToolResult
from aether_agent_runner.adapters.transcript import Entry, as_json, command_entry
from aether_agent_runner.domain import limit_reached
from aether_agent_runner.runtimes import CLAUDE_CODE, Job
from aether_agent_runner.runtimes.cli_limits import CliLimits
from aether_agent_runner.runtimes.confined_cli import (
    ConfinedCli,
    bundled_cli,
    confined,
    sandbox_of,
)
from aether_agent_runner.runtimes.model_endpoint import Meter, ModelEndpoint
from aether_agent_runner.runtimes.prompt import CONTINUE, repository_view, task_prompt
from aether_agent_runner.runtimes.relay import RelayRefused
from aether_agent_runner.runtimes.roles import role_prompt
from aether_agent_runner.runtimes.session import (
    Earlier,
    earlier_run,
    start_record,
    tool_record,
    turn_record,
)
from aether_events import ZERO_USAGE, Usage, known_cost
from aether_llm import PriceTable, load_prices
from aether_sandbox.trees import remove_tree

log = logging.getLogger("aether.agent-runner.claude-code")

FILE_TOOLS = ("Read", "Write", "Edit", "Glob", "Grep")
EDITING_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"})
COMMAND_TOOL = "mcp__aether__run_command"
MEMORY_FILES = ("CLAUDE.md", "AGENTS.md")
MAX_MEMORY_CHARS = 32_000
# A relative cost difference beyond this between the CLI's figure and the price table's
# is logged: one of the two price lists is out of date.
COST_TOLERANCE = 0.01
# How long a command waits for Claude Code's own file tools at work (a read, an edit, a
# search: quick), and a file tool for a command, before it is refused (``FileWindows``).
FILE_TOOL_PATIENCE_SECONDS = 30.0
# The CLI's limit on one PreToolUse hook, whose check may wait that long: past it the CLI
# would fail the hook (and, blocking on failure, the tool).
PRE_TOOL_HOOK_SECONDS = 2 * FILE_TOOL_PATIENCE_SECONDS


class CommandBusy(Exception):
    """A command was refused: Claude Code's file tools stayed at work past the patience."""


@dataclass
class FileWindows:
    """Claude Code's own file tools and the agent's commands, kept apart in time.

    A file tool's path is checked in its PreToolUse hook and opened by the CLI after it:
    a command running in between could put a link in its place that leads out of the
    worktree. Every process a command starts ends with it (the sandbox kills the rest), so
    a file tool's window (its check to its result) opens only while no command runs, and
    a command starts only once every open window has closed: by the tool's PostToolUse or
    PostToolUseFailure hook, or by the next model reply (the CLI asks the model only once
    every call of the last reply has its result). However the CLI schedules its tools,
    nothing but the CLI changes the worktree's links while one of its file tools is at
    work."""

    patience: float = FILE_TOOL_PATIENCE_SECONDS
    open: set[str] = field(default_factory=set)
    commands: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def opening(self, use_id: str) -> bool:
        """Open a file tool's window once no command runs; False when one still runs after
        ``patience`` (the tool is then refused)."""
        async with self.changed:
            try:
                async with asyncio.timeout(self.patience):
                    await self.changed.wait_for(lambda: self.commands == 0)
            except TimeoutError:
                return False
            self.open.add(use_id)
            return True

    async def closing(self, use_id: str | None = None) -> None:
        """Close a file tool's window (``None``: every one left open)."""
        async with self.changed:
            if use_id is None:
                self.open.clear()
            else:
                self.open.discard(use_id)
            self.changed.notify_all()

    @contextlib.asynccontextmanager
    async def command(self) -> AsyncIterator[None]:
        """Hold off file tools while a command runs; it starts once none is at work, or
        raises ``CommandBusy`` after ``patience``."""
        async with self.changed:
            try:
                async with asyncio.timeout(self.patience):
                    await self.changed.wait_for(lambda: not self.open)
            except TimeoutError:
                raise CommandBusy(
                    f"Claude Code's file tools were still at work after {self.patience:g} s;"
                    " run the command again"
                ) from None
            self.commands += 1
        try:
            yield
        finally:
            async with self.changed:
                self.commands -= 1
                self.changed.notify_all()


# What of the runner's environment the CLI keeps: where programs and certificates are,
# locale and proxies. Everything else is blanked (tokens, the bus's credentials).
KEPT_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "USER",
        "LOGNAME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)

RULES = """\
You are working one task of a larger mission for Aether, inside a git worktree of the \
repository; other agents work other tasks in parallel and their work is merged with yours.
- Change what the task needs and nothing else. Stay inside the working directory; the \
.git directory is off limits.
- There is no shell. To run a program (tests, linters), use the run_command tool: one \
program with its arguments, no pipes or redirection.
- Do not commit, branch or push: your changes are committed and merged for you.
- When the task is done, reply with a short summary of what you changed and why."""


def cli_environment(
    inherited: dict[str, str], base_url: str, api_key: str, config_dir: Path
) -> dict[str, str]:
    """The variables given to the CLI: the SDK merges them over the runner's own, so every
    inherited one not kept is blanked."""
    env = {name: "" for name in inherited if name not in KEPT_ENV}
    env.update(
        {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": api_key,
            "CLAUDE_CONFIG_DIR": str(config_dir),
            # No title generation, update checks or telemetry: only the task's calls.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    )
    return env


def inside(root: Path, path: str) -> str | None:
    """``path`` (absolute or relative to ``root``) as a relative path when it stays inside
    the worktree and out of ``.git`` once symbolic links are followed, else ``None``. A
    path beginning with ``~`` is outside: the CLI reads it as a home directory (``Glob``
    with the path ``~`` listed the runner's). So is one the CLI would read otherwise than
    it is written (``unlike_read``)."""
    if unlike_read(path) or path.startswith("~"):
        return None
    root = root.resolve()
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        return None
    relative = resolved.relative_to(root)
    if any(part.lower() == ".git" for part in relative.parts):
        return None
    return relative.as_posix() or "."


# Glob patterns, by tool and argument: they name paths too, and the CLI follows an absolute
# one out of the worktree (``Glob`` with ``/etc/host*`` lists the host's files).
PATTERNS = {"Glob": "pattern", "Grep": "glob"}


def unlike_read(text: str) -> bool:
    """Whether the CLI might read a path or pattern otherwise than it is written: empty,
    with a control character, or with space around it, which the CLI trims before it
    uses the path and after the hook has seen it (``Grep`` with the path ``\\t/etc/passwd``
    answered that file's lines)."""
    return (
        not text or text != text.strip() or any(ord(char) < 32 or ord(char) == 127 for char in text)
    )


def pattern_inside(pattern: str) -> bool:
    """Whether a glob pattern stays below the directory it is matched in: relative, with no
    ``..`` among its parts, and not reaching into ``.git``."""
    if unlike_read(pattern) or pattern.startswith(("/", "~", "\\")):
        return False
    parts = pattern.replace("\\", "/").split("/")
    return ".." not in parts and not any(part.lower() == ".git" for part in parts)


def refused_argument(tool: str, arguments: dict[str, Any], root: Path) -> object | None:
    """The first path or glob pattern of a call that leads outside the worktree or into
    ``.git`` (what the hook refuses), or None."""
    for key in ("file_path", "path", "notebook_path"):
        value: object = arguments.get(key)
        if value is not None and (not isinstance(value, str) or inside(root, value) is None):
            return value
    pattern: object = arguments.get(PATTERNS[tool]) if tool in PATTERNS else None
    if pattern is not None and (not isinstance(pattern, str) or not pattern_inside(pattern)):
        return pattern
    return None


def deny(reason: str) -> sdk.HookJSONOutput:
    """A PreToolUse answer that refuses the call, telling the model why."""
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        }
    }


def memory_files(root: Path) -> str:
    """The repository's own agent instructions (``CLAUDE.md``, ``AGENTS.md``), bounded; a
    file that is a link out of the worktree is not read."""
    parts = []
    for name in MEMORY_FILES:
        if inside(root, name) != name:
            continue
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")[:MAX_MEMORY_CHARS]
        parts.append(f"<repository-instructions file={name!r}>\n{text}\n</repository-instructions>")
    return "\n\n".join(parts)


def result_usage(result: sdk.ResultMessage, model: str, prices: PriceTable) -> Usage:
    """The run's usage from its result, per model, priced by the price table; where the
    table has no price the CLI's own figure is taken (and the sum says so). Only a check
    now: what is recorded is each reply's usage as it streams (``_Run.streamed``)."""
    per_model: dict[str, Usage] = {}
    cli_cost: dict[str, float | None] = {}
    for name, model_counts in (result.model_usage or {}).items():
        data: dict[str, Any] = dict(model_counts)
        per_model[name] = Usage(
            input_tokens=int(data.get("inputTokens") or 0),
            output_tokens=int(data.get("outputTokens") or 0),
            cache_creation_input_tokens=int(data.get("cacheCreationInputTokens") or 0),
            cache_read_input_tokens=int(data.get("cacheReadInputTokens") or 0),
        )
        raw = data.get("costUSD")
        cli_cost[name] = float(raw) if isinstance(raw, int | float) else None
    if not per_model and result.usage:
        usage = result.usage
        per_model[model] = Usage(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_creation_input_tokens=int(usage.get("cache_creation_input_tokens") or 0),
            cache_read_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
        )
        cli_cost[model] = result.total_cost_usd
    total = Usage(cost_usd=0.0)
    for name, counts in per_model.items():
        priced = prices.priced(name, counts)
        theirs = cli_cost.get(name)
        if priced.cost_usd is None:
            priced = msgspec.structs.replace(counts, cost_usd=theirs)
        elif theirs is not None and abs(theirs - priced.cost_usd) > COST_TOLERANCE * max(
            theirs, priced.cost_usd, 1e-9
        ):
            log.warning(
                "the CLI's cost differs from the price table's; the table's is recorded",
                extra={"model": name, "cli_usd": theirs, "table_usd": priced.cost_usd},
            )
        total = total.plus(priced)
    return total


def check_total(recorded: Usage, result: sdk.ResultMessage, model: str, prices: PriceTable) -> bool:
    """Whether the replies recorded add up to the CLI's reported total (its tokens, and its
    cost within ``COST_TOLERANCE``); a warning with both figures when they do not."""
    theirs = result_usage(result, model, prices)
    tokens = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    same_tokens = all(getattr(recorded, name) == getattr(theirs, name) for name in tokens)
    cli_usd = result.total_cost_usd
    ours = recorded.cost_usd
    same_cost = (
        cli_usd is None
        or ours is None
        or abs(cli_usd - ours) <= COST_TOLERANCE * max(cli_usd, ours, 1e-9)
    )
    if same_tokens and same_cost:
        return True
    log.warning(
        "the usage recorded per call differs from the CLI's reported total; "
        "recorded %s (%s USD), CLI %s (%s USD)",
        msgspec.to_builtins(recorded),
        ours,
        msgspec.to_builtins(theirs),
        cli_usd,
        extra={"recorded_usd": ours, "cli_usd": cli_usd},
    )
    return False


def describe(tool: str, tool_input: dict[str, Any], root: Path) -> str:
    """A short account of a tool call for progress: the tool, and its file or command."""
    name = "run_command" if tool == COMMAND_TOOL else tool
    detail = tool_input.get("command") or tool_input.get("pattern") or ""
    path = tool_input.get("file_path") or tool_input.get("path") or tool_input.get("notebook_path")
    if isinstance(path, str) and path:
        detail = inside(root, path) or path
    text = f"{name} {detail}".strip()
    return text if len(text) <= 120 else text[:117] + "…"


@dataclass
class _Run:
    """What one run has done so far, as hooks and messages tell it."""

    job: Job
    turns: int = 0
    tool_calls: int = 0
    files_changed: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    seen_messages: set[str] = field(default_factory=set)
    # What prices each reply.
    prices: PriceTable | None = None
    # Replies of the attempt so far, journalled ones of earlier runs included: the sequence
    # that names each reply's usage event, so a resumed run never reuses one.
    replies: int = 0
    # What this process's replies used (to check against the CLI's result).
    streamed_usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    # Where each model reply is journalled (its usage, for a resume to count).
    record: Callable[[dict[str, Any]], None] | None = None
    # The model and counts of the reply being streamed.
    replying: tuple[str, dict[str, Any]] | None = None
    # The reply's transcript entries, held until its final usage is streamed.
    held: list[Entry] = field(default_factory=list)
    windows: FileWindows = field(default_factory=FileWindows)

    async def progress(self, action: str, *, always: bool = False) -> None:
        await self.job.observer.progressed(
            Progress(
                turns=self.turns,
                tool_calls=self.tool_calls,
                files_changed=list(self.files_changed),
                usage=self.usage,
                last_action=action,
            ),
            always=always,
        )

    async def transcribe(self, entry: Entry) -> None:
        """Add ``entry`` to the transcript, after the reply entries held so far."""
        await self.reply_done(None)
        if self.job.transcript is not None:
            await self.job.transcript.add(entry)

    async def reply_done(self, usage: Usage | None) -> None:
        """Publish the held entries of a reply, ``usage`` (its final counts) on the last."""
        held, self.held = self.held, []
        if usage is not None:
            if not held:
                held.append(Entry(kind="turn"))
            held[-1] = dataclasses.replace(held[-1], usage=usage)
        if self.job.transcript is not None:
            for entry in held:
                await self.job.transcript.add(entry)

    async def before_tool(
        self, data: sdk.HookInput, tool_use_id: str | None, _context: sdk.HookContext
    ) -> sdk.HookJSONOutput:
        tool = str(data.get("tool_name", ""))
        tool_input = data.get("tool_input")
        arguments: dict[str, Any] = tool_input if isinstance(tool_input, dict) else {}
        root = self.job.worktree
        window = tool_use_id or f"call-{self.tool_calls + 1}"
        # Opened before the check: no command may run from it to the tool's result.
        if tool in FILE_TOOLS and not await self.windows.opening(window):
            return deny(
                f"a command of yours was still running after {self.windows.patience:g} s; "
                f"call {tool} again once it has ended"
            )
        try:
            refused = refused_argument(tool, arguments, root)
        except Exception:
            # Refused, not let through: a check that cannot be made is not a pass.
            await self.windows.closing(window)
            log.exception("a call's paths could not be checked", extra={"tool": tool})
            return deny("the runner could not check this call's paths; it was not run")
        if refused is not None:
            await self.windows.closing(window)
            log.info("refused a path outside the worktree", extra={"tool": tool})
            await self.transcribe(
                Entry(
                    kind="tool_call",
                    tool=tool,
                    arguments=as_json(arguments),
                    result=f"refused: {refused!r} is outside the repository or in .git",
                    is_error=True,
                )
            )
            return deny(
                f"{refused!r} is outside the repository or in .git; only files of the "
                "working directory may be used"
            )
        self.tool_calls += 1
        if self.record is not None:
            self.record(tool_record())
        await self.progress(describe(tool, arguments, root))
        return {}

    async def after_tool(
        self, data: sdk.HookInput, tool_use_id: str | None, _context: sdk.HookContext
    ) -> sdk.HookJSONOutput:
        tool = str(data.get("tool_name", ""))
        if tool in FILE_TOOLS and tool_use_id is not None:
            await self.windows.closing(tool_use_id)
        tool_input = data.get("tool_input")
        arguments: dict[str, Any] = tool_input if isinstance(tool_input, dict) else {}
        if tool in EDITING_TOOLS:
            path = arguments.get("file_path") or arguments.get("notebook_path")
            relative = inside(self.job.worktree, path) if isinstance(path, str) else None
            if relative is not None and relative not in self.files_changed:
                self.files_changed.append(relative)
        if tool != COMMAND_TOOL:
            # A command's entry comes from the runner's own run_command (exit status).
            response = data.get("tool_response")
            result = response if isinstance(response, str) else as_json(response)
            await self.transcribe(
                Entry(kind="tool_call", tool=tool, arguments=as_json(arguments), result=result)
            )
        # No progress event: it would carry the same counts, so the same event id, as the
        # one published before the call.
        return {}

    async def after_failed_tool(
        self, data: sdk.HookInput, tool_use_id: str | None, _context: sdk.HookContext
    ) -> sdk.HookJSONOutput:
        if str(data.get("tool_name", "")) in FILE_TOOLS and tool_use_id is not None:
            await self.windows.closing(tool_use_id)
        return {}

    async def run_command(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The CLI's ``mcp__aether__run_command``: the runner's own run_command, once no
        file tool of the CLI is at work (``FileWindows``)."""
        toolbox = self.job.toolbox
        try:
            async with self.windows.command():
                result = await toolbox.call("run_command", arguments)
        except CommandBusy as busy:
            result = ToolResult(str(busy), True)
        await self.transcribe(command_entry("run_command", arguments, result))
        return {"content": [{"type": "text", "text": result.content}], "is_error": result.is_error}

    async def stopped(
        self, _data: sdk.HookInput, _tool_use_id: str | None, _context: sdk.HookContext
    ) -> sdk.HookJSONOutput:
        await self.progress("stopped")
        return {}

    def assistant(self, message: sdk.AssistantMessage) -> bool:
        """Count and transcribe a message of a model reply; whether it begins a new one."""
        key = message.message_id or str(id(message))
        texts = [b.text for b in message.content if isinstance(b, sdk.TextBlock)]
        asked = [b.name for b in message.content if isinstance(b, sdk.ToolUseBlock)]
        first = key not in self.seen_messages
        if texts or asked or first:
            # The CLI may split one reply into several messages: one entry each.
            self.held.append(
                Entry(
                    kind="turn",
                    text="\n".join(texts),
                    tool=", ".join(asked),
                    stop_reason=message.stop_reason,
                )
            )
        if not first:
            return False
        self.seen_messages.add(key)
        self.turns += 1
        return True

    async def streamed(self, message: sdk.StreamEvent) -> None:
        """Count a model reply once it has been received whole: its ``message_start``
        names the model and the input counts, its ``message_delta`` the final output
        count (the assistant messages carry the counts of the reply's start only). The
        reply is journalled, then recorded as one usage event named by its sequence in
        the attempt (a resumed run counts on from the journalled replies), then its
        transcript entries are published with that usage."""
        event = message.event
        kind = event.get("type")
        if kind == "message_start":
            started = event.get("message")
            started = started if isinstance(started, dict) else {}
            counts = started.get("usage")
            self.replying = (
                str(started.get("model") or self.job.ready.model),
                dict(counts) if isinstance(counts, dict) else {},
            )
        elif kind == "message_delta" and self.replying is not None:
            model, counts = self.replying
            self.replying = None
            final = event.get("usage")
            counts.update(final if isinstance(final, dict) else {})
            usage = Usage(
                input_tokens=_tokens(counts, "input_tokens"),
                output_tokens=_tokens(counts, "output_tokens"),
                cache_creation_input_tokens=_tokens(counts, "cache_creation_input_tokens"),
                cache_read_input_tokens=_tokens(counts, "cache_read_input_tokens"),
            )
            priced = (self.prices or load_prices()).priced(model, usage)
            self.usage = self.usage.plus(priced)
            self.streamed_usage = self.streamed_usage.plus(priced)
            self.replies += 1
            if self.record is not None:
                self.record(turn_record(model, usage))
            await self.job.observer.model_called(self.replies, priced)
            await self.reply_done(priced)


def _tokens(counts: dict[str, Any], key: str) -> int:
    value = counts.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _kill_cli(client: sdk.ClaudeSDKClient) -> None:
    """Kill the CLI of a run that is being abandoned (a stop order, the wall time).

    Closing the client gives the CLI five seconds to save its session before it is
    terminated; an abandoned run is not resumed, and a stop must take effect at
    once. The SDK does not expose its process, hence the private attributes; should they
    change, the close still ends the CLI, only later."""
    process = getattr(getattr(client, "_transport", None), "_process", None)
    if process is not None and getattr(process, "returncode", 0) is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


@dataclass
class ClaudeCodeRuntime:
    """Runs the Claude Code CLI against ``base_url`` with ``api_key``."""

    base_url: str
    api_key: str
    cli_path: str | None = None
    prices: PriceTable | None = None
    name: str = CLAUDE_CODE
    # The models a call may name besides the attempt's own (the runner's tiers); ``None``:
    # any.
    models: frozenset[str] | None = None
    # What the CLI and everything it starts may use in the sandbox (``None``: defaults).
    cli_limits: CliLimits | None = None

    async def run(self, job: Job) -> Outcome:
        ready = job.ready
        records = await asyncio.to_thread(job.journal.read)
        earlier = earlier_run(records, job.identity, self.prices or load_prices(), ready.model)
        config_dir = job.journal.path.parent / "claude-code"
        if earlier is not None:
            log.info("resuming the Claude Code session", extra={"session": earlier.session_id})
            outcome, resumed = await self._session(job, config_dir, earlier, resume=True)
            if resumed:
                return outcome
            notice = (
                f"could not resume Claude Code session {earlier.session_id}; "
                "starting a fresh session"
            )
            log.warning(notice, extra={"reason": outcome.reason or "it ended at once"})
            # Counted on from the resumption's notice (``_session``), so no event id of
            # the attempt is used twice; the earlier session's spending is still the task's.
            earlier = Earlier(
                session_id="",
                turns=earlier.turns,
                tool_calls=earlier.tool_calls + 2,
                usage=earlier.usage,
            )
            await _Run(job, earlier.turns, earlier.tool_calls).progress(notice, always=True)
        if await asyncio.to_thread(reset_to, job.git, ready.base_sha):
            log.warning("restarting cleanly: discarded changes of an earlier run")
        await asyncio.to_thread(remove_tree, config_dir)
        session_id = str(uuid.uuid4())
        await asyncio.to_thread(job.journal.start, start_record(job.identity, session_id, earlier))
        fresh = Earlier(
            session_id=session_id,
            turns=earlier.turns if earlier else 0,
            tool_calls=earlier.tool_calls if earlier else 0,
            usage=earlier.usage if earlier else ZERO_USAGE,
        )
        outcome, _ = await self._session(job, config_dir, fresh, resume=False)
        return outcome

    async def _session(
        self, job: Job, config_dir: Path, earlier: Earlier, *, resume: bool
    ) -> tuple[Outcome, bool]:
        """One run of the CLI on ``earlier.session_id`` (a new one, or resumed); the
        outcome, and whether the session got going (a resume that did not is retried
        fresh by the caller)."""
        worktree = job.worktree
        if resume:
            prompt = CONTINUE
        else:
            repo_map, skills = await asyncio.to_thread(repository_view, worktree)
            prompt = task_prompt(job.ready, repo_map, job.limits, skills)
        memory = await asyncio.to_thread(memory_files, worktree)
        await asyncio.to_thread(config_dir.mkdir, parents=True, exist_ok=True)
        run = _Run(
            job,
            earlier.turns,
            earlier.tool_calls,
            usage=earlier.usage,
            record=job.journal.append,
            prices=self.prices or load_prices(),
            replies=earlier.turns,
        )
        spent = limit_reached(job.limits, earlier.turns, earlier.usage, 0.0)
        if spent is not None:
            return self._outcome(run, False, reason=spent, retryable=False), True
        began = run.turns
        stderr: deque[str] = deque(maxlen=20)
        options = self._options(job, run, memory, config_dir, stderr.append)
        # What the earlier session used counts against the task's turn and cost limits.
        limits = job.limits
        options = dataclasses.replace(
            options,
            max_turns=limits.max_turns - earlier.turns,
            max_budget_usd=(
                None
                if limits.max_cost_usd is None
                else limits.max_cost_usd - known_cost(earlier.usage)
            ),
        )
        if resume:
            options = dataclasses.replace(options, resume=earlier.session_id)
            # The notice's own count: no earlier event has it, and journalled, no later one.
            run.tool_calls += 1
            await asyncio.to_thread(job.journal.append, tool_record())
            await run.progress(f"resuming Claude Code session {earlier.session_id}", always=True)
        else:
            options = dataclasses.replace(options, session_id=earlier.session_id)
        endpoint: ModelEndpoint | None = None
        cli_run: ConfinedCli | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                sandbox = sandbox_of(job)
                cli = self.cli_path or bundled_cli()
                if self.cli_path is not None and shutil.which(self.cli_path) is None:
                    # Checked here: in the sandbox the SDK runs a script that exists, and
                    # the missing CLI would only be bubblewrap's exit 127, retried.
                    message = "AETHER_CLAUDE_CODE_CLI names no executable"
                    raise sdk.CLINotFoundError(message, cli_path=self.cli_path)
                if sandbox is not None and cli is not None:
                    # The CLI runs in the sandbox: its file tools see the worktree and
                    # nothing of the host beside the system's read-only directories.
                    if sandbox.settings.network != "host":
                        endpoint = self._endpoint(job, earlier)
                        env = cli_environment(
                            dict(os.environ), self.base_url, endpoint.placeholder, config_dir
                        )
                        options = dataclasses.replace(options, env=env)
                    cli_run = await stack.enter_async_context(
                        confined(sandbox, cli, job, config_dir, endpoint, self.cli_limits)
                    )
                    options = dataclasses.replace(options, cli_path=cli_run.script)
                async with asyncio.timeout(job.limits.max_seconds):
                    outcome = await self._converse(job, run, prompt, options, stderr)
        except RelayRefused as error:
            reason = f"Claude Code cannot reach the model from its sandbox: {error}"
            outcome = self._outcome(run, False, reason=reason, retryable=False)
        except TimeoutError:
            reason = f"wall-time limit reached: {job.limits.max_seconds:g} s allowed"
            outcome = self._outcome(run, False, reason=reason, retryable=False)
        except sdk.CLINotFoundError as error:
            reason = f"Claude Code is not installed: {error}"
            outcome = self._outcome(run, False, reason=reason, retryable=False)
        except sdk.ClaudeSDKError as error:
            detail = " | ".join(stderr)
            reason = f"Claude Code failed: {error}" + (f" ({detail})" if detail else "")
            outcome = self._outcome(run, False, reason=reason[:2000], retryable=True)
        if cli_run is not None and cli_run.stopped is not None and not outcome.finished:
            # Killed for a limit of its sandbox: the same run would only go past it again.
            reason = f"Claude Code was stopped: {cli_run.stopped}"
            outcome = self._outcome(run, False, reason=reason, retryable=False)
        elif endpoint is not None and endpoint.meter.reason is not None and not outcome.finished:
            # A call past a limit was refused by the endpoint (the CLI's own limits came
            # later): the limit ended the attempt, as it ends the built-in loop.
            outcome = self._outcome(run, False, reason=endpoint.meter.reason, retryable=False)
        return outcome, outcome.finished or run.turns > began

    def _endpoint(self, job: Job, earlier: Earlier) -> ModelEndpoint:
        """The metered endpoint the confined CLI calls the model at, with a key of the
        attempt's own. Each reply's usage is recorded from the CLI's stream
        (``_Run.streamed``); the endpoint counts it too, to hold calls to the limits."""
        meter = Meter(
            job.limits,
            job.observer,
            self.prices or load_prices(),
            turns=earlier.turns,
            usage=earlier.usage,
            publish=False,
        )
        models = None if self.models is None else self.models | {job.ready.model}
        return ModelEndpoint(self.base_url, self.api_key, meter, models)

    def _options(
        self,
        job: Job,
        run: _Run,
        memory: str,
        config_dir: Path,
        on_stderr: Any,
    ) -> sdk.ClaudeAgentOptions:
        servers: dict[str, sdk.McpServerConfig] = {}
        role = job.role
        # A role's tools narrow the file tools; its Bash is Aether's run_command.
        files = [t for t in FILE_TOOLS if role is None or role.tools is None or t in role.tools]
        allowed = list(files)
        definition = next(
            (tool for tool in job.toolbox.definitions() if tool["name"] == "run_command"), None
        )
        commands = role is None or role.tools is None or "Bash" in role.tools
        if definition is not None and commands:
            command = sdk.tool(
                "run_command", definition["description"], dict(definition["input_schema"])
            )(run.run_command)
            servers["aether"] = sdk.create_sdk_mcp_server("aether", tools=[command])
            allowed.append(COMMAND_TOOL)
        append = RULES + (f"\n\n{memory}" if memory else "")
        if role is not None:
            append += "\n\n" + role_prompt(role)
        return sdk.ClaudeAgentOptions(
            cwd=str(job.worktree),
            model=job.ready.model,
            tools=files,
            allowed_tools=allowed,
            disallowed_tools=["Bash", "WebFetch", "WebSearch"],
            permission_mode="dontAsk",
            mcp_servers=servers,
            strict_mcp_config=True,
            setting_sources=[],
            system_prompt={"type": "preset", "preset": "claude_code", "append": append},
            max_turns=job.limits.max_turns,
            max_budget_usd=job.limits.max_cost_usd,
            hooks={
                # A check that fails or outlasts its time blocks the call: the CLI's
                # default takes a failed hook for no decision, which would let the tool
                # run unchecked.
                "PreToolUse": [
                    sdk.HookMatcher(
                        hooks=[run.before_tool],
                        timeout=PRE_TOOL_HOOK_SECONDS,
                        on_failure="block",
                    )
                ],
                "PostToolUse": [sdk.HookMatcher(hooks=[run.after_tool])],
                "PostToolUseFailure": [sdk.HookMatcher(hooks=[run.after_failed_tool])],
                "Stop": [sdk.HookMatcher(hooks=[run.stopped])],
            },
            env=cli_environment(dict(os.environ), self.base_url, self.api_key, config_dir),
            cli_path=self.cli_path,
            stderr=on_stderr,
            # For each reply's final usage (see ``_Run.streamed``).
            include_partial_messages=True,
        )

    async def _converse(
        self,
        job: Job,
        run: _Run,
        prompt: str,
        options: sdk.ClaudeAgentOptions,
        stderr: deque[str],
    ) -> Outcome:
        result: sdk.ResultMessage | None = None
        async with sdk.ClaudeSDKClient(options) as client:
            try:
                await client.query(prompt)
                async for message in client.receive_response():
                    if isinstance(message, sdk.AssistantMessage):
                        if run.assistant(message):
                            # Every call of the reply before has its result.
                            await run.windows.closing()
                    elif isinstance(message, sdk.StreamEvent):
                        await run.streamed(message)
                    elif isinstance(message, sdk.ResultMessage):
                        result = message
                        text = f"{message.subtype}: {(message.result or '').strip()}"
                        await run.transcribe(Entry(kind="note", tool="result", text=text))
            except BaseException:
                _kill_cli(client)
                raise
        if result is None:
            detail = " | ".join(stderr)
            return self._outcome(run, False, reason=f"Claude Code ended without a result {detail}")
        # Each reply's usage was recorded as it came; the result (this process's calls)
        # only checks their sum.
        check_total(run.streamed_usage, result, job.ready.model, self.prices or load_prices())
        run.turns = max(run.turns, result.num_turns)
        summary = (result.result or "").strip()
        match result.subtype:
            case "success" if not result.is_error:
                return self._outcome(run, True, summary=summary or "(no summary)")
            case "error_max_turns":
                reason = f"turn limit reached: {job.limits.max_turns} turns allowed"
                return self._outcome(run, False, reason=reason, retryable=False)
            case "error_max_budget_usd":
                reason = f"cost limit reached: ${job.limits.max_cost_usd} allowed"
                return self._outcome(run, False, reason=reason, retryable=False)
        errors = "; ".join(result.errors or []) or summary or result.subtype
        return self._outcome(run, False, reason=f"Claude Code failed: {errors}"[:2000])

    @staticmethod
    def _outcome(
        run: _Run,
        finished: bool,
        *,
        summary: str = "",
        reason: str = "",
        retryable: bool = True,
    ) -> Outcome:
        return Outcome(
            finished,
            summary=summary,
            reason=reason,
            retryable=retryable,
            turns=run.turns,
            tool_calls=run.tool_calls,
            usage=run.usage,
            files_changed=list(run.files_changed),
        )
