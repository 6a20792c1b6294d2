"""The Landlock layer: what holds a command when bubblewrap's own confinement is wrong.

Each attempt is made through a bubblewrap that is deliberately wrong in one way (a
writable bind of a directory the sandbox does not list, the host's network left
shared), so that only the Landlock layer stands in the way (for the network, its
check that the namespace holds loopback alone); the same attempt with the
layer off (``AETHER_SANDBOX_LANDLOCK=off``) succeeds, which shows each test would fail
without it. Commands run in a sandbox of their own and in the kept one, whose init
restricts each command it forks; ordinary work (git, Python, a C build, renames between
directories) still runs, at every Landlock ABI from 2 up.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

import pytest

from aether_sandbox import (
    Bubblewrap,
    Request,
    SandboxSettings,
    SandboxUnavailable,
    WarmSandbox,
    bubblewrap,
    landlock,
    open_sandbox,
)
from aether_sandbox.execute import execute_cold
from aether_sandbox.settings import Limits

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(landlock.kernel_abi() < 2, reason="this kernel has no Landlock ABI 2"),
]

ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"}
MOUNTED = Path("/mnt/aether-extra")  # outside every tree the sandbox lists
LIMITS = Limits(wall_seconds=60.0)


class WrongBind(Bubblewrap):
    """A bubblewrap that binds one more host directory writable: a mounting mistake."""

    def __init__(self, settings: SandboxSettings, extra: Path) -> None:
        super().__init__(settings)
        self.extra = extra

    def mounts(self, request: Request) -> list[str]:
        args = super().mounts(request)
        return [*args[:-2], "--bind", str(self.extra), str(MOUNTED), *args[-2:]]


class SharedNetwork(Bubblewrap):
    """A bubblewrap that forgets to unshare the network: the host's is reachable."""

    def namespaces(self, *extra: str) -> list[str]:
        return [arg for arg in super().namespaces(*extra) if arg != "--unshare-net"]


async def run(
    sandbox: Bubblewrap, workdir: Path, script: str, *, kept: bool, starts: bool = True
) -> str:
    request = Request(["sh", "-c", script], workdir, workdir, ENV, limits=LIMITS)
    if not kept:
        outcome = await execute_cold(sandbox, request)
    else:
        warm = WarmSandbox(sandbox)
        try:
            outcome = await warm.execute(request, 16_000)
            # In the kept sandbox, not beside it (unless it is expected not to start).
            assert warm.started == int(starts), outcome.output
        finally:
            warm.close()
    return f"{outcome.output}[exit {outcome.exit_code}]"


