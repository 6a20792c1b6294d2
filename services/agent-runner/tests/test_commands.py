"""run_command: allow-listed programs, in the worktree, without secrets, bounded."""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.adapters.commands import (
    CommandPolicy,
    command_env,
    parse_command,
    run_command,
)
from aether_agent_runner.adapters.git import changed_paths
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import ToolError, Workspace
from aether_sandbox import SandboxSettings, Unconfined
from aether_sandbox.environment import is_secret_name

from .conftest import QUICK_PYTEST

# The tests that follow a command's processes by their host pid run unconfined: inside
# the sandbox a pid is one of its own namespace (tests/escape covers the sandboxed case).
UNCONFINED = Unconfined(SandboxSettings(backend="unconfined"))

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-secret-1",
    "ANTHROPIC_BASE_URL": "http://model.internal",
    "GITHUB_TOKEN": "ghp-secret-2",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-3",
    "DATABASE_URL": "postgresql://aether:pw-secret-4@db/aether",
    "NATS_URL": "nats://user:pw-secret-5@nats:4222",
    "MY_SERVICE_KEY": "key-secret-6",
    "DB_PASSWORD": "pw-secret-7",
    "SESSION_COOKIE": "cookie-secret-8",
    "AETHER_INTERNAL": "aether-secret-9",
}

PY = "python"


# The toolboxes a test made, closed after it as an attempt closes its own (their kept
# sandbox ended, an unconfined command's scratch directory removed).
_MADE: list[ToolBox] = []


def box(worktree: Path, sandbox: Any = None, **policy: Any) -> ToolBox:
    settings = {"allowed": (PY, "ls"), "timeout_seconds": 20.0, "output_chars": 4000, **policy}
    made = ToolBox(Workspace(worktree), CommandPolicy(**settings), sandbox=sandbox)
    _MADE.append(made)
    return made


@pytest.fixture(autouse=True)
def _closed_after() -> Iterator[None]:
    yield
    while _MADE:
        _MADE.pop().close()


# Commands the tests run find the Python they run on (its virtual environment's bin).
pytestmark = pytest.mark.usefixtures("python_on_path")


async def test_an_allowed_program_runs_in_the_worktree(task_repo: Any) -> None:
    result = await box(task_repo.worktree).call(
        "run_command", {"command": "python -c 'import os; print(os.getcwd())'"}
    )
    assert not result.is_error
    assert result.content.splitlines()[1].startswith("[exit code 0 after")
    assert result.content.splitlines()[2] == str(task_repo.worktree)


async def test_cwd_is_a_directory_of_the_worktree(task_repo: Any) -> None:
    result = await box(task_repo.worktree).call("run_command", {"command": "ls", "cwd": "src"})
    assert result.content.splitlines()[2:] == ["app.py"]
    refused = await box(task_repo.worktree).call("run_command", {"command": "ls", "cwd": ".."})
    assert refused.is_error and "outside the repository" in refused.content


async def test_a_failing_command_reports_its_exit_code(task_repo: Any) -> None:
    result = await box(task_repo.worktree).call(
        "run_command", {"command": "python -c 'import sys; print(\"boom\"); sys.exit(3)'"}
    )
    assert not result.is_error
    assert "[exit code 3 after" in result.content and result.content.endswith("boom\n")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("bash -c 'cat /etc/passwd'", "'bash' is not an allowed program"),
        ("/usr/bin/python -V", "'/usr/bin/python' is not an allowed program"),
        ("python -V | sh", "commands run without a shell"),
        ("python -V && rm -rf .", "commands run without a shell"),
        ("python -V > out.txt", "commands run without a shell"),
        ("ls /etc", "is an absolute path"),
        ("ls ~/.ssh", "is an absolute path"),
        ("ls ../..", "leads outside the repository"),
        ("ls src/../../..", "leads outside the repository"),
        ("python --prefix=/etc -V", "is an absolute path"),
        ("ls .git", "reaches into .git"),
        ("python -m pytest 'unterminated", "cannot split the command"),
        ("", "a command is required"),
    ],
)
def test_commands_that_may_not_run_are_refused(task_repo: Any, command: str, message: str) -> None:
    policy = CommandPolicy(allowed=(PY, "ls"))
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace("$", r"\$")):
        parse_command(command, policy, Workspace(task_repo.worktree))


def test_a_habitual_stderr_redirect_is_dropped(task_repo: Any) -> None:
    policy = CommandPolicy(allowed=(PY,))
    argv = parse_command("python -m pytest 2>&1", policy, Workspace(task_repo.worktree))
    assert argv == ["python", "-m", "pytest"]


def test_any_program_when_the_allow_list_is_a_star(task_repo: Any) -> None:
    argv = parse_command("bash -c true", CommandPolicy(allowed=None), Workspace(task_repo.worktree))
    assert argv == ["bash", "-c", "true"]


