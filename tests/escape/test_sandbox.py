"""Escape attempts against the agent's run_command, each refused or contained.

Every attempt goes through the real tool layer (``ToolBox.call("run_command", …)``, built
the way the runner builds it under the default settings: bubblewrap, any program allowed,
the argument path checks off so that the sandbox alone is what stands in the way) with a
real bubblewrap, a real git repository and its linked worktree, a real NATS and a real
PostgreSQL. "Contained" means: nothing outside the worktree changed (the repository's git
directory included), nothing the command started is still running afterwards, and the
secrets it went for are not in what it printed.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_sandbox import MIB, Limits, SandboxSettings, WarmSandbox, open_sandbox

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"
)

SECRET = "sk-ant-escape-" + uuid.uuid4().hex
STATUS = re.compile(r"^\[(exit code|timed out|stopped) ", re.MULTILINE)
LIMITS = Limits(
    memory_bytes=256 * MIB,
    processes=64,
    cpu_seconds=10,
    output_bytes=4 * MIB,
    disk_bytes=16 * MIB,
    files=2_000,
    tmp_bytes=32 * MIB,
)
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(cwd), *args], env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@dataclass
class Target:
    """A repository, a task's linked worktree of it, and a directory beside them."""

    root: Path
    repo: Path
    worktree: Path
    outside: Path
    tools: ToolBox

    def snapshot(self) -> dict[str, bytes]:
        """Every file under the root but outside the worktree (the git dir included)."""
        files: dict[str, bytes] = {}
        for directory, _, names in os.walk(self.root):
            here = Path(directory)
            if here == self.worktree or self.worktree in here.parents:
                continue
            for name in names:
                path = here / name
                if path.is_symlink():
                    files[str(path)] = b"-> " + os.readlink(path).encode()
                elif path.is_file():
                    files[str(path)] = path.read_bytes()
        return files

    async def run(self, command: str, timeout: float = 30, **limits: Any) -> str:
        tools = self.tools
        if limits:
            tools = ToolBox(
                Workspace(self.worktree),
                CommandPolicy(None, timeout_seconds=600, output_chars=8000, check_paths=False),
                sandbox=tools.sandbox(),
                limits=replace(LIMITS, **limits),
            )
        result = await tools.call("run_command", {"command": command, "timeout_seconds": timeout})
        # "$ command" (maybe over several lines), "[status]", then what it printed: the
        # status and the output only.
        status = STATUS.search(result.content)
        assert status, result.content
        return result.content[status.start() :]


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory outside /tmp, as a real worktrees directory is: the sandbox's /tmp is a
    private tmpfs, so a repository under the host's /tmp would be out of sight anyway."""
    parent = Path.home() / ".cache" / "aether-escape-tests"
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=parent))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def target(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    tmp_path = base
    # The runner's own environment holds secrets, as it would in production.
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("AETHER_ADMIN_TOKEN", SECRET)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# demo\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "initial")
    _git(repo, "branch", "task", "main")
    worktree = tmp_path / "worktrees" / "t1-a1"
    worktree.parent.mkdir()
    _git(repo, "worktree", "add", "-q", str(worktree), "task")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched\n")
    sandbox = open_sandbox(SandboxSettings(limits=LIMITS))
    tools = ToolBox(
        Workspace(worktree),
        CommandPolicy(None, timeout_seconds=30, output_chars=8000, check_paths=False),
        sandbox=sandbox,
        limits=LIMITS,
    )
    yield Target(tmp_path, repo, worktree.resolve(), outside, tools)
    tools.close()


# Places a write outside the worktree could land: beside it, in the repository's checkout
# and git directory, in the runner's home, in the system and in the Python environment.
def _targets(t: Target) -> list[Path]:
    return [
        t.outside / "pwned",
        t.repo / "pwned",
        t.repo / ".git" / "hooks" / "pre-commit",
        Path.home() / f"pwned-{uuid.uuid4().hex}",
        Path("/etc") / f"pwned-{uuid.uuid4().hex}",
        Path(sys.prefix) / f"pwned-{uuid.uuid4().hex}",
    ]


def _write_all(paths: list[Path]) -> str:
    """Python source that tries to write each path and reports the ones that worked."""
    return (
        "import os\n"
        f"for p in {[str(p) for p in paths]!r}:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
        "        open(p, 'w').write('pwned')\n"
        "        print('WROTE', p)\n"
        "    except OSError as e:\n"
        "        print('DENIED', p, e.strerror)\n"
        "open('attempted.txt', 'w').write('yes')\n"
    )


def _assert_contained(t: Target, before: dict[str, bytes], paths: list[Path]) -> None:
    assert t.snapshot() == before
    for path in paths:
        assert not path.exists(), f"{path} was written from inside the sandbox"


def _running(marker: str) -> list[int]:
    """Host pids of processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


# --- interpreters and build tools running anything --------------------------------------


async def test_python_os_system_cannot_write_outside(target: Target) -> None:
    paths = _targets(target)
    before = target.snapshot()
    shell = " ; ".join(f"echo pwned > {p}" for p in paths)
    out = await target.run(f"python -c {shlex.quote(f'import os; os.system({shell!r})')}")
    assert "[exit code" in out
    _assert_contained(target, before, paths)


async def test_a_makefile_cannot_write_outside(target: Target) -> None:
    paths = _targets(target)
    recipe = "\n".join(f"\t-echo pwned > {p}" for p in paths)
    (target.worktree / "Makefile").write_text(f"all:\n{recipe}\n")
    before = target.snapshot()
    out = await target.run("make")
    assert "[exit code" in out
    _assert_contained(target, before, paths)


async def test_a_conftest_run_by_pytest_cannot_write_outside(target: Target) -> None:
    paths = _targets(target)
    (target.worktree / "tests" / "conftest.py").write_text(_write_all(paths))
    before = target.snapshot()
    # No plugin autoloaded: the conftest is what this is about, and loading every plugin
    # installed beside pytest costs about 3 s of CPU.
    out = await target.run("python -m pytest -q --disable-plugin-autoload tests")
    assert "1 passed" in out
    assert (target.worktree / "attempted.txt").exists()  # the conftest did run
    _assert_contained(target, before, paths)


async def test_an_npm_script_cannot_write_outside(target: Target) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    paths = _targets(target)
    script = " ; ".join(f"echo pwned > {p}" for p in paths)
    package = {"name": "demo", "version": "1.0.0", "scripts": {"test": script}}
    (target.worktree / "package.json").write_text(json.dumps(package))
    before = target.snapshot()
    out = await target.run("npm test --offline --no-update-notifier", timeout=60)
    assert "[exit code" in out
    _assert_contained(target, before, paths)


async def test_sort_with_an_attached_output_option_cannot_write_outside(target: Target) -> None:
    paths = [target.outside / "keep.txt", target.repo / "README.md", Path("/etc/hostname")]
    before = target.snapshot()
    hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None
    for path in paths:
        await target.run(f"sort -o{path} README.md")
    assert target.snapshot() == before
    if hostname is not None:
        assert Path("/etc/hostname").read_bytes() == hostname


async def test_a_hard_link_to_a_system_secret_cannot_be_made(target: Target) -> None:
    out = await target.run("ln /etc/shadow shadow-link")
    link = target.worktree / "shadow-link"
    if link.exists():
        assert not os.path.samefile(link, "/etc/shadow")
    assert "[exit code 0" not in out


# --- secrets, /proc and the network ------------------------------------------------------


async def test_the_runners_environment_cannot_be_read_through_proc(target: Target) -> None:
    code = (
        "import glob, os\n"
        f"pids = ['self', str(os.getppid()), '1', '{os.getpid()}', '{os.getppid()}']\n"
        "pids += [p.split('/')[2] for p in glob.glob('/proc/[0-9]*')]\n"
        "for pid in pids:\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            print(pid, name, open(f'/proc/{pid}/{name}', 'rb').read())\n"
        "        except OSError as e:\n"
        "            print(pid, name, 'DENIED', e.strerror)\n"
        "print(dict(os.environ))\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "[exit code 0" in out
    assert SECRET not in out
    # Only the sandbox's own processes are visible: the test process is not among them.
    assert f"{os.getpid()} environ b" not in out


async def test_nats_cannot_be_reached_from_inside(target: Target, nats_url: str) -> None:
    address = urlparse(nats_url)
    code = (
        "import socket\n"
        f"s = socket.create_connection(({address.hostname!r}, {address.port}), timeout=5)\n"
        "print('CONNECTED', s.recv(100))\n"
    )
    # The same code outside the sandbox does reach the server.
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "CONNECTED b'INFO" in outside.stdout
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "CONNECTED" not in out and "[exit code 1" in out


async def test_postgresql_cannot_be_reached_from_inside(target: Target, database_url: str) -> None:
    code = (
        "import psycopg\n"
        f"with psycopg.connect({database_url!r}, connect_timeout=5) as c:\n"
        "    print('CONNECTED', c.execute('select 1').fetchone())\n"
    )
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "CONNECTED (1,)" in outside.stdout, outside.stderr
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "CONNECTED" not in out and "[exit code 1" in out


# --- git ---------------------------------------------------------------------------------


async def test_the_worktrees_git_file_and_the_repositorys_git_dir_cannot_be_written(
    target: Target,
) -> None:
    git_file = target.worktree / ".git"
    git_dir = Path(git_file.read_text().split(":", 1)[1].strip())
    common = target.repo / ".git"
    paths = [
        git_file,
        git_dir / "config",
        git_dir / "HEAD",
        common / "config",
        common / "hooks" / "pre-commit",
        common / "info" / "attributes",
    ]
    before_file = git_file.read_bytes()
    before = target.snapshot()
    out = await target.run(f"python -c {shlex.quote(_write_all(paths))}")
    assert "WROTE" not in out
    out = await target.run("python -c \"import os; os.unlink('.git')\"")
    assert "[exit code 1" in out
    assert git_file.read_bytes() == before_file
    assert target.snapshot() == before
    assert not (common / "hooks" / "pre-commit").exists()


# --- processes that outlive their command --------------------------------------------------


async def test_a_setsid_double_forked_child_does_not_survive(target: Target) -> None:
    marker = f"escape-{uuid.uuid4().hex}"
    code = (
        "import fcntl, os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        f = open('held.lock', 'w')\n"
        "        fcntl.flock(f, fcntl.LOCK_EX)\n"
        "        open('daemon.ready', 'w').write(str(os.getpid()))\n"
        "        os.execvp('python', ['python', '-c', 'import time; time.sleep(600)',\n"
        f"                             {marker!r}])\n"
        "    os._exit(0)\n"
        "while not os.path.exists('daemon.ready'):\n"
        "    time.sleep(0.01)\n"
        "print('DETACHED')\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "DETACHED" in out and "[exit code 0" in out
    assert _running(marker) == []
    # The lock its holder would keep is free: the holder is gone.
    with open(target.worktree / "held.lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_a_fork_bomb_is_contained(target: Target) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    out = await target.run(f"python -c {shlex.quote(code)} {marker}", timeout=2)
    assert "[timed out after" in out or "stopped" in out
    assert _running(marker) == []


# --- resources -------------------------------------------------------------------------------


async def test_a_memory_hog_is_stopped(target: Target) -> None:
    code = (
        "blocks = []\n"
        "while len(blocks) < 400:\n"
        "    blocks.append(bytearray(8 << 20))\n"
        "print('HOARDED')"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "HOARDED" not in out
    assert "[exit code 0" not in out


async def test_a_disk_filler_is_stopped(target: Target) -> None:
    code = (
        "import os\n"
        "chunk = b'x' * (1 << 20)\n"
        "for n in range(64):\n"
        "    with open(f'fill-{n}.bin', 'wb') as f:\n"
        "        for _ in range(12):\n"
        "            f.write(chunk)\n"
        "print('FILLED')\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "FILLED" not in out
    assert "into the worktree" in out
    written = sum(p.stat().st_size for p in target.worktree.glob("fill-*.bin"))
    assert written < 768 * MIB


async def test_one_huge_file_is_cut_at_the_disk_cap(target: Target) -> None:
    code = (
        "f = open('huge.bin', 'wb')\n"
        "for _ in range(64):\n"
        "    f.write(b'x' * (1 << 20))\n"
        "print('WRITTEN')"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "WRITTEN" not in out and "File too large" in out
    assert (target.worktree / "huge.bin").stat().st_size <= LIMITS.disk_bytes  # type: ignore[operator]


async def test_creating_too_many_files_is_stopped(target: Target) -> None:
    code = (
        "import os\n"
        "os.mkdir('many')\n"
        "for n in range(100_000):\n"
        "    open(f'many/{n}', 'w').close()\n"
        "print('CREATED')\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}", timeout=60)
    assert "CREATED" not in out
    assert "files in the worktree" in out
    assert len(os.listdir(target.worktree / "many")) < 100_000


async def test_a_cpu_spin_is_stopped_at_its_cpu_time(target: Target) -> None:
    out = await target.run('python -c "while True: pass"', timeout=600, cpu_seconds=2)
    assert "[timed out" not in out
    assert "[exit code 0" not in out


async def test_a_command_past_its_wall_clock_is_killed_whole(target: Target) -> None:
    marker = f"sleeper-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen(['python', '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        "time.sleep(600)\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)} {marker}", timeout=1)
    assert "[timed out after 1." in out
    assert _running(marker) == []


async def test_endless_output_is_stopped(target: Target) -> None:
    out = await target.run("yes escape", timeout=60)
    assert "printed more than" in out and "[timed out" not in out


# --- the kept sandbox: one command's leftovers, the next command, and the init ------------

# Python run inside: the pids of the namespace other than its own (the init is 1).
OTHERS = (
    "import os\n"
    "me = os.getpid()\n"
    "print('OTHERS', sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != me))\n"
)


async def test_an_attempts_commands_share_one_kept_sandbox(target: Target) -> None:
    for _ in range(3):
        assert "[exit code 0" in await target.run("true")
    sandbox = target.tools.sandbox()
    assert isinstance(sandbox, WarmSandbox)
    assert sandbox.started == 1


async def test_files_left_in_tmp_home_and_dev_shm_are_gone_for_the_next_command(
    target: Target,
) -> None:
    code = (
        "import os\n"
        "os.makedirs('/tmp/deep/er', exist_ok=True)\n"
        "open('/tmp/deep/er/note', 'w').write('left')\n"
        "os.chmod('/tmp/deep/er', 0)\n"
        "os.chmod('/tmp/deep', 0)\n"
        "open(os.path.expanduser('~/.netrc'), 'w').write('left')\n"
        "open('/dev/shm/left', 'w').write('left')\n"
        "os.symlink('/etc/passwd', '/tmp/link')\n"
        "os.mkfifo('/tmp/fifo')\n"
        "os.setxattr('/tmp', 'user.left', b'left')\n"
        "os.chmod('/tmp', 0o777)\n"
        "print('LEFT')\n"
    )
    assert "LEFT" in await target.run(f"python -c {shlex.quote(code)}")
    look = (
        "import os, stat\n"
        "found = []\n"
        "for root in ('/tmp', '/dev/shm'):\n"
        "    for here, dirs, files in os.walk(root):\n"
        "        found += [os.path.join(here, n) for n in dirs + files]\n"
        "print('FOUND', sorted(found))\n"
        "print('XATTRS', os.listxattr('/tmp'))\n"
        "print('MODE', oct(stat.S_IMODE(os.stat('/tmp').st_mode)))\n"
    )
    out = await target.run(f"python -c {shlex.quote(look)}")
    # Only the scratch directories every command gets, empty.
    assert (
        "FOUND ['/tmp/aether', '/tmp/aether/cache', '/tmp/aether/home', '/tmp/aether/tmp']" in out
    )
    assert "XATTRS []" in out and "MODE 0o777" not in out


async def test_system_v_ipc_keys_and_message_queues_do_not_outlive_a_command(
    target: Target,
) -> None:
    leave = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "shm = libc.shmget(0x5eed, 4096, 0o1600)\n"
        "msg = libc.msgget(0x5eed, 0o1600)\n"
        "sem = libc.semget(0x5eed, 1, 0o1600)\n"
        "key = libc.syscall(248, b'user', b'aether-left', b'secret', 6, ctypes.c_int(-4))\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "mq = rt.mq_open(b'/aether-left', os.O_CREAT | os.O_RDWR, 0o600, None)\n"
        "print('MADE', shm >= 0, msg >= 0, sem >= 0, key > 0, 'MQ', mq, ctypes.get_errno())\n"
    )
    out = await target.run(f"python -c {shlex.quote(leave)}")
    # No key can be made at all: the sandbox's seccomp filter denies the keyring calls.
    assert "MADE True True True False" in out
    # A POSIX message queue cannot even be made (none could be emptied between commands).
    assert "MQ -1" in out
    find = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('SHM', libc.shmget(0x5eed, 0, 0), 'MSG', libc.msgget(0x5eed, 0),\n"
        "      'SEM', libc.semget(0x5eed, 0, 0))\n"
        "print('KEY', libc.syscall(249, b'user', b'aether-left', None, ctypes.c_int(0)))\n"
        "for kind in ('shm', 'msg', 'sem'):\n"
        "    print(kind, open(f'/proc/sysvipc/{kind}').read().splitlines()[1:])\n"
    )
    out = await target.run(f"python -c {shlex.quote(find)}")
    assert "SHM -1 MSG -1 SEM -1" in out and "KEY -1" in out
    assert "shm []" in out and "msg []" in out and "sem []" in out


async def test_a_detached_process_is_gone_before_the_next_command_starts(target: Target) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            open('beacon', 'a').write('.')\n"
        "            time.sleep(0.01)\n"
        "    os._exit(0)\n"
        "while not os.path.exists('beacon'):\n"
        "    time.sleep(0.01)\n"
        "print('DETACHED')\n"
    )
    assert "DETACHED" in await target.run(f"python -c {shlex.quote(code)}")
    out = await target.run(f"python -c {shlex.quote(OTHERS)}")
    assert "OTHERS [1]" in out
    size = (target.worktree / "beacon").stat().st_size
    assert "OTHERS [1]" in await target.run(f"python -c {shlex.quote(OTHERS)}")
    assert (target.worktree / "beacon").stat().st_size == size


async def test_a_command_past_its_wall_clock_leaves_nothing_for_the_next(target: Target) -> None:
    code = (
        "import os, subprocess, time\n"
        "subprocess.Popen(['python', '-c', 'import time; time.sleep(600)'],\n"
        "                 start_new_session=True)\n"
        "time.sleep(600)\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}", timeout=1)
    assert "[timed out after 1." in out
    assert "OTHERS [1]" in await target.run(f"python -c {shlex.quote(OTHERS)}")


async def test_the_init_cannot_be_signalled_traced_or_read(target: Target) -> None:
    code = (
        "import ctypes, os, signal\n"
        "for number in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,\n"
        "               signal.SIGSTOP, signal.SIGSEGV, signal.SIGUSR1, signal.SIGCHLD):\n"
        "    try:\n"
        "        os.kill(1, number)\n"
        "    except PermissionError:\n"
        "        pass  # refused outright where the Landlock layer scopes signals\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('PTRACE', libc.ptrace(16, 1, 0, 0), os.strerror(ctypes.get_errno()))\n"
        "print('SEIZE', libc.ptrace(0x4206, 1, 0, 0), os.strerror(ctypes.get_errno()))\n"
        "for name in ['mem', 'environ', 'maps', 'cwd/x', 'root/x'] + [\n"
        "        f'fd/{n}' for n in range(16)]:\n"
        "    try:\n"
        "        open(f'/proc/1/{name}', 'r+b' if name == 'mem' else 'rb')\n"
        "        print('OPENED', name)\n"
        "    except OSError as e:\n"
        "        pass\n"
        "print('TRIED')\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "TRIED" in out and "OPENED" not in out
    assert "PTRACE -1 Operation not permitted" in out and "SEIZE -1" in out
    # The init is alive and well: the next command runs in the same sandbox.
    assert "OTHERS [1]" in await target.run(f"python -c {shlex.quote(OTHERS)}")
    sandbox = target.tools.sandbox()
    assert isinstance(sandbox, WarmSandbox) and sandbox.started == 1


async def test_commands_in_the_kept_sandbox_hold_no_capability(target: Target) -> None:
    out = await target.run("grep -E ^Cap(Eff|Prm|Bnd|Amb) /proc/self/status")
    for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert f"{name}:\t0000000000000000" in out
    # So nothing a command could leave in the namespaces it shares with the next one.
    code = (
        "import ctypes, os, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "try:\n"
        "    socket.sethostname('left-behind')\n"
        "    print('RENAMED')\n"
        "except OSError as e:\n"
        "    print('HOSTNAME', e.errno)\n"
        "print('MOUNT', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())\n"
        "print('UNSHARE', libc.unshare(0x10000000), ctypes.get_errno())\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "RENAMED" not in out and "MOUNT -1" in out and "UNSHARE -1" in out
    assert "sandbox" in await target.run("python -c 'import socket; print(socket.gethostname())'")


# --- no sandbox, no commands ------------------------------------------------------------------


async def test_without_bubblewrap_commands_are_refused_naming_what_is_missing(
    tmp_path: Path,
) -> None:
    from aether_sandbox import SandboxUnavailable

    settings = SandboxSettings(bwrap="bwrap-that-is-not-installed")
    with pytest.raises(SandboxUnavailable) as missing:
        open_sandbox(settings)
    tools = ToolBox(
        Workspace(tmp_path),
        CommandPolicy(None, check_paths=False),
        sandbox=missing.value,
    )
    marker = tmp_path / "ran"
    result = await tools.call("run_command", {"command": f"touch {marker}"})
    assert result.is_error
    assert "refused" in result.content and "bubblewrap is not installed" in result.content
    assert "AETHER_SANDBOX=unconfined" in result.content
    assert not marker.exists()


# --- a reviewer's further attempts ------------------------------------------------------------


async def test_kernel_settings_under_proc_sys_cannot_be_opened_for_writing(target: Target) -> None:
    # Run as root, the command's user is the host's root: the kernel lets root write
    # /proc/sys/kernel/core_pattern (a program it then runs as root on any crash) on the
    # user alone. Opening for writing writes nothing; every opening must fail.
    code = (
        "import os\n"
        "opened, tried = [], 0\n"
        "for here, dirs, files in os.walk('/proc/sys'):\n"
        "    for name in files:\n"
        "        tried += 1\n"
        "        try:\n"
        "            os.close(os.open(os.path.join(here, name), os.O_WRONLY | os.O_NONBLOCK))\n"
        "            opened.append(os.path.join(here, name))\n"
        "        except OSError:\n"
        "            pass\n"
        "print('TRIED', tried > 100, 'OPENED', opened[:20])\n"
        "print('PATTERN', open('/proc/sys/kernel/core_pattern').read().strip() != '')\n"
    )
    for sandbox in (target.tools, None):
        out = await (
            target.run(f"python -c {shlex.quote(code)}") if sandbox else _cold(target, code)
        )
        assert "TRIED True OPENED []" in out
        assert "PATTERN True" in out  # still readable


async def _cold(target: Target, code: str) -> str:
    """``code`` run in a sandbox of its own (``AETHER_SANDBOX_WARM=off``)."""
    tools = ToolBox(
        Workspace(target.worktree),
        CommandPolicy(None, timeout_seconds=30, output_chars=8000, check_paths=False),
        sandbox=open_sandbox(SandboxSettings(limits=LIMITS, warm=False)),
        limits=LIMITS,
    )
    try:
        result = await tools.call(
            "run_command", {"command": f"python -c {shlex.quote(code)}", "timeout_seconds": 30}
        )
    finally:
        tools.close()
    status = STATUS.search(result.content)
    assert status, result.content
    return result.content[status.start() :]


def _add_key(description: bytes, payload: bytes, keyring: int) -> int:
    """add_key(2) in the test process (the runner's place); the key's id."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = int(libc.syscall(248, b"user", description, payload, len(payload), ctypes.c_int(keyring)))
    assert key > 0, os.strerror(ctypes.get_errno())
    return key


async def test_the_runners_session_keyring_is_not_reachable(target: Target) -> None:
    import ctypes

    if os.uname().machine != "x86_64":
        pytest.skip("keyctl numbers used here are x86_64's")
    libc = ctypes.CDLL(None, use_errno=True)
    # A session keyring of the runner's own (joined here, as a login or service manager
    # would have given it one) holding a secret.
    assert libc.syscall(250, ctypes.c_long(1), None) > 0  # KEYCTL_JOIN_SESSION_KEYRING
    description = f"aether-review-{uuid.uuid4().hex}".encode()
    _add_key(description, SECRET.encode(), -3)  # KEY_SPEC_SESSION_KEYRING
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "buffer = ctypes.create_string_buffer(4096)\n"
        f"for keyring in (-3, -4, -5, -1, -2):\n"
        f"    key = libc.syscall(250, 10, ctypes.c_int(keyring), b'user', {description!r}, 0)\n"
        "    print('SEARCH', keyring, key)\n"
        "    if key > 0:\n"
        "        size = libc.syscall(250, 11, ctypes.c_int(key), buffer, 4096)\n"
        "        print('READ', buffer.raw[:max(size, 0)])\n"
        f"key = libc.syscall(249, b'user', {description!r}, None, 0)\n"
        "print('REQUEST', key)\n"
        "if key > 0:\n"
        "    size = libc.syscall(250, 11, ctypes.c_int(key), buffer, 4096)\n"
        "    print('READ', buffer.raw[:max(size, 0)])\n"
    )
    kept = await target.run(f"python -c {shlex.quote(code)}")
    cold = await _cold(target, code)
    for out in (kept, cold):
        assert "REQUEST -1" in out, (kept, cold)
        assert "READ" not in out and SECRET not in out


async def test_an_abstract_unix_socket_of_the_host_is_out_of_reach(target: Target) -> None:
    # Abstract sockets have no file: only the network namespace keeps them apart.
    import socket

    name = f"\0aether-review-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(name)
    listener.listen()
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({name!r})\n"
        "print('CONNECTED')\n"
    )
    try:
        outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert "CONNECTED" in outside.stdout, outside.stderr
        listener.accept()[0].close()
        out = await target.run(f"python -c {shlex.quote(code)}")
    finally:
        listener.close()
    assert "CONNECTED" not in out and "Connection refused" in out