def python(code: str) -> str:
    return f"python3 -c {shlex.quote(code)} 2>&1"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def abi(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The ABI the sandbox's ruleset is built for (the kernel takes an older one's)."""
    wanted = min(getattr(request, "param", landlock.kernel_abi()), landlock.kernel_abi())
    monkeypatch.setattr(landlock, "kernel_abi", lambda: wanted)
    return wanted


@pytest.mark.parametrize("kept", [False, True], ids=["own", "kept"])
@pytest.mark.parametrize("abi", [2, 3, 4, 5, 6, 7], indirect=True)
async def test_a_wrong_writable_bind_is_neither_written_nor_read(
    tmp_path: Path, workdir: Path, abi: int, kept: bool
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "secret").write_text("the host's secret\n")
    script = (
        f"echo planted > {MOUNTED}/planted || echo WRITE-REFUSED; "
        f"cat {MOUNTED}/secret || echo READ-REFUSED; "
        f"mkdir {MOUNTED}/dir || echo MKDIR-REFUSED; "
        f"rm {MOUNTED}/secret || echo REMOVE-REFUSED; "
        "echo mine > mine && cat mine"
    )
    confined = await run(WrongBind(SandboxSettings(), extra), workdir, script, kept=kept)
    for refused in ("WRITE", "READ", "MKDIR", "REMOVE"):
        assert f"{refused}-REFUSED" in confined, confined
    assert "the host's secret" not in confined and "mine\n[exit 0]" in confined
    assert sorted(p.name for p in extra.iterdir()) == ["secret"]
    assert (workdir / "mine").read_text() == "mine\n"
    # The same mistake without the layer: the write reaches the host.
    bare = await run(WrongBind(SandboxSettings(landlock="off"), extra), workdir, script, kept=kept)
    assert "REFUSED" not in bare and "the host's secret" in bare, bare
    assert (extra / "planted").exists()


@pytest.mark.parametrize("kept", [False, True], ids=["own", "kept"])
async def test_a_network_left_shared_starts_nothing_and_the_own_loopback_serves(
    workdir: Path, abi: int, kept: bool
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        reach = python(
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
            "print('HOST REACHED')\n"
        )
        left = SharedNetwork(SandboxSettings())
        confined = await run(left, workdir, reach, kept=kept, starts=False)
        assert "HOST REACHED" not in confined, confined
        assert "the sandbox's network is not its own" in confined, confined
        bare = SharedNetwork(SandboxSettings(landlock="off"))
        assert "HOST REACHED" in await run(bare, workdir, reach, kept=kept)
        # The host's network as an operator's choice (a CLI agent's ``network: host``):
        # the layer leaves it alone.
        chosen = open_sandbox(SandboxSettings(network="host"))
        assert isinstance(chosen, Bubblewrap) and chosen.landlock is not None
        assert "HOST REACHED" in await run(chosen, workdir, reach, kept=kept)
    # A command's own loopback serves, as a test suite's local server needs.
    serve = python(
        "import socket\n"
        "with socket.create_server(('127.0.0.1', 0)) as s:\n"
        "    c = socket.create_connection(s.getsockname())\n"
        "    a, _ = s.accept(); c.sendall(b'ping'); print('SERVED', a.recv(4).decode())\n"
    )
    assert "SERVED ping" in await run(Bubblewrap(SandboxSettings()), workdir, serve, kept=kept)


@pytest.mark.parametrize("kept", [False, True], ids=["own", "kept"])
async def test_no_signal_or_abstract_socket_reaches_outside_the_command(
    workdir: Path, abi: int, kept: bool
) -> None:
    if abi < 6:
        pytest.skip("scopes need Landlock ABI 6")
    name = f"\0aether-landlock-test-{os.getpid()}-{kept}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen(4)
        code = (
            "import os, signal, socket, subprocess\n"
            "try:\n"
            "    os.kill(1, 0)\n"  # bubblewrap's process, or the kept sandbox's init
            "    print('SIGNALLED')\n"
            "except OSError as e:\n"
            "    print('SIGNAL REFUSED', e.errno)\n"
            "child = subprocess.Popen(['sleep', '30'])\n"
            "child.send_signal(signal.SIGTERM)\n"
            "print('OWN CHILD', child.wait())\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({name!r})\n"
            "    print('ABSTRACT DONE')\n"
            "except OSError as e:\n"
            "    print('ABSTRACT REFUSED', e.errno)\n"
        )
        # The host's network (an operator's choice), whose abstract sockets are the host's.
        shared = Bubblewrap(SandboxSettings(network="host"))
        confined = await run(shared, workdir, python(code), kept=kept)
        assert "SIGNAL REFUSED 1" in confined and "ABSTRACT REFUSED 1" in confined, confined
        assert "OWN CHILD -15" in confined  # its own processes it still signals
        bare = Bubblewrap(SandboxSettings(network="host", landlock="off"))
        uncovered = await run(bare, workdir, python(code), kept=kept)
        assert "SIGNALLED" in uncovered and "ABSTRACT DONE" in uncovered, uncovered


@pytest.mark.parametrize("kept", [False, True], ids=["own", "kept"])
@pytest.mark.parametrize("abi", [2, 7], indirect=True)
async def test_ordinary_work_runs_under_the_layer(workdir: Path, abi: int, kept: bool) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    build = (
        "printf 'int main(void){return 7;}' > m.c && cc -o m m.c && { ./m || echo BUILT $?; }; "
        if compiler
        else ""
    )
    script = (
        "set -e; git init -q . && git config user.email a@b && git config user.name a; "
        "mkdir -p a b && echo one > a/f && git add -A && git commit -qm one; "
        "mv a/f b/f && ln b/f a/linked && ln -s ../b/f a/sym && git add -A && git commit -qm two; "
        ": > b/f && echo TRUNCATED; git log --oneline | wc -l; "
        'python3 -c \'import json, sqlite3; sqlite3.connect("db").execute("create table t(x)")\'; '
        "echo scratch > $TMPDIR/x && cat $TMPDIR/x && echo home > $HOME/h && ls / >/dev/null; "
        f"{build}echo DONE"
    )
    out = await run(open_sandbox(SandboxSettings()), workdir, script, kept=kept)
    assert "TRUNCATED\n2\nscratch\n" in out and out.endswith("DONE\n[exit 0]"), out
    if compiler:
        assert "BUILT 7" in out


def test_required_refuses_to_start_without_landlock(monkeypatch: pytest.MonkeyPatch) -> None:
    for missing, said in ((0, "no Landlock"), (1, "ABI 1")):
        monkeypatch.setattr(landlock, "kernel_abi", lambda missing=missing: missing)
        with pytest.raises(SandboxUnavailable, match=said) as refused:
            open_sandbox(SandboxSettings(landlock="required"))
        assert "AETHER_SANDBOX_LANDLOCK=required" in str(refused.value)


async def test_auto_runs_without_landlock_where_it_is_missing_and_says_so_once(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(landlock, "kernel_abi", lambda: 0)
    monkeypatch.setattr(bubblewrap, "_probed", {})  # as in a service that starts afresh
    with caplog.at_level(logging.WARNING, "aether.sandbox"):
        sandbox = open_sandbox(SandboxSettings())
        open_sandbox(SandboxSettings())
    assert isinstance(sandbox, Bubblewrap) and sandbox.landlock is None
    said = [r.getMessage() for r in caplog.records if "without the Landlock layer" in r.message]
    assert len(said) == 1 and "no Landlock" in said[0], said
    argv = sandbox.launch(Request(["true"], workdir, workdir, ENV)).argv
    assert landlock.CONFINE_SOURCE not in argv
    assert "[exit 0]" in await run(sandbox, workdir, "echo ok > f", kept=False)


def test_required_starts_where_the_kernel_has_it() -> None:
    sandbox = open_sandbox(SandboxSettings(landlock="required"))
    assert isinstance(sandbox, Bubblewrap) and sandbox.landlock == landlock.kernel_abi()


async def test_bubblewraps_own_process_cannot_be_read_or_written(workdir: Path) -> None:
    """In a sandbox of its own, PID 1 is bubblewrap's process, of the command's user and
    dumpable: without the layer a command writes its memory through ``/proc/1/mem`` (and
    could, as the namespace's reaper, outlive the sandbox's end); with it, the process is
    outside the command's domain."""
    code = (
        "import os\n"
        "try:\n"
        "    for line in open('/proc/1/maps'):\n"
        "        address, perms = line.split()[:2]\n"
        "        if perms.startswith('rw'):\n"
        "            start = int(address.split('-')[0], 16)\n"
        "            break\n"
        "    fd = os.open('/proc/1/mem', os.O_RDWR)\n"
        "    print('WROTE', os.pwrite(fd, os.pread(fd, 16, start), start))\n"
        "except OSError as e:\n"
        "    print('REFUSED', e.errno)\n"
    )
    confined = await run(open_sandbox(SandboxSettings()), workdir, python(code), kept=False)
    assert "REFUSED 13" in confined, confined
    bare = open_sandbox(SandboxSettings(landlock="off"))
    assert "WROTE 16" in await run(bare, workdir, python(code), kept=False)


