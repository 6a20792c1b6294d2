"""The Claude Code CLI inside the command sandbox.

The SDK starts the CLI itself, with its standard streams as the protocol between them.
It is given a script instead: the script starts bubblewrap with the sandbox's namespaces
and mounts (``aether_sandbox.Bubblewrap.launch``: the worktree the only writable tree, its
``.git`` read-only, the system directories read-only, no network of its own, a fresh
``/proc``, the system-call filter), the metered model endpoint when the sandbox has no
network (``runtimes.relay``, ``runtimes.model_endpoint``: the CLI holds the attempt's own
key, never the real one), and the CLI, whose standard streams, arguments and variables
pass through unchanged. The CLI's configuration directory (its sessions, which a resumed
run loads) is the sandbox's home,
bound from beside the attempt's journal. The mounts, not only the runner's path check,
then hold the CLI's own file tools to the worktree: a path that leads out finds nothing
there. The CLI and everything it starts run under limits of their own, ones a JS runtime
tolerates (``aether_sandbox.program``: a cgroup's memory, process and CPU caps where the
runner may make one, else per-process rlimits, never ``RLIMIT_AS``), watched while it
runs; past one, all of it is killed and ``ConfinedCli.stopped`` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import claude_agent_sdk as sdk

from aether_agent_runner.adapters.workspace import ToolError
from aether_agent_runner.runtimes import Job
from aether_agent_runner.runtimes.cli_limits import CliLimits
from aether_agent_runner.runtimes.model_endpoint import ModelEndpoint
from aether_agent_runner.runtimes.relay import relayed
from aether_sandbox import Bubblewrap, Request, WarmSandbox, seccomp
from aether_sandbox.bubblewrap import HOME
from aether_sandbox.program import ProgramLimits
from aether_sandbox.trees import remove_tree

log = logging.getLogger("aether.agent-runner.claude-code")

# The variables the sandbox decides (where the CLI's home, temporary files and
# configuration are inside it); every other one is the SDK's, as it would be outside.
_PLACED = ("HOME", "TMPDIR", "XDG_CACHE_HOME")


def bundled_cli() -> str | None:
    """The CLI the SDK runs when given none: the one in its wheel, else ``claude`` on
    ``PATH``."""
    bundled = Path(sdk.__file__).parent / "_bundled" / "claude"
    return str(bundled) if bundled.is_file() else shutil.which("claude")


def sandbox_of(job: Job) -> Bubblewrap | None:
    """The bubblewrap backend the attempt's commands run in; ``None`` when they run
    unconfined (an operator's choice), in a test's fake, or not at all."""
    try:
        sandbox = job.toolbox.sandbox()
    except ToolError:
        return None
    cold = sandbox.cold if isinstance(sandbox, WarmSandbox) else sandbox
    return cold if isinstance(cold, Bubblewrap) else None


@dataclass(frozen=True)
class ConfinedCli:
    """``script``: what to give the SDK as the CLI's path; ``limits``: the run's limits,
    whose ``stopped`` names the one the CLI went past (once the run has ended)."""

    script: str
    limits: ProgramLimits

    @property
    def stopped(self) -> str | None:
        return self.limits.stopped


@contextlib.asynccontextmanager
async def confined(
    sandbox: Bubblewrap,
    cli: str,
    job: Job,
    config_dir: Path,
    endpoint: ModelEndpoint | None,
    cli_limits: CliLimits | None = None,
) -> AsyncIterator[ConfinedCli]:
    """A script that runs ``cli`` in ``sandbox`` under ``cli_limits``, to give the SDK
    as the CLI's path; valid (``endpoint``, when given, served to it, the limits watched)
    while in use. Raises ``RelayRefused`` for a model endpoint the runner cannot call."""
    # The CLI's directory, and where it really lives when a link names it.
    where = (Path(cli).parent, (await asyncio.to_thread(Path(cli).resolve)).parent)
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aether-claude-"))
    # Where bubblewrap names the sandbox's first process: the end of that process is the
    # end of every process in the sandbox, which the runner waits for.
    info = scratch / "sandbox.json"
    limits = (cli_limits or CliLimits()).of(sandbox.settings.limits)
    program = await asyncio.to_thread(
        ProgramLimits.create, limits, sandbox.settings.cgroup, config_dir
    )
    how = program.describe()
    if program.cgroup is None:
        log.warning(
            "no cgroup can be made here: the Claude Code CLI's limits are per-process "
            "rlimits, its memory RLIMIT_DATA and its processes %s",
            how["processes"],
            extra={f"limit_{name}": value for name, value in how.items()},
        )
    watch: asyncio.Task[None] | None = None
    try:
        argv = [cli]
        async with contextlib.AsyncExitStack() as stack:
            if endpoint is not None:
                argv = await stack.enter_async_context(relayed(endpoint, argv, scratch))
            request = Request(
                argv=argv,
                workdir=job.worktree,
                cwd=job.worktree,
                env={"PATH": os.environ.get("PATH", os.defpath)},
                read_only=(scratch, *where),
                protect=(job.worktree / ".git",),
                home=config_dir,
            )
            launch = sandbox.launch(request)
            placed = {name: launch.env[name] for name in _PLACED if name in launch.env}
            placed["CLAUDE_CONFIG_DIR"] = str(HOME)
            env = shutil.which("env") or "/usr/bin/env"
            assignments = [f"{name}={value}" for name, value in placed.items()]
            script = scratch / "claude"
            bwrap, *options = launch.argv
            opened = f"exec 3>{shlex.quote(str(info))}\n"
            if launch.seccomp is not None:
                # bubblewrap reads its system-call filter to the end: the script opens
                # the file afresh at each start, on descriptor 4.
                filter_file = scratch / "seccomp.bpf"
                await asyncio.to_thread(filter_file.write_bytes, launch.seccomp)
                opened += f"exec 4<{shlex.quote(str(filter_file))}\n"
                options = seccomp.with_fd(options, 4)
            line = shlex.join(
                [*program.prefix(), env, *assignments, bwrap, "--info-fd", "3", *options]
            )
            text = f'#!/bin/sh\n{opened}exec {line} "$@"\n'
            await asyncio.to_thread(script.write_text, text)
            await asyncio.to_thread(script.chmod, 0o700)
            watch = asyncio.create_task(program.watch(_stopped_log))
            yield ConfinedCli(str(script), program)
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await _sandbox_ended(info)
        await program.end()
        await asyncio.to_thread(remove_tree, scratch)


def _stopped_log(reason: str) -> None:
    log.warning("the Claude Code CLI went past a limit and was killed: %s", reason)


async def _sandbox_ended(info: Path, within: float = 10.0) -> None:
    """Wait until the sandbox ``info`` names has no process left (its first process has
    exited: the kernel ends the rest of its PID namespace before that process's exit is
    done). A CLI killed by a stop order is then gone when the stop is reported."""
    try:
        pid = int(json.loads(await asyncio.to_thread(info.read_text))["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # never started
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        try:
            stat = await asyncio.to_thread(Path(f"/proc/{pid}/stat").read_text)
        except OSError:
            return
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            return  # exited, not yet reaped
        await asyncio.sleep(0.01)
    log.warning("the Claude Code sandbox outlived its CLI", extra={"pid": pid})