async def test_no_descriptor_reaches_past_the_sandbox(target: Target) -> None:
    # Whatever a command inherits: only /dev/null and its output pipe, in the kept
    # sandbox and in a cold one; no directory, socket or file of the runner's.
    code = (
        "import os, stat\n"
        "fds = os.listdir('/proc/self/fd')\n"
        "for fd in map(int, fds):\n"
        "    try:\n"
        "        mode = os.fstat(fd).st_mode\n"
        "    except OSError:\n"
        "        continue  # the listing's own descriptor, closed by now\n"
        "    if not (stat.S_ISFIFO(mode) or os.readlink(f'/proc/self/fd/{fd}') == '/dev/null'):\n"
        "        print('REACHES', fd, os.readlink(f'/proc/self/fd/{fd}'))\n"
        "print('CHECKED', len(fds))\n"
    )
    for out in (await target.run(f"python -c {shlex.quote(code)}"), await _cold(target, code)):
        assert "CHECKED" in out and "REACHES" not in out, out


async def test_other_attempts_worktrees_and_the_hosts_shm_are_not_there(target: Target) -> None:
    sibling = target.worktree.parent / "t2-a1"
    sibling.mkdir()
    (sibling / "secret.txt").write_text(SECRET)
    host_shm = Path("/dev/shm") / f"aether-review-{uuid.uuid4().hex}"
    host_shm.write_text(SECRET)
    code = (
        "import os\n"
        f"paths = ['../t2-a1/secret.txt', {str(sibling / 'secret.txt')!r}, {str(host_shm)!r}]\n"
        "for path in paths:\n"
        "    try:\n"
        "        print('READ', open(path).read())\n"
        "    except OSError as e:\n"
        "        print('DENIED', e.strerror)\n"
        "print('PARENT', os.listdir('..'))\n"
        "open('/dev/shm/from-inside', 'w').write('x')\n"
    )
    try:
        out = await target.run(f"python -c {shlex.quote(code)}")
    finally:
        host_shm.unlink()
    assert SECRET not in out and "READ" not in out and "t2-a1" not in out
    assert not Path("/dev/shm/from-inside").exists()


