"""Running a command for the agent: in a sandbox, in the worktree, without secrets.

A command is one program with arguments, split like a shell would but run without one, so
pipes, redirection and chaining are not available and cannot smuggle in a program that is
not allowed (``$(…)`` and backquotes are passed on as plain text). Its environment is
built from scratch: a few harmless variables (``PATH``, locale, terminal) plus the ones an
operator names, and never anything that looks like a credential, whatever it is called in
the runner's own environment. ``HOME`` and the temporary and cache directories point to a
scratch directory outside the worktree, so nothing a tool caches lands in the commit.

The command runs in the runner's sandbox (``aether_sandbox``: bubblewrap by default), the
worktree its only writable place and its ``.git`` read-only, with limits on memory,
processes, CPU, time, output and disk; everything it starts is killed on timeout, on
cancellation and once the command has exited. Only an operator's explicit
``AETHER_SANDBOX=unconfined`` runs it as the runner's own user, and then the allow-list
and the path checks are all that guard it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aether_agent_runner.adapters.workspace import ToolError, Workspace
from aether_sandbox import CommandRunner, Limits, Request, Sandbox, SandboxUnavailable, execute
from aether_sandbox.disk import DiskWatch
from aether_sandbox.environment import harmless_environment

SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>", "&>"})


def command_env(
    source: Mapping[str, str],
    scratch: Path,
    passed: tuple[str, ...] = (),
    make_dirs: bool = True,
) -> dict[str, str]:
    """The environment of an agent's command: harmless variables from ``source``, the
    operator's ``passed`` names unless they look secret, and scratch directories (made
    here unless ``make_dirs`` is false: a sandbox makes them in its private ``/tmp``)."""
    env = harmless_environment(source, passed)
    home, tmp, cache = scratch / "home", scratch / "tmp", scratch / "cache"
    for directory in (home, tmp, cache) if make_dirs else ():
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
    """``allowed``: program names the agent may run (``None``: any). ``check_paths``:
    refuse arguments naming paths outside the worktree or in ``.git`` (a guard against
    mistakes, needed when commands run unconfined; inside a sandbox the mounts decide)."""

    allowed: tuple[str, ...] | None
    timeout_seconds: float = 120.0
    output_chars: int = 16_000
    check_paths: bool = True

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
    if policy.check_paths:
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
    sandbox: str = ""
    stopped: str | None = None

    def status(self) -> str:
        """How the command ended, in a few words."""
        if self.timed_out:
            return f"timed out after {self.seconds:.1f} s and was stopped"
        if self.stopped and self.exit_code is None:
            return f"stopped after {self.seconds:.1f} s: {self.stopped}"
        status = f"exit code {self.exit_code} after {self.seconds:.1f} s"
        if self.stopped:
            status += f"; {self.stopped}"
        return status

    def report(self, command: str) -> str:
        return f"$ {command}\n[{self.status()}]\n{self.output}"


async def run_command(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    limit_seconds: float,
    output_chars: int,
    *,
    sandbox: Sandbox | CommandRunner,
    workdir: Path,
    limits: Limits | None = None,
    on_output: Callable[[bytes], None] | None = None,
    attempt_disk: DiskWatch | None = None,
) -> CommandResult:
    """Run ``argv`` in ``cwd`` inside ``sandbox``, ``workdir`` the one writable tree (its
    ``.git`` stays read-only); stdout and stderr together, the middle cut when long.
    ``sandbox`` is a backend, or any ``CommandRunner`` (the port: a handler test's fake).
    ``on_output``: handed the output as it comes (then the command runs in a sandbox of
    its own, not the attempt's kept one; a ``CommandRunner`` gives it none).
    ``attempt_disk``: the attempt's watch, which stops the command too."""
    request = Request(
        argv=argv,
        workdir=workdir,
        cwd=cwd,
        env=env,
        limits=(limits or Limits()).with_wall(limit_seconds),
        protect=(workdir / ".git",),
        attempt_disk=attempt_disk,
    )
    try:
        if isinstance(sandbox, CommandRunner):
            outcome = await sandbox.run(request, output_chars)
        else:
            outcome = await execute(sandbox, request, output_chars, on_output)
    except SandboxUnavailable as error:
        raise ToolError(f"run_command is refused: no sandbox can start. {error}") from None
    except FileNotFoundError:
        raise ToolError(f"{argv[0]}: command not found") from None
    except PermissionError:
        raise ToolError(f"{argv[0]}: permission denied") from None
    if outcome.exit_code == 1 and outcome.output.startswith("bwrap: execvp "):
        # bubblewrap's own words when the program does not exist inside the sandbox.
        raise ToolError(f"{argv[0]}: command not found in the sandbox")
    return CommandResult(
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        output=outcome.output,
        seconds=outcome.seconds,
        sandbox=outcome.sandbox,
        stopped=outcome.stopped,
    )