async def test_secrets_never_reach_a_command(
    task_repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JAVA_HOME", "/opt/java")
    tools = ToolBox(
        Workspace(task_repo.worktree),
        CommandPolicy(allowed=(PY,), output_chars=100_000),
        passed_env=("JAVA_HOME", "GITHUB_TOKEN"),  # a secret is dropped even when named
    )
    result = await tools.call(
        "run_command",
        {"command": "python -c 'import json, os; print(json.dumps(dict(os.environ)))'"},
    )
    env = json.loads(result.content.splitlines()[2])
    assert not set(SECRETS) & set(env)
    assert not [value for value in SECRETS.values() if value in result.content]
    assert env["JAVA_HOME"] == "/opt/java"
    assert not env["HOME"].startswith(str(task_repo.worktree))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    tools.close()


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("ANTHROPIC_API_KEY", True),
        ("OPENAI_API_KEY", True),
        ("GH_TOKEN", True),
        ("CLIENT_SECRET", True),
        ("DATABASE_URL", True),
        ("NATS_URL", True),
        ("REDIS_URI", True),
        ("PGPASSWORD", True),
        ("PATH", False),
        ("LANG", False),
        ("JAVA_HOME", False),
    ],
)
def test_names_that_look_secret(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_command_env_is_built_from_scratch(tmp_path: Path) -> None:
    env = command_env({"PATH": "/bin", "LC_ALL": "C", "EDITOR": "vim", "API_KEY": "x"}, tmp_path)
    assert env["PATH"] == "/bin" and env["LC_ALL"] == "C"
    assert "EDITOR" not in env and "API_KEY" not in env
    assert env["HOME"] == str(tmp_path / "home")


async def test_a_command_past_its_timeout_is_killed_with_its_children(task_repo: Any) -> None:
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    result = await box(task_repo.worktree, UNCONFINED).call(
        "run_command", {"command": f'python -c "{code}"', "timeout_seconds": 1}
    )
    assert "[timed out after 1." in result.content and "was stopped]" in result.content
    child = int(result.content.splitlines()[2])
    assert not _alive(child)


async def test_background_processes_do_not_outlive_their_command(task_repo: Any) -> None:
    code = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True)"
    )
    result = await box(task_repo.worktree, UNCONFINED).call(
        "run_command", {"command": f'python -c "{code}"'}
    )
    assert "[exit code 0" in result.content
    assert not _alive(int(result.content.splitlines()[2]))


async def test_a_cancelled_command_is_killed(task_repo: Any) -> None:
    pid = await report_pid_server()
    code = (
        "import os, socket, time; "
        f"s = socket.create_connection(('127.0.0.1', {pid.port})); "
        "s.sendall(str(os.getpid()).encode()); s.close(); time.sleep(60)"
    )
    task = asyncio.create_task(
        run_command(
            [sys.executable, "-c", code],
            task_repo.worktree,
            dict(os.environ),
            60,
            100,
            sandbox=UNCONFINED,
            workdir=task_repo.worktree,
        )
    )
    running = await pid.received()
    assert _alive(running, grace=0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(running)


class PidReport:
    """A local TCP server a command reports its pid to, so the test knows it runs."""

    def __init__(self) -> None:
        self.port = 0
        self._pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def start(self) -> PidReport:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()
            if not self._pid.done():
                self._pid.set_result(int(data))
            writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def received(self, timeout: float = 20.0) -> int:
        try:
            return await asyncio.wait_for(self._pid, timeout)
        finally:
            self._server.close()


async def report_pid_server() -> PidReport:
    return await PidReport().start()


async def test_long_output_keeps_its_beginning_and_end(task_repo: Any) -> None:
    code = "print('FIRST'); print('x' * 100000); print('LAST')"
    result = await box(task_repo.worktree, output_chars=1000).call(
        "run_command", {"command": f'python -c "{code}"'}
    )
    output = result.content.split("\n", 2)[2]
    assert output.startswith("FIRST\n") and output.endswith("LAST\n")
    assert "bytes of output omitted" in output and len(output) < 1200


async def test_running_the_tests_leaves_nothing_to_commit(task_repo: Any) -> None:
    # A pytest start loads every plugin of the environment (about 3 s of CPU here; on a
    # loaded machine it has taken over the 20 s the other tests allow a command): the
    # project's tests need none, so none is loaded.
    tools = box(task_repo.worktree, timeout_seconds=180.0)
    result = await tools.call("run_command", {"command": f"{QUICK_PYTEST} tests"})
    assert "[exit code 0" in result.content and "1 passed" in result.content
    assert changed_paths(task_repo.git_dir) == []
    tools.close()


def _alive(pid: int, grace: float = 5.0) -> bool:
    """Whether ``pid`` is still alive ``grace`` seconds from now at the latest: a process
    sent SIGKILL takes a moment to die, and its pidfd turns readable when it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        readable, _, _ = select.select([fd], [], [], grace)
    finally:
        os.close(fd)
    return not readable


async def test_run_command_through_the_sandbox_port_on_the_scripted_fake(
    tmp_path: Path,
) -> None:
    """What run_command makes of a sandbox's outcome, with nothing run: the request it
    asks for, a timeout, bubblewrap's words for a missing program, a refusal."""
    from aether_sandbox.testing import Scripted, ScriptedSandbox

    fake = ScriptedSandbox(
        [Scripted("ok\n", 0, 0.25), Scripted("", 0, 90), Scripted("bwrap: execvp nope: x", 1)]
    )

    async def run(argv: list[str], sandbox: ScriptedSandbox = fake) -> Any:
        return await run_command(argv, tmp_path, {}, 30, 1000, sandbox=sandbox, workdir=tmp_path)

    done = await run(["pytest", "-q"])
    assert (done.exit_code, done.output, done.sandbox) == (0, "ok\n", "scripted")
    asked = fake.requests[0]
    assert (asked.argv, asked.cwd, asked.workdir) == (["pytest", "-q"], tmp_path, tmp_path)
    assert asked.limits.wall_seconds == 30 and asked.protect == (tmp_path / ".git",)
    slow = await run(["sleep", "90"])
    assert slow.timed_out and slow.status() == "timed out after 30.0 s and was stopped"
    with pytest.raises(ToolError, match="nope: command not found in the sandbox"):
        await run(["nope"])
    refusing = ScriptedSandbox(unavailable="bubblewrap is not installed")
    with pytest.raises(ToolError, match=r"refused: no sandbox can start\. bubblewrap is not"):
        await run(["pytest"], refusing)