async def test_a_nested_sandbox_or_namespace_cannot_be_made(target: Target) -> None:
    out = await target.run("bwrap --ro-bind / / --bind / /mnt true")
    assert "[exit code 0" not in out
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for flag in (0x10000000, 0x20000, 0x40000000, 0x20000000, 0x08000000):\n"
        "    print('UNSHARE', hex(flag), libc.unshare(flag))\n"
        "try:\n"
        "    print('SETNS', libc.setns(os.open('/proc/1/ns/mnt', os.O_RDONLY), 0))\n"
        "except OSError as e:\n"
        "    print('SETNS DENIED', e.strerror)\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert out.count(" -1\n") == 5 and "SETNS DENIED" in out


async def test_the_worktrees_git_file_cannot_be_renamed_or_linked_away(target: Target) -> None:
    git_file = target.worktree / ".git"
    pointer = git_file.read_bytes()
    code = (
        "import os\n"
        "for step in (lambda: os.rename('.git', 'moved'), lambda: os.link('.git', 'linked'),\n"
        "             lambda: os.rename('README.md', '.git'),\n"
        "             lambda: os.symlink('/tmp', 'x') or os.rename('x', '.git')):\n"
        "    try:\n"
        "        step()\n"
        "        print('DONE')\n"
        "    except OSError as e:\n"
        "        print('DENIED', e.strerror)\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "DONE" not in out and out.count("DENIED") == 4
    assert git_file.read_bytes() == pointer and not (target.worktree / "linked").exists()


async def test_a_stderr_flood_is_stopped_too(target: Target) -> None:
    code = "import sys\nwhile True:\n    sys.stderr.write('flood ' * 1000)\n"
    out = await target.run(f"python -c {shlex.quote(code)}", timeout=60)
    assert "printed more than" in out and "[timed out" not in out


async def test_after_a_fork_bomb_the_kept_sandbox_runs_the_next_command_alone(
    target: Target,
) -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    out = await target.run(f"python -c {shlex.quote(code)}", timeout=2)
    assert "[timed out after" in out or "stopped" in out
    assert "OTHERS [1]" in await target.run(f"python -c {shlex.quote(OTHERS)}")
    assert "[exit code 0" in await target.run("true")


async def test_the_bus_cannot_be_reached_over_udp_or_ipv6_either(
    target: Target, nats_url: str
) -> None:
    port = urlparse(nats_url).port
    code = (
        "import socket\n"
        f"for family, host in ((socket.AF_INET6, '::1'), (socket.AF_INET, '127.0.0.1')):\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=5)\n"
        "        print('CONNECTED', host)\n"
        "    except OSError as e:\n"
        "        print('REFUSED', host, e.strerror)\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"u.sendto(b'PING', ('127.0.0.1', {port}))\n"
        "print('ADDRESSES', socket.if_nameindex())\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}")
    assert "CONNECTED" not in out and out.count("REFUSED") == 2
    assert "ADDRESSES [(1, 'lo')]" in out


async def test_no_unix_socket_is_reachable_and_the_git_dirs_are_not_readable(
    target: Target,
) -> None:
    # A socket file ignores network namespaces: any one the sandbox could see (a docker,
    # dbus or database socket under /run, /var, the home) would be a way out.
    admin = Path(_git(target.worktree, "rev-parse", "--absolute-git-dir"))
    code = (
        "import os, socket, stat\n"
        "found = []\n"
        "for here, dirs, files in os.walk('/'):\n"
        "    if here == '/':\n"
        "        dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'usr')]\n"
        "    for name in files:\n"
        "        path = os.path.join(here, name)\n"
        "        try:\n"
        "            if stat.S_ISSOCK(os.lstat(path).st_mode):\n"
        "                found.append(path)\n"
        "        except OSError:\n"
        "            pass\n"
        "for path in found:\n"
        "    try:\n"
        "        socket.socket(socket.AF_UNIX).connect(path)\n"
        "        print('CONNECTED', path)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('SOCKETS', len(found))\n"
        f"for path in ({str(admin / 'HEAD')!r}, {str(target.repo / '.git' / 'config')!r},\n"
        f"             {str(admin)!r}, '/run', '/var/run'):\n"
        "    print('EXISTS', path, os.path.exists(path))\n"
    )
    out = await target.run(f"python -c {shlex.quote(code)}", timeout=120)
    assert "SOCKETS" in out and "CONNECTED" not in out
    assert "EXISTS" in out and " True" not in out


async def test_a_command_swapping_a_directory_for_a_link_out_while_file_tools_run(
    target: Target,
) -> None:
    """The swap race run by the agent itself: a sandboxed command swaps ``d`` for a
    relative link to the directory beside the worktree as fast as it can, while the file
    tools read, write, list and search through ``d`` over and over. Nothing outside is
    read or written, whether the tools ran beside the command or were held off."""
    (target.worktree / "d").mkdir()
    (target.worktree / "d" / "keep.txt").write_text("inside\n")
    (target.outside / "secret.txt").write_text("SECRET-BESIDE\n")
    before = target.snapshot()
    code = (
        "import os, time\n"
        "end = time.monotonic() + 4\n"
        "n = 0\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        os.rename('d', 'd.real')\n"
        "        os.symlink('../../outside', 'd')\n"
        "        os.unlink('d')\n"
        "        os.rename('d.real', 'd')\n"
        "        n += 1\n"
        "    except OSError:\n"  # a tool made ``d`` anew in the gap: start again
        "        os.system('rm -rf d.real; [ -L d ] && rm d; mkdir -p d')\n"
        "print('SWAPS', n)\n"
    )
    command = asyncio.ensure_future(target.run(f"python -c {shlex.quote(code)}", timeout=30))
    calls = [
        ("read_file", {"path": "d/secret.txt"}),
        ("read_file", {"path": "d/keep.txt"}),
        ("write_file", {"path": "d/pwned.txt", "content": "written\n"}),
        ("edit_file", {"path": "d/secret.txt", "old_text": "SECRET", "new_text": "EDITED"}),
        ("list_dir", {"path": "d"}),
        ("search", {"pattern": "SECRET-B[E]SIDE", "path": "d"}),
    ]
    seen: list[str] = []
    rounds = 0
    while not command.done() or rounds == 0:
        for name, arguments in calls:
            result = await target.tools.call(name, arguments)
            seen.append(result.content)
        rounds += 1
    out = await command
    assert "SWAPS" in out, out
    leaked = [text for text in seen if "SECRET-BESIDE" in text or "secret.txt\n" in text]
    assert not leaked, leaked[:3]
    after = target.snapshot()
    # What the tools wrote landed in the worktree, if anywhere; nothing outside changed.
    assert after == before
    assert not (target.outside / "pwned.txt").exists()
    assert (target.outside / "secret.txt").read_text() == "SECRET-BESIDE\n"
