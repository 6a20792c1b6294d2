"""The system-call filter, in every place a sandbox is started.

A probe (Python, run by the sandbox's own interpreter) makes the calls the filter denies
and prints what each returned: ``io_uring_setup``, ``userfaultfd`` (user-mode only, which
no sysctl forbids), ``keyctl``, ``unshare(CLONE_NEWUSER)``, ``ptrace(PTRACE_TRACEME)``,
``perf_event_open`` (a software counter of its own, which perf_event_paranoid 2 allows)
and ``TIOCSTI`` on its own controlling terminal. Without the filter each of them works (or
fails otherwise) in the sandbox; with it each fails with EPERM. The probe runs through
the agent's real ``run_command`` (kept sandbox and one of its own), the git broker's
verification command and the Claude Code CLI's script; ordinary work (git, Python,
pytest, a C compiler, Node, threads, fork and exec) still runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_git_broker.adapters.verify import run_command as verify_command
from aether_sandbox import (
    MIB,
    Bubblewrap,
    Limits,
    Sandbox,
    SandboxSettings,
    SandboxUnavailable,
    bubblewrap,
    landlock,
    open_sandbox,
    seccomp,
)

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"
)

STATUS = re.compile(r"^\[(exit code|timed out|stopped) ", re.MULTILINE)
LIMITS = Limits(
    memory_bytes=512 * MIB,
    processes=128,
    cpu_seconds=60,
    output_bytes=4 * MIB,
    disk_bytes=64 * MIB,
    files=5_000,
    tmp_bytes=128 * MIB,
)
DENIED = (
    "io_uring_setup",
    "userfaultfd",
    "keyctl",
    "unshare_user",
    "ptrace",
    "perf_event_open",
    "tiocsti",
)
ALL_EPERM = dict.fromkeys(DENIED, "EPERM")
# Where the Landlock layer holds a command to its own processes, the filter lets it trace
# them (strace, gdb): the probe's PTRACE_TRACEME, towards its own parent, then works.
TRACING = not landlock.missing(landlock.kernel_abi())
EXPECTED = {**ALL_EPERM, "ptrace": "ok"} if TRACING else ALL_EPERM

PROBE = """\
import ctypes, errno, fcntl, json, os, platform, struct, termios
libc = ctypes.CDLL(None, use_errno=True)
N = {
    "x86_64": {"io_uring_setup": 425, "userfaultfd": 323, "keyctl": 250, "unshare": 272,
               "perf_event_open": 298},
    "aarch64": {"io_uring_setup": 425, "userfaultfd": 282, "keyctl": 219, "unshare": 97,
                "perf_event_open": 241},
}[platform.machine()]

def outcome(result):
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

def call(name, *args):
    return outcome(libc.syscall(N[name], *args))

def in_child(probe):
    # What probe() said, run in a child of its own (it changes the process).
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            said = probe()
        except OSError as error:
            said = errno.errorcode.get(error.errno, "?")
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    said = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    return said

def tiocsti():
    # The classic escape: push input into one's own controlling terminal.
    os.setsid()
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    fcntl.ioctl(slave, termios.TIOCSTI, b"x")
    return "ok"

