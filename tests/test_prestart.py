"""Services forked from the prestarter are what ``python -m <module>`` would have started:
their own environment, directory, session and descriptors, their exit reported."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from aether.prestart import (
    CHANNEL_ENV,
    SHARED_ENV,
    Forked,
    Prestarter,
    PrestartError,
    SharedPrestarter,
    exited_children_cpu,
    joined_or_own,
    shared,
)
from aether_runtime.settings import EXIT_CONFIG

CHILD = """\
import atexit, json, os, sys, threading, time

def report():
    print(json.dumps({
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "name": __name__,
        "own_session": os.getsid(0) == os.getpid(),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "stdin": os.readlink("/proc/self/fd/0"),
        "comm": open("/proc/self/comm").read().strip(),
        "ppid": os.getppid(),
    }))

report()
print("to stderr", file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
# A thread that is not a daemon: the interpreter waits for it before exiting.
threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined"))).start()
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


@pytest.fixture
def prestarter(tmp_path: Path) -> Iterator[Prestarter]:
    (tmp_path / "child_module.py").write_text(CHILD)
    (tmp_path / "failing_module.py").write_text("raise ValueError('broken at import')\n")
    (tmp_path / "waiting_module.py").write_text("import time\ntime.sleep(600)\n")
    (tmp_path / "spinning_module.py").write_text(
        "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end:\n    pass\n"
    )
    # Preloading a small module keeps the fixture quick; Stack's preloads the services.
    started = Prestarter(preload=("json",))
    yield started
    for child in started.running():  # what a failed test left behind
        child.kill()
    started.close()


def run(prestarter: Prestarter, module: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    child = prestarter.spawn(module, env, str(cwd))
    assert child.stdout is not None
    output = child.stdout.read().decode()
    return child.wait(30), output


def test_a_child_runs_its_module_as_main_with_exactly_its_own_environment(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    code, output = run(prestarter, "child_module", tmp_path, {"ONLY": "this", "EXIT_CODE": "3"})

    assert code == 3
    seen = json.loads(output.splitlines()[0])
    # Nothing of the prestarter's environment or of the test's.
    assert seen["env"] == {"ONLY": "this", "EXIT_CODE": "3"}
    assert seen["cwd"] == str(tmp_path)
    assert seen["name"] == "__main__"
    assert seen["argv"] == [str(tmp_path / "child_module.py")]
    assert seen["own_session"]
    # Only stdin, stdout and stderr (and the descriptor listing itself): nothing of the
    # prestarter's channel or of another child's output.
    assert seen["fds"] == [0, 1, 2, 3]
    assert seen["stdin"] == os.devnull
    assert seen["comm"] == "child_module"
    # stderr goes where stdout does; the interpreter exits the usual way.
    assert "to stderr" in output
    assert "thread joined" in output
    assert "atexit ran" in output


def test_a_child_given_an_output_writes_there_and_nothing_is_left_open_here(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    log = tmp_path / "child.log"
    log.write_bytes(b"an earlier run\n")
    before = sorted(os.listdir("/proc/self/fd"))
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    child = prestarter.spawn("child_module", {"EXIT_CODE": "0"}, str(tmp_path), output=fd)
    os.close(fd)
    assert child.stdout is None
    assert child.wait(30) == 0
    # Appended, stdout and stderr both, after what the file held.
    text = log.read_text()
    assert text.startswith("an earlier run\n")
    seen = json.loads(text.splitlines()[1])
    assert seen["fds"] == [0, 1, 2, 3]
    assert "to stderr" in text and "atexit ran" in text
    # The caller's descriptor was its own to close; spawn left no other behind.
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_the_prestarter_itself_holds_nothing_of_the_starting_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AETHER_ADMIN_TOKEN", "not for the prestarter")
    started = Prestarter(preload=("json",))
    try:
        environ = Path(f"/proc/{started.process.pid}/environ").read_bytes()
    finally:
        started.close()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert names <= {CHANNEL_ENV, "PYTHONUNBUFFERED", "LC_CTYPE"}


def test_a_module_that_fails_exits_with_its_traceback(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    code, output = run(prestarter, "failing_module", tmp_path, {})
    assert code == 1
    assert "ValueError: broken at import" in output

    code, output = run(prestarter, "no_such_module", tmp_path, {})
    assert code == 1
    assert "No module named no_such_module" in output


def test_a_killed_child_reports_its_signal_and_can_be_waited_for_with_a_timeout(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    child = prestarter.spawn("waiting_module", {}, str(tmp_path))
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.3)
    assert child.poll() is None

    os.killpg(child.pid, signal.SIGKILL)

    assert child.wait(30) == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL
    child.kill()  # a no-op once it has ended, as Popen's is


def test_children_started_together_from_threads_each_get_their_own_process_and_output(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    results: dict[int, tuple[Forked, str]] = {}

    def start(number: int) -> None:
        child = prestarter.spawn("child_module", {"N": str(number)}, str(tmp_path))
        assert child.stdout is not None
        results[number] = (child, child.stdout.read().decode())

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(results) == list(range(8))
    assert len({child.pid for child, _ in results.values()}) == 8
    for number, (child, output) in results.items():
        assert child.wait(30) == 0
        assert json.loads(output.splitlines()[0])["env"] == {"N": str(number)}


def test_closing_leaves_the_children_running_and_the_prestarter_waits_for_them(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    child = prestarter.spawn("waiting_module", {}, str(tmp_path))
    prestarter.close()

    # Still reaping its child, the prestarter has not exited, and the child runs on.
    with pytest.raises(subprocess.TimeoutExpired):
        prestarter.process.wait(0.5)
    os.kill(child.pid, 0)

    os.killpg(child.pid, signal.SIGKILL)
    assert prestarter.process.wait(30) == 0
    # Its exit is still known here, the prestarter being gone.
    assert child.wait(30) in (-signal.SIGKILL, -1)


def test_the_cpu_of_an_exited_child_is_counted_here(prestarter: Prestarter, tmp_path: Path) -> None:
    before = exited_children_cpu()
    code, _ = run(prestarter, "spinning_module", tmp_path, {})
    assert code == 0
    assert exited_children_cpu() - before >= 0.35


def test_a_service_preloaded_by_its_entry_module_runs_that_module_afresh_and_quietly(
    tmp_path: Path,
) -> None:
    started = Prestarter(preload=("aether_scheduler.__main__",))
    try:
        code, output = run(started, "aether_scheduler", tmp_path, {"PORT": "not-a-port"})
    finally:
        started.close()
    # Its own settings were read (from its own environment: refused, with the status of
    # a bad setting), and runpy had nothing to warn about (the entry module was not left
    # imported under its own name).
    assert code == EXIT_CONFIG
    assert "PORT='not-a-port' is not valid" in output
    assert "RuntimeWarning" not in output


def test_a_preloaded_gateway_has_its_routes_built_before_the_fork(tmp_path: Path) -> None:
    # The entry module's ``prestart()`` ran in the prestarter: the child finds the routes
    # already built (a cache hit), not building them at its start.
    (tmp_path / "routes_child.py").write_text(
        "from aether_gateway import app\n"
        "before = app.shared_routes.cache_info()\n"
        "app.shared_routes()\n"
        "print(before.currsize, app.shared_routes.cache_info().misses)\n"
    )
    started = Prestarter(preload=("aether_gateway.__main__",))
    try:
        code, output = run(started, "routes_child", tmp_path, {})
    finally:
        started.close()
    assert code == 0, output
    assert output.split() == ["1", "1"]  # built once, in the prestarter


def test_what_the_prestarter_itself_writes_goes_to_its_log_not_to_our_output(
    tmp_path: Path,
) -> None:
    (tmp_path / "child_module.py").write_text(CHILD)
    log = tmp_path / "prestart.log"
    started = Prestarter(preload=("json", "no_such_module_to_preload"), log=log)
    try:
        # A child answered means the preloading is over.
        code, _ = run(started, "child_module", tmp_path, {})
        outputs = {os.readlink(f"/proc/{started.process.pid}/fd/{fd}") for fd in (1, 2)}
    finally:
        started.close()
    assert code == 0
    assert outputs == {str(log)}
    assert "could not preload no_such_module_to_preload" in log.read_text()


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of process ``pid`` holds ``needle``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            span, permissions = line.split()[:2]
            if not permissions.startswith("r"):
                continue
            start, end = (int(part, 16) for part in span.split("-"))
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


def test_a_services_credentials_never_pass_through_the_prestarter(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    secret = "gateway-password-" + os.urandom(8).hex()
    code, output = run(prestarter, "child_module", tmp_path, {"DATABASE_PASSWORD": secret})
    assert code == 0
    assert json.loads(output.splitlines()[0])["env"] == {"DATABASE_PASSWORD": secret}
    # Nothing of it in the prestarter, whose memory every later child starts from.
    assert not memory_holds(prestarter.process.pid, secret.encode())
    # The search does find what is there: the prestarter's own command line.
    assert memory_holds(prestarter.process.pid, b"aether.prestart")


def test_a_child_can_be_signalled_by_its_group_as_soon_as_it_is_started(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    """As after ``Popen(start_new_session=True)``: the session exists when the pid is
    handed back (a stack kills a service's group; one killed right after its start once
    raised "no such process" and was left running, untracked)."""
    for _ in range(20):
        child = prestarter.spawn("waiting_module", {}, str(tmp_path))
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL


def test_a_child_whose_prestarter_died_is_still_waited_for(
    prestarter: Prestarter, tmp_path: Path
) -> None:
    child = prestarter.spawn("waiting_module", {}, str(tmp_path))
    prestarter.process.kill()
    prestarter.process.wait(30)
    assert child.poll() is None  # still running, now nobody's child here

    os.kill(child.pid, signal.SIGKILL)

    # Its status died with the prestarter; its end is still seen.
    assert child.wait(30) in (-signal.SIGKILL, -1)
    # And the next spawn says the prestarter is gone rather than hang.
    with pytest.raises(PrestartError):
        prestarter.spawn("child_module", {}, str(tmp_path))


# --- a prestarter shared by several processes ---------------------------------------------


def loaded(pid: int, library: str) -> bool:
    """Whether process ``pid`` has mapped a shared library named ``library``."""
    return library in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def shared_prestarter(tmp_path: Path) -> Iterator[SharedPrestarter]:
    (tmp_path / "child_module.py").write_text(CHILD)
    (tmp_path / "waiting_module.py").write_text("import time\ntime.sleep(600)\n")
    # ``decimal`` maps its C library when imported: what shows that the preload happened.
    started = SharedPrestarter(tmp_path / "socket", preload=("decimal",))
    yield started
    started.close()


def test_each_process_joining_a_shared_prestarter_gets_its_own_forked_with_the_imports(
    shared_prestarter: SharedPrestarter, tmp_path: Path
) -> None:
    # Nothing imported until a process asks: a run that starts no service pays nothing.
    assert not loaded(shared_prestarter.process.pid, "_decimal")

    first = Prestarter.joining(shared_prestarter.path)
    second = Prestarter.joining(shared_prestarter.path)
    try:
        code_a, output_a = run(first, "child_module", tmp_path, {"N": "a", "EXIT_CODE": "4"})
        code_b, output_b = run(second, "child_module", tmp_path, {"N": "b"})
        # Each its own environment, exit status and output, as from a prestarter of its own.
        assert (code_a, code_b) == (4, 0)
        seen_a, seen_b = (json.loads(out.splitlines()[0]) for out in (output_a, output_b))
        assert (seen_a["env"], seen_b["env"]) == ({"N": "a", "EXIT_CODE": "4"}, {"N": "b"})
        assert seen_a["fds"] == seen_b["fds"] == [0, 1, 2, 3]
        assert seen_a["own_session"] and seen_b["own_session"]
        # Forked by two prestarters, both forked by the shared one after its imports.
        assert seen_a["ppid"] != seen_b["ppid"]
        for joined in (seen_a["ppid"], seen_b["ppid"]):
            assert psutil.Process(joined).ppid() == shared_prestarter.process.pid
            assert loaded(joined, "_decimal")
        assert loaded(shared_prestarter.process.pid, "_decimal")
    finally:
        first.close()
        second.close()


def test_a_shared_prestarter_exits_when_closed_once_its_prestarters_are_done(
    shared_prestarter: SharedPrestarter, tmp_path: Path
) -> None:
    joined = Prestarter.joining(shared_prestarter.path)
    child = joined.spawn("waiting_module", {}, str(tmp_path))
    shared_prestarter.close()

    assert not shared_prestarter.path.exists()
    with pytest.raises(FileNotFoundError):
        Prestarter.joining(shared_prestarter.path)
    # The process that joined keeps its prestarter and its child until it is done.
    with pytest.raises(subprocess.TimeoutExpired):
        shared_prestarter.process.wait(0.5)
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    joined.close()
    assert shared_prestarter.process.wait(30) == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_a_shared_prestarter_serves_no_other_user() -> None:
    # Where the other user may reach the socket (pytest's directories are private to
    # their owner): only the shared prestarter's own check refuses.
    reachable = Path(tempfile.mkdtemp(dir="/tmp"))
    reachable.chmod(0o755)
    started = SharedPrestarter(reachable / "socket", preload=("json",))
    started.path.chmod(0o777)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # another user asks for a child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            channel.connect(str(started.path))
            try:
                channel.sendall(b'{"id": 1, "module": "json", "cwd": "/"}')
                answered = channel.recv(4096) != b""
            except (ConnectionResetError, BrokenPipeError):
                # Closed with the request unread, or before it was sent: the refusal
                # may come first.
                answered = False
            os.write(write, b"answered" if answered else b"closed")
            code = 0
        except BaseException as error:  # told to the parent: the child's stderr is lost
            os.write(write, repr(error).encode())
        finally:
            os._exit(code)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as answer:
            told = answer.read()
        _, status = os.waitpid(pid, 0)
    finally:
        started.close()
        reachable.rmdir()
    assert os.waitstatus_to_exitcode(status) == 0, told
    assert told == b"closed"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to listen as another user")
def test_joining_refuses_a_prestarter_that_runs_as_another_user(tmp_path: Path) -> None:
    # A socket listened on by another user's process: its children would run that
    # user's code with this user's services' environment.
    path = tmp_path / "socket"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user: the peer's credentials are the listener's at listen()
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            listener.listen(1)
            os.write(go, b"listening")
            connection, _ = listener.accept()
            connection.recv(4096)  # until the joining side closes
            code = 0
        finally:
            os._exit(code)
    os.close(go)
    listener.close()
    try:
        assert os.read(ready, 64) == b"listening"
        with pytest.raises(PermissionError, match="another user"):
            Prestarter.joining(path)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(ready)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_shared_joins_the_prestarter_the_environment_names_or_starts_its_own(
    shared_prestarter: SharedPrestarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aether.prestart as module

    monkeypatch.setattr(module, "_shared", None)
    monkeypatch.setenv(SHARED_ENV, str(shared_prestarter.path))
    joined = shared()
    assert joined.process is None  # forked by the shared one, not started here
    joined.close()

    # Nothing answering there: one of its own (preloading little, to keep this quick).
    own = joined_or_own(str(shared_prestarter.path.with_name("nothing-here")), ("json",))
    assert own.process is not None
    own.close()


def test_a_child_exports_only_its_own_services_metrics(tmp_path: Path) -> None:
    # Every service's code is preloaded, and with it every service's metrics: a child
    # keeps its own and the libraries' (the runtime's), not the others' at zero.
    (tmp_path / "metrics_child.py").write_text(
        "from prometheus_client import REGISTRY, generate_latest\n"
        "print(generate_latest(REGISTRY).decode())\n"
    )
    started = Prestarter(preload=("aether_git_broker.__main__", "aether_gateway.__main__"))
    try:
        code, output = run(started, "metrics_child", tmp_path, {})
    finally:
        started.close()
    assert code == 0, output
    # Not a service: neither service's series, the runtime's all the same.
    assert "aether_merges_total" not in output
    assert "aether_http_requests_total" not in output
    assert "aether_service_ready" in output or "aether_events_handled_total" in output


def test_a_service_keeps_its_own_metrics_and_drops_the_others() -> None:
    script = (
        "import aether_git_broker.__main__, aether_gateway.__main__\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "from aether.prestart import drop_other_services_metrics\n"
        "drop_other_services_metrics('aether_gateway')\n"
        "text = generate_latest(REGISTRY).decode()\n"
        "print('aether_http_request_duration_seconds' in text, 'aether_merges_total' in text)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.stdout.split() == ["True", "False"], ran.stderr
