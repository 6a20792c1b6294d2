"""The tools the model is offered, and carrying out its calls to them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether_agent_runner import metrics
from aether_agent_runner.adapters.commands import (
    CommandPolicy,
    CommandResult,
    command_env,
    parse_command,
    run_command,
)
from aether_agent_runner.adapters.workspace import ToolError, Workspace
from aether_runtime.metrics import at_zero
from aether_sandbox import (
    Bubblewrap,
    CommandRunner,
    Limits,
    Sandbox,
    SandboxSettings,
    SandboxUnavailable,
    WarmSandbox,
    open_sandbox,
)
from aether_sandbox.disk import DiskWatch
from aether_sandbox.trees import remove_tree

if TYPE_CHECKING:
    from anthropic.types import ToolParam

log = logging.getLogger("aether.agent.tools")

FINISH = "finish"
# Where a sandboxed command's HOME, TMPDIR and caches go: its private /tmp.
SANDBOX_SCRATCH = Path("/tmp/aether")  # noqa: S108 - inside the sandbox's own tmpfs


def _tool(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> ToolParam:
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": properties, "required": required},
    }


_PATH = {"type": "string", "description": "Relative to the repository root."}

FILE_TOOLS: list[ToolParam] = [
    _tool(
        "list_dir",
        "List a directory of the repository. Directories end in '/'.",
        {
            "path": {"type": "string", "description": "Relative path; '.' is the root."},
            "depth": {"type": "integer", "description": "Levels to show, 1-5 (default 1)."},
        },
        ["path"],
    ),
    _tool(
        "read_file",
        "Read a text file. A whole file that fits is returned exactly as stored; with "
        "start_line/end_line (1-based, inclusive) only those lines, followed by a "
        "bracketed line saying which lines were shown.",
        {
            "path": _PATH,
            "start_line": {"type": "integer"},
            "end_line": {"type": "integer"},
        },
        ["path"],
    ),
    _tool(
        "search",
        "Search the repository's text files with a Python regular expression; answers "
        "'path:line: text' per matching line (bounded). .git, dependency and cache "
        "directories are skipped.",
        {
            "pattern": {"type": "string"},
            "path": {"type": "string", "description": "File or directory to search (default '.')."},
            "glob": {"type": "string", "description": "Only files matching, e.g. '*.py'."},
            "ignore_case": {"type": "boolean"},
        },
        ["pattern"],
    ),
    _tool(
        "write_file",
        "Create a file, or replace a whole file, with the given content.",
        {"path": _PATH, "content": {"type": "string"}},
        ["path", "content"],
    ),
    _tool(
        "edit_file",
        "Replace old_text with new_text in a file. old_text must match the file exactly "
        "(whitespace included) and occur exactly once, unless replace_all is true; include "
        "enough surrounding lines to make it unique.",
        {
            "path": _PATH,
            "old_text": {"type": "string"},
            "new_text": {"type": "string"},
            "replace_all": {"type": "boolean"},
        },
        ["path", "old_text", "new_text"],
    ),
    _tool(
        "delete_file",
        "Delete a file (or an empty directory).",
        {"path": _PATH},
        ["path"],
    ),
]

FINISH_TOOL: ToolParam = _tool(
    FINISH,
    "Finish the task with a short summary of what was changed and why. Call it once the "
    "work is complete; the changes are then committed and merged for you.",
    {"summary": {"type": "string"}},
    ["summary"],
)


def command_tool(policy: CommandPolicy, egress: tuple[str, ...] = ()) -> ToolParam:
    network = (
        "the network only through HTTP(S)_PROXY, to " + ", ".join(egress)
        if egress
        else "no network"
    )
    where = (
        "paths must stay inside the repository"
        if policy.check_paths
        else f"it runs in a sandbox where only the repository is writable, with {network}"
    )
    return _tool(
        "run_command",
        "Run one program in the repository root (or cwd) and get its exit code and output "
        "(stdout and stderr together; long output is cut in the middle). No shell: pipes, "
        f"redirection and '&&' are not available unless you run a shell yourself; {where}. "
        f"Allowed programs: {policy.describe()}. Timeout: at most "
        f"{policy.timeout_seconds:g} s.",
        {
            "command": {"type": "string", "description": "e.g. 'python -m pytest -q tests'"},
            "cwd": {"type": "string", "description": "Relative directory (default '.')."},
            "timeout_seconds": {"type": "number"},
        },
        ["command"],
    )


# The tools a call's metrics name (the finish call is not a tool call here); any other name
# a model sends counts as ``unknown``: a label takes no value a model chose.
TOOL_NAMES = frozenset([*(tool["name"] for tool in FILE_TOOLS), "run_command"])
# The calls after which the attempt's disk cap is checked.
WRITING_TOOLS = frozenset({"write_file", "edit_file", "run_command"})
UNKNOWN_TOOL = "unknown"

# Every tool's calls are counted from zero.
at_zero(metrics.TOOL_CALLS, tool=sorted(TOOL_NAMES), outcome=metrics.TOOL_OUTCOMES)
at_zero(metrics.TOOL_SECONDS, tool=sorted(TOOL_NAMES))


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False
    action: str = ""
    # A command that ran (``run_command``): its exit code (None: it did not exit by
    # itself) and how it ended, for the transcript.
    ran: CommandResult | None = None


class ToolBox:
    """The tools of one agent over one worktree.

    ``sandbox`` runs its commands: a ``Sandbox`` (or any ``CommandRunner``: a handler
    test's ``ScriptedSandbox``), or the ``SandboxUnavailable`` that says why none can
    start (every ``run_command`` is then refused with that reason); left out, the one the
    environment configures is opened at the first command. ``allowed``: the only tools
    the agent may call (its role's ``tools``; ``finish`` always), or ``None`` for all.
    """

    def __init__(
        self,
        workspace: Workspace,
        commands: CommandPolicy | None,
        search_timeout_seconds: float = 20.0,
        passed_env: tuple[str, ...] = (),
        sandbox: Sandbox | CommandRunner | SandboxUnavailable | None = None,
        limits: Limits | None = None,
        allowed: frozenset[str] | None = None,
        disk_since_ns: int | None = None,
    ) -> None:
        self.workspace = workspace
        # When the attempt first started (``journal.first_start``): its disk cap counts
        # from there, so a resumed attempt's earlier writes are not counted as none.
        self._disk_since_ns = disk_since_ns
        self._commands = commands if commands and commands.allowed != () else None
        self._allowed = None if allowed is None else allowed | {FINISH}
        if self._allowed is not None and "run_command" not in self._allowed:
            self._commands = None
        self._search_timeout = search_timeout_seconds
        self._passed_env = passed_env
        self._scratch: Path | None = None
        self._sandbox = sandbox
        self._warm: WarmSandbox | None = None  # the one this toolbox started, and ends
        self._limits = limits
        # Calls begun so far: a look at the worktree taken at one count is still what the
        # agent left while the count stays the same.
        self.calls = 0
        # Commands begun so far: while none has, only the file tools wrote to the
        # worktree, at the paths its ``touched`` holds.
        self.commands = 0
        # All the attempt writes into its worktree, from now on, against the attempt's
        # disk caps: checked after each command and each file tool that writes, and
        # while a command runs. ``over_disk``: why the attempt went over, once it has.
        self._attempt_disk: DiskWatch | None = None
        self.over_disk: str | None = None

    def sandbox(self) -> Sandbox | CommandRunner:
        """The sandbox commands run in, or ``ToolError`` naming what is missing."""
        if self._sandbox is None:
            settings = SandboxSettings.from_env()
            try:
                self._sandbox = open_sandbox(settings)
            except SandboxUnavailable as error:
                self._sandbox = error
            if self._limits is None:
                self._limits = settings.limits
        if isinstance(self._sandbox, SandboxUnavailable):
            raise ToolError(f"run_command is refused: no sandbox can start. {self._sandbox}")
        if isinstance(self._sandbox, Bubblewrap) and self._sandbox.settings.warm:
            # One kept sandbox for this attempt's commands, each in a fresh process tree.
            self._sandbox = self._warm = WarmSandbox(self._sandbox)
        return self._sandbox

    def may_call(self, name: str) -> bool:
        """Whether the task's role (if it names tools) lets the agent call ``name``."""
        return self._allowed is None or name in self._allowed

    @property
    def runs_commands(self) -> bool:
        """Whether this task's agent may run any command at all."""
        return self._commands is not None

    def command_argv(self, command: str) -> list[str]:
        """The argument vector ``command`` runs as, or ``ToolError`` saying why it may
        not run (no command may, or the policy refuses this one)."""
        if self._commands is None:
            raise ToolError("this task's agent may not run commands")
        return parse_command(command, self._commands, self.workspace)

    def command_limits(self) -> Limits:
        """The limits of one sandboxed command (the runner's, once ``sandbox`` is open)."""
        return self._limits or Limits()

    def attempt_disk(self) -> DiskWatch:
        """The attempt's disk watch (started with the toolbox's first call)."""
        if self._attempt_disk is None:
            self._attempt_disk = DiskWatch.of_attempt(
                self.workspace.root,
                self.command_limits(),
                self._disk_since_ns,
                known=self.workspace.written,
            )
        return self._attempt_disk

    def disk_may_be_over(self) -> bool:
        """Whether the attempt may be over its disk cap (already found over, or the file
        system's counts say it may be): asked inline, it costs a ``statvfs``."""
        return self.over_disk is not None or self.attempt_disk().may_be_over()

    async def watch_disk(self, interval: float = 0.25) -> str:
        """Until the attempt goes over its disk cap (then why): for an agent that writes
        into the worktree on its own while it runs (a CLI's file tools, an ACP agent).
        Every ``interval`` the file system's counts, inline; a walk, in a worker thread,
        when they say it may be over (at most every half second, or ten times a walk's
        length), and now and then whatever they say (``DiskWatch.due``), which space
        freed elsewhere could hide writes from."""
        watch = self.attempt_disk()
        while True:
            await asyncio.sleep(interval)
            since = time.monotonic() - watch.walked_at
            due = watch.due()
            if due or (since >= max(0.5, 10 * watch.walk_seconds) and self.disk_may_be_over()):
                reason = await asyncio.to_thread(self.check_disk, due)
                if reason is not None:
                    return reason

    def check_disk(self, exact: bool = True) -> str | None:
        """Why the attempt has written more into its worktree than it may, or ``None``;
        once over, it stays over (``over_disk``). ``exact``: walk the worktree whatever
        the file system's counts say (they miss what space freed elsewhere hides)."""
        if self.over_disk is None:
            reason = self.attempt_disk().over(now=True, exact=exact)
            if reason is not None:
                self.over_disk = (
                    f"the attempt went over its disk cap: {reason} "
                    "(AETHER_SANDBOX_ATTEMPT_DISK_MB, AETHER_SANDBOX_ATTEMPT_FILES)"
                )
                log.warning("attempt over its disk cap", extra={"reason": self.over_disk})
        return self.over_disk

    def definitions(self) -> list[ToolParam]:
        tools = [tool for tool in FILE_TOOLS if self.may_call(tool["name"])]
        if self._commands is not None:
            opened = self._sandbox
            egress = opened.settings.egress if isinstance(opened, Bubblewrap | WarmSandbox) else ()
            tools.append(command_tool(self._commands, egress))
        tools.append(FINISH_TOOL)
        return tools

    def close(self) -> None:
        """End the attempt's kept sandbox; remove the commands' scratch directory."""
        if self._warm is not None:
            self._warm.close()
        if self._scratch is not None:
            remove_tree(self._scratch)
            self._scratch = None

    async def call(
        self,
        name: str,
        args: dict[str, Any],
        env: Mapping[str, str] | None = None,
        on_output: Callable[[bytes], None] | None = None,
    ) -> ToolResult:
        """Carry out one call; refusals and failures become error results for the model.
        For a ``run_command`` (an ACP agent's terminal gives both): ``env``, variables
        set for its program on top of the commands' environment; ``on_output``, handed
        its output as it comes."""
        self.calls += 1
        self.attempt_disk()  # counts from the attempt's first call
        action = describe_call(name, args)
        ran: CommandResult | None = None
        tool = name if name in TOOL_NAMES else UNKNOWN_TOOL
        began = time.perf_counter()
        try:
            if not self.may_call(name):
                raise ToolError(
                    f"{name} is not one of this task's tools (its role allows "
                    f"{', '.join(sorted(self._allowed or ()))})"
                )
            if name == "run_command" and self._commands is not None:
                self.commands += 1
                ran = await self._run(args, self._commands, env or {}, on_output)
                content = ran.report(_text(args, "command"))
            else:
                content = await self._dispatch(name, args)
        except ToolError as error:
            metrics.TOOL_CALLS.labels(tool, "refused").inc()
            log.info("tool call refused", extra={"tool": name, "error": str(error)})
            return ToolResult(str(error), True, action)
        except (OSError, ValueError, TypeError) as error:
            metrics.TOOL_CALLS.labels(tool, "failed").inc()
            return ToolResult(f"{name} failed: {error}", True, action)
        finally:
            metrics.TOOL_SECONDS.labels(tool).observe(time.perf_counter() - began)
            # After a command, a walk (what it wrote is not known otherwise); after a file
            # tool, whose writes are bounded on their own, the file system's counts and
            # what the file tools wrote first, inline: no thread hop on a task's path
            # unless they say it may be over.
            if name == "run_command":
                await asyncio.to_thread(self.check_disk)
            elif name in WRITING_TOOLS and self.disk_may_be_over():
                await asyncio.to_thread(self.check_disk, False)
        if self.over_disk is not None:
            metrics.TOOL_CALLS.labels(tool, "failed").inc()
            return ToolResult(f"{content}\n[{self.over_disk}; the attempt ends]", True, action, ran)
        metrics.TOOL_CALLS.labels(tool, "ok").inc()
        return ToolResult(content, False, action, ran)

    async def _dispatch(self, name: str, args: dict[str, Any]) -> str:
        ws = self.workspace
        match name:
            case "list_dir":
                return await asyncio.to_thread(
                    ws.list_dir, str(args.get("path") or "."), int(args.get("depth") or 1)
                )
            case "read_file":
                return await asyncio.to_thread(
                    ws.read_file,
                    _text(args, "path"),
                    _optional_int(args, "start_line"),
                    _optional_int(args, "end_line"),
                )
            case "write_file":
                return await asyncio.to_thread(
                    ws.write_file, _text(args, "path"), args.get("content", "")
                )
            case "edit_file":
                return await asyncio.to_thread(
                    ws.edit_file,
                    _text(args, "path"),
                    args.get("old_text", ""),
                    args.get("new_text", ""),
                    bool(args.get("replace_all", False)),
                )
            case "delete_file":
                return await asyncio.to_thread(ws.delete_file, _text(args, "path"))
            case "search":
                return await self._search(args)
        raise ToolError(f"there is no tool {name!r}")

    async def _search(self, args: dict[str, Any]) -> str:
        request = {
            "root": str(self.workspace.root),
            "pattern": args.get("pattern", ""),
            "path": args.get("path") or ".",
            "glob": args.get("glob"),
            "ignore_case": bool(args.get("ignore_case", False)),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aether_agent_runner.adapters.search",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": _import_path()},
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(json.dumps(request).encode()), self._search_timeout
            )
        except TimeoutError:
            raise ToolError(
                f"the search took longer than {self._search_timeout:g} s and was stopped; "
                "use a simpler pattern or a narrower path"
            ) from None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        if process.returncode == 2:
            raise ToolError(out.decode(errors="replace"))
        if process.returncode != 0:
            raise ToolError(f"the search failed: {err.decode(errors='replace')[-2000:]}")
        return out.decode(errors="replace")

    async def _run(
        self,
        args: dict[str, Any],
        policy: CommandPolicy,
        extra_env: Mapping[str, str],
        on_output: Callable[[bytes], None] | None = None,
    ) -> CommandResult:
        sandbox = self.sandbox()
        command = _text(args, "command")
        argv = parse_command(command, policy, self.workspace)
        cwd = await asyncio.to_thread(self.workspace.resolve, str(args.get("cwd") or "."))
        if not cwd.is_dir():
            raise ToolError(f"cwd {args.get('cwd')!r} is not a directory")
        requested = args.get("timeout_seconds")
        timeout = policy.timeout_seconds
        if isinstance(requested, int | float) and requested > 0:
            timeout = min(float(requested), policy.timeout_seconds)
        if sandbox.confined:
            # The scratch directories live in the sandbox's own private /tmp.
            env = command_env(os.environ, SANDBOX_SCRATCH, self._passed_env, make_dirs=False)
        else:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="aether-agent-"))
            env = command_env(os.environ, self._scratch, self._passed_env)
        env.update(extra_env)
        result = await run_command(
            argv,
            cwd,
            env,
            timeout,
            policy.output_chars,
            sandbox=sandbox,
            workdir=self.workspace.root,
            limits=self._limits,
            on_output=on_output,
            attempt_disk=self.attempt_disk(),
        )
        log.info(
            "command ran",
            extra={
                "sandbox": result.sandbox,
                "command": command[:500],
                "exit_code": result.exit_code,
                "timed_out": result.timed_out,
                "stopped": result.stopped,
                "seconds": round(result.seconds, 3),
            },
        )
        return result


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key, "")
    return value if isinstance(value, str) else str(value)


def _optional_int(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ToolError(f"{key} must be a whole number")
    try:
        return int(value)
    except ValueError:
        raise ToolError(f"{key} must be a whole number") from None


def describe_call(name: str, args: dict[str, Any]) -> str:
    """A short account of a call for progress events."""
    detail = args.get("path") or args.get("command") or args.get("pattern") or ""
    text = f"{name} {detail}".strip()
    return text if len(text) <= 120 else text[:117] + "…"


def _import_path() -> str:
    """Where this package is importable from, for the search child process."""
    return str(Path(__file__).resolve().parent.parent)