attr = bytearray(128)  # perf_event_attr: a task-clock counter, user space only
struct.pack_into("=IIQ", attr, 0, 1, 128, 1)
struct.pack_into("=Q", attr, 40, 1 | 1 << 5 | 1 << 6)
perf = ctypes.create_string_buffer(bytes(attr), 128)
params = ctypes.create_string_buffer(120)
print("SECCOMP " + json.dumps({
    "io_uring_setup": call("io_uring_setup", 1, params),
    "userfaultfd": call("userfaultfd", 1),
    "keyctl": call("keyctl", 0, ctypes.c_int(-3), 1),
    "unshare_user": in_child(lambda: call("unshare", ctypes.c_ulong(0x10000000))),
    "ptrace": in_child(lambda: outcome(libc.ptrace(0, 0, None, None))),
    "perf_event_open": call("perf_event_open", perf, 0, -1, -1, 0),
    "tiocsti": in_child(tiocsti),
}, sort_keys=True))
"""

# Ordinary work: threads (clone without namespace flags), fork, exec, subprocesses.
WORK = """\
import os, subprocess, sys, threading
seen = []
threads = [threading.Thread(target=seen.append, args=(n,)) for n in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
pid = os.fork()
if pid == 0:
    os.execvp("true", ["true"])
_, status = os.waitpid(pid, 0)
spawned = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
print("WORK", len(seen), os.waitstatus_to_exitcode(status), spawned.stdout.strip())
"""


def said(output: str) -> dict[str, str]:
    """The probe's findings in what a command printed."""
    for line in output.splitlines():
        if line.startswith("SECCOMP "):
            found: dict[str, str] = json.loads(line.removeprefix("SECCOMP "))
            return found
    raise AssertionError(f"the probe printed nothing: {output}")


@dataclass
class Box:
    """A repository's linked worktree, and the agent's tools over it."""

    worktree: Path
    tools: ToolBox

    async def run(self, command: str, tools: ToolBox | None = None) -> str:
        result = await (tools or self.tools).call(
            "run_command", {"command": command, "timeout_seconds": 120}
        )
        status = STATUS.search(result.content)
        assert status, result.content
        return result.content[status.start() :]

    def toolbox(self, settings: SandboxSettings) -> ToolBox:
        """Tools over the worktree whose commands run in ``settings``' sandbox (or are
        refused, with why none can start)."""
        sandbox: Sandbox | SandboxUnavailable
        try:
            sandbox = open_sandbox(settings)
        except SandboxUnavailable as error:
            sandbox = error
        return ToolBox(
            Workspace(self.worktree),
            CommandPolicy(None, timeout_seconds=120, output_chars=8000, check_paths=False),
            sandbox=sandbox,
            limits=LIMITS,
        )


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


@pytest.fixture
def base() -> Iterator[Path]:
    """Outside /tmp, as a real worktrees directory is (the sandbox's /tmp is its own)."""
    parent = Path.home() / ".cache" / "aether-escape-tests"
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=parent))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def box(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for name in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{name}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{name}_EMAIL", "test@example.com")
    repo = base / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    (repo / "probe.py").write_text(PROBE)
    (repo / "work.py").write_text(WORK)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "initial")
    worktree = base / "worktrees" / "t1-a1"
    worktree.parent.mkdir()
    _git(repo, "worktree", "add", "-q", "-b", "task", str(worktree))
    tools = ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=120, output_chars=8000, check_paths=False),
        sandbox=open_sandbox(SandboxSettings(limits=LIMITS)),
        limits=LIMITS,
    )
    yield Box(worktree.resolve(), tools)
    tools.close()


async def test_denied_calls_fail_with_eperm_in_the_kept_sandbox(box: Box) -> None:
    assert said(await box.run("python probe.py")) == EXPECTED
    # The kept sandbox's init (which carries the filter too) runs the next command.
    assert said(await box.run("python probe.py")) == EXPECTED


async def test_denied_calls_fail_with_eperm_in_a_sandbox_of_its_own(box: Box) -> None:
    cold = box.toolbox(SandboxSettings(limits=LIMITS, warm=False))
    try:
        assert said(await box.run("python probe.py", cold)) == EXPECTED
    finally:
        cold.close()


async def test_denied_calls_fail_with_eperm_in_the_brokers_verification(box: Box) -> None:
    sandbox = open_sandbox(SandboxSettings(limits=LIMITS, warm=False))
    env = {"PATH": os.environ["PATH"]}
    done = await asyncio.to_thread(
        verify_command, "python probe.py", str(box.worktree), 120, 8000, env, sandbox=sandbox
    )
    assert done.result == "passed", done.output
    assert said(done.output) == EXPECTED