# A process's view of PID 1 by ptrace and process_vm_readv: what a debugger would need.
OUTSIDE = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def said(result):
    return "ok" if result >= 0 else os.strerror(ctypes.get_errno())
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buffer = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buffer, ctypes.c_void_p), 8)
remote = iovec(0x400000, 8)
print("SEIZE", said(libc.ptrace(0x4206, 1, None, None)))
print("ATTACH", said(libc.ptrace(16, 1, None, None)))
print("VM_READ", said(libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)))
try:
    open("/proc/1/environ", "rb").read()
    print("ENVIRON ok")
except OSError as e:
    print("ENVIRON", e.strerror)
"""


@pytest.mark.parametrize("kept", [False, True], ids=["own", "kept"])
async def test_a_command_traces_its_own_processes_and_nothing_else(
    workdir: Path, kept: bool
) -> None:
    sandbox = open_sandbox(SandboxSettings())
    assert isinstance(sandbox, Bubblewrap) and sandbox.tracing
    (workdir / "outside.py").write_text(OUTSIDE)
    out = await run(sandbox, workdir, "python3 outside.py", kept=kept)
    # bubblewrap's process (own) or the init (kept): outside the command's domain.
    for line in ("SEIZE Operation not permitted", "ATTACH Operation not permitted"):
        assert line in out, out
    assert "VM_READ Operation not permitted" in out and "ENVIRON Permission denied" in out
    tools = [name for name in ("strace", "gdb") if shutil.which(name)]
    if "strace" in tools:
        script = (
            "strace -f -e trace=openat -o trace.txt python3 -c 'open(\"/etc/hostname\")' "
            "&& grep -c /etc/hostname trace.txt"
        )
        out = await run(sandbox, workdir, script, kept=kept)
        assert out.endswith("1\n[exit 0]"), out
    if "gdb" in tools:
        script = "gdb -batch -ex run --args python3 -c 'import os; os.abort()' 2>&1"
        out = await run(sandbox, workdir, script, kept=kept)
        assert "received signal SIGABRT" in out, out
    # Without a debugger installed: a child of its own, read and traced in Python.
    code = (
        "import ctypes, os, signal\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.pause()\n"
        "print('ATTACH CHILD', libc.ptrace(0x4206, pid, None, None), ctypes.get_errno())\n"
        "os.kill(pid, signal.SIGKILL)\n"
        "os.waitpid(pid, 0)\n"
    )
    assert "ATTACH CHILD 0 0" in await run(sandbox, workdir, python(code), kept=kept)


async def test_without_the_layer_tracing_stays_denied(workdir: Path) -> None:
    sandbox = open_sandbox(SandboxSettings(landlock="off"))
    assert isinstance(sandbox, Bubblewrap) and not sandbox.tracing
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if libc.ptrace(0, 0, None, None) == 0 else ctypes.get_errno())\n"
        "print('TRACEME', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    assert "TRACEME 1\n" in await run(sandbox, workdir, python(code), kept=True)


async def test_a_command_that_makes_the_init_its_tracer_goes_on(workdir: Path) -> None:
    """``PTRACE_TRACEME`` in a command's first process makes the kept sandbox's init its
    tracer: stopped at its next exec, it would wait for a debugger there is not. The
    init lets it go on, and the sandbox runs the next command."""
    sandbox = open_sandbox(SandboxSettings())
    assert isinstance(sandbox, Bubblewrap) and sandbox.tracing
    code = (
        "import ctypes, os\n"
        "print('TRACEME', ctypes.CDLL(None).ptrace(0, 0, None, None), flush=True)\n"
        "os.execvp('echo', ['echo', 'after exec'])\n"
    )
    warm = WarmSandbox(sandbox)
    try:
        request = Request(["python3", "-c", code], workdir, workdir, ENV, limits=LIMITS)
        outcome = await warm.execute(request, 4000)
        assert outcome.exit_code == 0 and outcome.seconds < 30, outcome
        assert outcome.output == "TRACEME 0\nafter exec\n"
        again = await warm.execute(Request(["true"], workdir, workdir, ENV), 4000)
        assert again.exit_code == 0 and warm.started == 1
    finally:
        warm.close()
