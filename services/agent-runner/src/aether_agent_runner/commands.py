"""Running a command for the agent: allow-listed, in the worktree, without secrets.

A command is one program with arguments, split like a shell would but run without one, so
pipes, redirection and chaining are not available and cannot smuggle in a program that is
not allowed (``$(…)`` and backquotes are passed on as plain text). Its environment is
built from scratch: a few harmless variables (``PATH``, locale, terminal) plus the ones an
operator names, and never anything that looks like a credential, whatever it is called in
the runner's own environment. ``HOME`` and the temporary and cache directories point to a
scratch directory outside the worktree, so nothing a tool caches lands in the commit. The
command and everything it starts run in their own process group, which is killed on
timeout, on cancellation and once the command has exited.

This is a guard against mistakes, not a sandbox: an allowed interpreter can still read
what the runner's user can read. Run the runner in a container to isolate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aether_agent_runner.workspace import ToolError, Workspace

SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>", "&>"})

# Names passed through from the runner's environment when present.
SAFE_VARIABLES = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "VIRTUAL_ENV", "SYSTEMROOT"}
)
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|AUTH|COOKIE|SESSION"
    r"|_URL$|_URI$|_DSN$|^DATABASE|^NATS|^ANTHROPIC|^AWS_|^AZURE_|^GCP_|^GOOGLE_|^AETHER_"
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it may hold a credential or an address
    of one of the service's own backends (never passed to a command)."""
    return bool(_SECRET_NAME.search(name.upper()))


def command_env(
    source: Mapping[str, str], scratch: Path, passed: tuple[str, ...] = ()
) -> dict[str, str]:
    """The environment of an agent's command: harmless variables from ``source``, the
    operator's ``passed`` names unless they look secret, and scratch directories."""
    env = {
        name: value
        for name, value in source.items()
        if (name in SAFE_VARIABLES or name.startswith("LC_") or name in passed)
        and not is_secret_name(name)
    }
    home, tmp, cache = scratch / "home", scratch / "tmp", scratch / "cache"
    for directory in (home, tmp, cache):
        directory.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "XDG_CACHE_HOME": str(cache),
            "RUFF_CACHE_DIR": str(cache / "ruff"),
            "MYPY_CACHE_DIR": str(cache / "mypy"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTEST_ADDOPTS": "-p no:cacheprovider",
            "NO_COLOR": "1",
            "CI": "1",
            "PAGER": "cat",
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    env.setdefault("PATH", os.defpath)
    return env


@dataclass(frozen=True)
class CommandPolicy:
    """``allowed``: program names the agent may run (``None``: any)."""

    allowed: tuple[str, ...] | None
    timeout_seconds: float = 120.0
    output_chars: int = 16_000

    def describe(self) -> str:
        if self.allowed is None:
            return "any program"
        return ", ".join(self.allowed) if self.allowed else "none"


def parse_command(command: str, policy: CommandPolicy, workspace: Workspace) -> list[str]:
    """The argument vector of ``command``, or ``ToolError`` saying why it may not run."""
    if not isinstance(command, str) or not command.strip():
        raise ToolError("a command is required")
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise ToolError(f"cannot split the command: {error}") from None
    # Output already comes back with stderr merged into stdout; a habitual 2>&1 is dropped.
    argv = [arg for arg in argv if arg != "2>&1"]
    if not argv:
        raise ToolError("a command is required")
    operators = [arg for arg in argv if arg in SHELL_OPERATORS]
    if operators:
        raise ToolError(
            "commands run without a shell: pipes, redirection and chaining "
            f"({' '.join(operators)}) are not available; run one program at a time"
        )
    program = argv[0]
    if policy.allowed is not None and ("/" in program or program not in policy.allowed):
        raise ToolError(f"{program!r} is not an allowed program; allowed: {policy.describe()}")
    for arg in argv[1:]:
        _check_argument(arg, workspace)
    return argv


def _check_argument(arg: str, workspace: Workspace) -> None:
    """Refuse arguments that name a path outside the worktree or inside ``.git``."""
    values = [arg]
    if arg.startswith("-") and "=" in arg:
        values.append(arg.split("=", 1)[1])
    for value in values:
        if value.startswith(("/", "~")):
            raise ToolError(
                f"argument {arg!r} is an absolute path; use paths relative to the repository"
            )
        parts = Path(value).parts
        if any(part.lower() == ".git" for part in parts):
            raise ToolError(f"argument {arg!r} reaches into .git, which is off limits")
        if ".." in parts:
            real = (workspace.root / value).resolve()
            if real != workspace.root and workspace.root not in real.parents:
                raise ToolError(f"argument {arg!r} leads outside the repository")


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    timed_out: bool
    output: str
    seconds: float

    def report(self, command: str) -> str:
        if self.timed_out:
            status = f"timed out after {self.seconds:.1f} s and was stopped"
        else:
            status = f"exit code {self.exit_code} after {self.seconds:.1f} s"
        return f"$ {command}\n[{status}]\n{self.output}"


async def run_command(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    limit_seconds: float,
    output_chars: int,
) -> CommandResult:
    """Run ``argv`` in ``cwd``; stdout and stderr together, the middle cut when long."""
    began = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolError(f"{argv[0]}: command not found") from None
    except PermissionError:
        raise ToolError(f"{argv[0]}: permission denied") from None
    collector = _OutputCollector(output_chars)
    assert process.stdout is not None
    reader = asyncio.create_task(collector.read(process.stdout))
    timed_out = False
    try:
        timed_out = not await _exited(process, began + limit_seconds)
        # Whatever the command left running (a server, a child holding the pipe) goes now.
        _kill_group(process.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 2.0)
    finally:
        _kill_group(process.pid)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
    return CommandResult(
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        output=collector.text(),
        seconds=time.monotonic() - began,
    )


async def _exited(process: asyncio.subprocess.Process, deadline: float) -> bool:
    """Whether the process exited before ``deadline`` (monotonic).

    ``Process.wait()`` also waits for its pipes to close, which a child the command left
    running would hold open; the return code is set as soon as the process itself exits.
    """
    while process.returncode is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _OutputCollector:
    """Keeps the first quarter and the last three quarters of ``limit`` characters: a
    command's beginning says what ran, its end says how it failed."""

    def __init__(self, limit: int) -> None:
        self._head_limit = max(limit // 4, 1)
        self._tail_limit = max(limit - self._head_limit, 1)
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._total = 0

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._total += len(chunk)
            room = self._head_limit - len(self._head)
            if room > 0:
                self._head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self._tail.append(chunk)
                self._tail_size += len(chunk)
                while self._tail and self._tail_size - len(self._tail[0]) >= self._tail_limit:
                    self._tail_size -= len(self._tail.popleft())

    def text(self) -> str:
        tail = b"".join(self._tail)
        if len(tail) > self._tail_limit:
            tail = tail[-self._tail_limit :]
        omitted = self._total - len(self._head) - len(tail)
        head = self._head.decode("utf-8", errors="replace")
        end = tail.decode("utf-8", errors="replace")
        if omitted > 0:
            return f"{head}\n[… {omitted:,} bytes of output omitted …]\n{end}"
        return head + end or "(no output)"