async def test_denied_calls_fail_with_eperm_in_the_claude_code_clis_sandbox(
    box: Box, base: Path
) -> None:
    from aether_agent_runner.runtimes.confined_cli import bundled_cli, confined

    # A stand-in for the CLI, started by the very script the SDK would be given.
    cli = base / "cli" / "claude"
    cli.parent.mkdir()
    cli.write_text(f"#!{sys.executable}\n{PROBE}")
    cli.chmod(0o755)
    config = base / "config"
    config.mkdir()
    sandbox = open_sandbox(SandboxSettings(limits=LIMITS))
    assert isinstance(sandbox, Bubblewrap)
    job: Any = SimpleNamespace(worktree=box.worktree)
    async with confined(sandbox, str(cli), job, config, None) as run:
        done = await asyncio.to_thread(
            subprocess.run, [run.script], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    assert said(done.stdout) == EXPECTED
    # The real CLI (a JS runtime: threads, its event loop's I/O) starts under the filter.
    real = bundled_cli()
    if real is None:
        return
    async with confined(sandbox, real, job, config, None) as run:
        done = await asyncio.to_thread(
            subprocess.run, [run.script, "--version"], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0 and "Claude Code" in done.stdout, (done.stdout, done.stderr)


async def test_ordinary_work_still_runs_under_the_filter(box: Box) -> None:
    out = await box.run("python work.py")
    assert "[exit code 0" in out and "WORK 8 0 42" in out, out
    out = await box.run("python -m pytest -q -p no:cacheprovider tests")
    assert "[exit code 0" in out and "1 passed" in out, out
    commit = (
        "git init -q /tmp/r && cd /tmp/r && echo x > x && git add x && "
        "git -c user.name=T -c user.email=t@example.com commit -q -m x && git log --oneline"
    )
    out = await box.run(f"sh -c {shlex.quote(commit)}")
    assert "[exit code 0" in out and " x\n" in out, out
    if shutil.which("cc"):
        build = (
            "printf '#include <stdio.h>\\nint main(void){puts(\"compiled\");return 0;}\\n'"
            " > /tmp/c.c && cc -o /tmp/c /tmp/c.c && /tmp/c"
        )
        out = await box.run(f"sh -c {shlex.quote(build)}")
        assert "[exit code 0" in out and "compiled" in out, out
    if shutil.which("node"):
        script = (
            "const {Worker} = require('worker_threads'); const fs = require('fs');"
            "fs.writeFileSync('/tmp/n.txt', 'node');"
            "fs.readFile('/tmp/n.txt', 'utf8', (e, d) => {"
            " new Worker('process.exit(0)', {eval: true}).on('exit', () => console.log(d + ' ok'));"
            "});"
        )
        out = await box.run(f"node -e {shlex.quote(script)}")
        assert "[exit code 0" in out and "node ok" in out, out


async def test_the_filter_is_off_only_when_an_operator_says_so(
    box: Box, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="aether.sandbox")
    # Warned once per process, at its first sandbox: this test's is that first one.
    monkeypatch.setattr(bubblewrap, "_probed", {})
    assert not SandboxSettings.from_env({"AETHER_SANDBOX_SECCOMP": "off"}).seccomp
    off = box.toolbox(SandboxSettings(limits=LIMITS, seccomp=False))
    try:
        found = said(await box.run("python probe.py", off))
    finally:
        off.close()
    assert found["io_uring_setup"] == "ok" and found["keyctl"] == "ok"
    assert any("WITHOUT a seccomp filter" in r.getMessage() for r in caplog.records)


async def test_without_a_filter_for_the_machine_commands_are_refused(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine with no system-call table: no sandbox starts, so no command runs.
    monkeypatch.setattr(seccomp, "NUMBERS", {})
    marker = box.worktree / "ran"
    refusing = box.toolbox(SandboxSettings(limits=LIMITS, warm=False))
    result = await refusing.call("run_command", {"command": f"touch {marker}"})
    assert result.is_error and "refused" in result.content
    assert "no seccomp filter for this machine's architecture" in result.content
    assert "AETHER_SANDBOX_SECCOMP=off" in result.content
    assert not marker.exists()
