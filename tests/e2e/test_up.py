"""``aether up``/``down``/``status``/``logs`` and the command line, run as a newcomer runs
them: real processes, real ports, real signals.

- a port already taken, or a home already running a stack, is a one-line error and a
  non-zero exit, and starts nothing;
- ``down`` stops everything ``up`` started; SIGHUP (a closed terminal) and SIGKILL of
  ``up`` leave no child behind, PostgreSQL and NATS included;
- the command line finds the stack of the home it is given, and without a gateway
  prints one line and exits non-zero;
- ``submit`` checks the repository locally: a non-repository or a missing branch is
  refused before anything is sent, the base defaults to the repository's own branch
  (``master`` here), and uncommitted changes are named.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether.gitview import create_sample_repository
from aether.infra import free_port_run
from aether.prestart import SHARED_ENV
from aether.supervise import ready_pid

pytestmark = pytest.mark.e2e

AETHER = [sys.executable, "-m", "aether.cli"]


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHER_", "ANTHROPIC_"))}
    env.pop("DATABASE_URL", None)
    env.pop("NATS_URL", None)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # where up records the latest home
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(
    tmp_path: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``aether <args>`` as a newcomer runs it; ``env``: the operator's own settings
    (``env_for`` leaves out the test run's ``AETHER_*``)."""
    return subprocess.run(
        [*AETHER, *args],
        env={**env_for(tmp_path), **(env or {})},
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Up:
    """``aether up`` running in the background, its output collected line by line.

    Its services are forked from the test run's shared prestarter when there is one
    (``aether.prestart``: the services' imports done once for the run rather than again
    by each ``up``, about 4 s of CPU a stack); ``aether demo``'s test and the installed
    tool's start a prestarter of their own, as a newcomer's first start does."""

    def __init__(
        self, tmp_path: Path, home: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.lines: list[str] = []
        self._seen = threading.Condition()
        # The operator's own settings (``env_for`` leaves out the test run's ``AETHER_*``).
        env = {**env_for(tmp_path), **(env or {})}
        if SHARED_ENV in os.environ:
            env[SHARED_ENV] = os.environ[SHARED_ENV]
        self.process = subprocess.Popen(
            [*AETHER, "up", "--home", str(home), *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = 240.0) -> None:
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(text in line for line in self.lines) or self.process.poll() is not None,
                timeout,
            )
        output = "\n".join(self.lines)
        assert found and text in output, f"{text!r} not shown; output:\n{output}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def recorded(self) -> dict[str, dict[str, object]]:
        state = json.loads((self.home / "stack.json").read_text())
        processes: dict[str, dict[str, object]] = state["processes"]
        return processes

    def wait_until_recorded(self, count: int, timeout: float = 120.0) -> list[int]:
        """The pids in ``stack.json`` once it lists ``count`` processes; checked every
        20 ms, since ``aether up`` records each process as it spawns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
                processes = self.recorded()
                if len(processes) >= count:
                    return [int(str(record["pid"])) for record in processes.values()]
            assert self.process.poll() is None, self.output
            time.sleep(0.02)
        raise AssertionError(f"stack.json never listed {count} processes; output:\n{self.output}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(90)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Up]:
    # Not under tmp_path: the embedded PostgreSQL runs as its own user when the tests run
    # as root, and pytest's base directory is private to its owner.
    home = Path(tempfile.mkdtemp(prefix="aether-up-test-"))
    up = Up(tmp_path, home, "--port-base", "0")
    try:
        up.wait_for("Aether is up.")
        yield up
    finally:
        up.stop()
        shutil.rmtree(home, ignore_errors=True)


def survivors(pids: list[int], timeout: float = 60.0) -> list[int]:
    """The processes of ``pids`` still running once they had ``timeout`` s to go."""
    deadline = time.monotonic() + timeout
    while True:
        living = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    living.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not living or time.monotonic() > deadline:
            return living
        time.sleep(0.05)


def recorded_pids(up: Up) -> list[int]:
    pids = [int(str(record["pid"])) for record in up.recorded().values()]
    assert len(pids) == 7, up.recorded()  # NATS, PostgreSQL and the five services
    return pids


def test_up_refuses_a_port_already_taken_and_starts_nothing(tmp_path: Path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run(tmp_path, "up", "--home", str(tmp_path / "home"), "--port-base", str(port))
    assert result.returncode == 1
    assert f"port {port} (gateway) is in use" in result.stderr
    assert "--port-base" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Aether is up" not in result.stdout
    assert not (tmp_path / "home" / "stack.json").exists()


def test_the_cli_without_a_gateway_prints_one_line_and_fails(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = run(tmp_path, "mission", "list", "--url", url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach the gateway at {url} (from --url)")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the error and what to do


def test_submit_refuses_what_is_not_a_repository_before_sending(tmp_path: Path):
    unreachable = "http://127.0.0.1:9"  # were anything sent, the error would be this one
    plain = tmp_path / "plain"
    plain.mkdir()
    result = run(tmp_path, "mission", "submit", "do it", "--repo", str(plain), "--url", unreachable)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {plain} is not a git repository " + (
        "(run `git init` and commit there first)"
    )
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    result = run(
        tmp_path,
        "mission",
        "submit",
        "x",
        "--repo",
        str(repo),
        "--base",
        "dev",
        "--url",
        unreachable,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {repo} has no branch 'dev' (it has: main)"


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGKILL])
def test_no_child_outlives_up(started: Up, signum: int):
    pids = recorded_pids(started)
    started.process.send_signal(signum)
    started.process.wait(90)
    assert survivors(pids) == []
    if signum == signal.SIGHUP:
        assert started.process.returncode == 0
        assert "stopped." in started.output


def test_a_service_that_exits_is_started_again(started: Up):
    """A service that ends however it ends (a crash, a kill, its watchdog's exit on a
    stuck event loop) is started again, and ``up`` says so; the new process is the one
    recorded and answering."""
    before = started.recorded()["agent-runner"]
    os.kill(int(str(before["pid"])), signal.SIGKILL)
    started.wait_for("! agent-runner exited with code -9")
    started.wait_for("restarting it in 1s (restart 1)")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        after = started.recorded()["agent-runner"]
        if after["pid"] != before["pid"] and after.get("restarts") == 1:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"never recorded again; output:\n{started.output}")
    url = f"http://127.0.0.1:{after['port']}"
    while time.monotonic() < deadline:
        if ready_pid(url) == (200, after["pid"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the new process never answered; output:\n{started.output}")
    assert started.process.poll() is None


def test_a_nats_server_that_dies_is_started_again_and_missions_go_on(started: Up, tmp_path: Path):
    """The embedded nats-server killed with SIGKILL: ``up`` says so, starts it again on
    the same port and store, and a mission submitted afterwards completes with no step
    of the person's (no ``down`` and ``up``): every service reconnected on its own."""
    before = started.recorded()["nats"]
    os.kill(int(str(before["pid"])), signal.SIGKILL)
    started.wait_for("! nats-server exited with code -9")
    started.wait_for("nats-server started again on port")
    after = started.recorded()["nats"]
    assert after["pid"] != before["pid"] and after["port"] == before["port"]
    assert after["restarts"] == 1

    repo = tmp_path / "project"
    create_sample_repository(repo)
    complete_a_mission(started, tmp_path, repo, "src/greeting.py")
    status = run(tmp_path, "status", "--home", str(started.home))
    assert status.returncode == 0, status.stdout
    assert started.process.poll() is None


def complete_a_mission(started: Up, tmp_path: Path, repo: Path, path: str) -> str:
    """Submit a mission adding ``path`` to ``repo`` and wait until it completes; its id."""
    submitted = run(
        tmp_path,
        "mission",
        "submit",
        f"- Add {path} with a greet(name) function that returns a greeting",
        "--repo",
        str(repo),
        "--auto-approve",
    )
    assert submitted.returncode == 0, submitted.stderr + started.output
    mission_id = submitted.stdout.strip()
    deadline = time.monotonic() + 180
    mission: dict[str, object] = {}
    while time.monotonic() < deadline:
        shown = run(tmp_path, "mission", "show", mission_id, "--json")
        mission = json.loads(shown.stdout) if shown.returncode == 0 else {}
        if mission.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert mission.get("status") == "completed", f"{mission}\n{started.output}"
    return mission_id


def readiness_until(url: str, pid: int, status: int, up: Up, timeout: float = 120.0) -> None:
    """Ask the gateway at ``url`` (process ``pid``) for its readiness every 50 ms until it
    answers ``status``."""
    deadline = time.monotonic() + timeout
    answer = None
    while time.monotonic() < deadline:
        answer = ready_pid(url)
        if answer == (status, pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status} (last: {answer}); output:\n{up.output}")


def test_a_postgresql_that_dies_is_started_again_and_nothing_is_lost(started: Up, tmp_path: Path):
    """The embedded PostgreSQL's postmaster killed with SIGKILL: ``up`` says so and starts
    it again on the same data directory, socket and port; the gateway (not restarted) is
    unready while the database is gone and ready again once it is back; a mission
    submitted afterwards completes and the list shows it with the earlier one. ``down``
    then stops the server started again, and nothing starts it once more."""
    repo = tmp_path / "project"
    create_sample_repository(repo)
    earlier = complete_a_mission(started, tmp_path, repo, "src/greeting.py")

    data = started.home / "postgres"
    listed_before = (data / "postmaster.pid").read_text().splitlines()
    before = started.recorded()["postgres"]
    gateway = started.recorded()["gateway"]
    url, gateway_pid = f"http://127.0.0.1:{gateway['port']}", int(str(gateway["pid"]))
    readiness_until(url, gateway_pid, 200, started)
    os.kill(int(str(before["pid"])), signal.SIGKILL)
    readiness_until(url, gateway_pid, 503, started)  # the database is gone
    started.wait_for("! PostgreSQL exited with code -9", timeout=60)
    started.wait_for("PostgreSQL started again", timeout=60)
    after = started.recorded()["postgres"]
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    listed_after = (data / "postmaster.pid").read_text().splitlines()
    assert listed_after[3:5] == listed_before[3:5]  # the same port and socket directory
    readiness_until(url, gateway_pid, 200, started)  # the same gateway, reconnected

    later = complete_a_mission(started, tmp_path, repo, "src/farewell.py")
    listed = run(tmp_path, "mission", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = {mission["id"] for mission in json.loads(listed.stdout)["missions"]}
    assert {earlier, later} <= ids, listed.stdout
    status = run(tmp_path, "status", "--home", str(started.home))
    assert status.returncode == 0, status.stdout

    down = run(tmp_path, "down", "--home", str(started.home))
    assert down.returncode == 0, down.stdout + down.stderr
    started.process.wait(90)
    assert survivors([int(str(after["pid"]))]) == []
    assert started.output.count("! PostgreSQL") == 1, started.output
    assert "stopped." in started.output


def test_a_postgresql_that_hangs_is_killed_and_started_again(started: Up, tmp_path: Path):
    """The embedded PostgreSQL's postmaster stopped with SIGSTOP runs (``waitpid`` sees
    nothing) and answers no new connection: ``up``'s probe finds its queries unanswered,
    kills it and starts it again on the same data directory, socket and port, and the
    same gateway serves reads of what it stored before, within a bounded time."""
    data = started.home / "postgres"
    listed_before = (data / "postmaster.pid").read_text().splitlines()
    before = started.recorded()["postgres"]
    gateway = started.recorded()["gateway"]
    url, gateway_pid = f"http://127.0.0.1:{gateway['port']}", int(str(gateway["pid"]))
    readiness_until(url, gateway_pid, 200, started)
    home = str(started.home)
    made = run(tmp_path, "tokens", "create", "kept-across", "--scope", "read", "--home", home)
    assert made.returncode == 0, made.stderr
    stopped = int(str(before["pid"]))
    began = time.monotonic()
    os.kill(stopped, signal.SIGSTOP)
    try:
        started.wait_for(
            f"! PostgreSQL (pid {stopped}) answered none of its last 3 queries", timeout=90
        )
        started.wait_for("PostgreSQL started again", timeout=60)
        readiness_until(url, gateway_pid, 200, started, timeout=60)
        took = time.monotonic() - began
        print(f"a stopped postmaster replaced, the gateway ready again, in {took:.1f}s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)
    after = started.recorded()["postgres"]
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    assert survivors([stopped]) == []
    listed_after = (data / "postmaster.pid").read_text().splitlines()
    assert listed_after[3:5] == listed_before[3:5]  # the same port and socket directory
    tokens = run(tmp_path, "tokens", "list", "--json", "--home", home)
    assert tokens.returncode == 0, tokens.stderr + started.output
    assert "kept-across" in tokens.stdout
    assert started.process.poll() is None


class Screen:
    """A command run in a pseudo-terminal, as a person at a terminal runs it."""

    def __init__(self, tmp_path: Path, *args: str, cwd: Path) -> None:
        import pty

        master, slave = pty.openpty()
        env = {**env_for(tmp_path), "COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
        self.process = subprocess.Popen(
            [*AETHER, *args], env=env, cwd=cwd, stdin=slave, stdout=slave, stderr=slave
        )
        os.close(slave)
        self._master = master
        self.text = ""
        self.closed = False
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # the other side closed
                chunk = b""
            with self._seen:
                if not chunk:
                    self.closed = True
                    self._seen.notify_all()
                    return
                self.text += chunk.decode("utf-8", errors="replace")
                self._seen.notify_all()

    def latest(self) -> str:
        """What the screen shows now: the text after the last clear."""
        return self.text.rsplit("\x1b[2J", 1)[-1]

    def final(self, timeout: float = 60.0) -> str:
        """The screen once the command has exited and all it wrote has been read."""
        with self._seen:
            done = self._seen.wait_for(lambda: self.closed, timeout)
        assert done, f"the command's output never ended; the screen:\n{self.latest()}"
        return self.latest()

    def wait_for(self, text: str, timeout: float = 180.0) -> str:
        with self._seen:
            found = self._seen.wait_for(lambda: text in self.latest(), timeout)
        assert found, f"{text!r} never shown; the screen:\n{self.latest()}"
        return self.latest()


def test_a_service_that_hangs_is_killed_and_started_again(started: Up, tmp_path: Path):
    """The scheduler stopped with SIGSTOP runs (``waitpid`` sees nothing) and answers no
    ``/healthz``, as one whose event loop is stuck in C code holding the interpreter's
    lock (which its own watchdog cannot end): ``up``'s probe finds its health checks
    unanswered, kills it and starts it again on the same port, and a mission submitted
    afterwards completes."""
    before = started.recorded()["scheduler"]
    stopped, port = int(str(before["pid"])), before["port"]
    url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    os.kill(stopped, signal.SIGSTOP)
    try:
        started.wait_for(
            f"! scheduler (pid {stopped}) answered none of its last 6 health checks", timeout=120
        )
        started.wait_for("restarting it in 1s (restart 1)", timeout=10)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = started.recorded()["scheduler"]
            if after["pid"] != before["pid"] and ready_pid(url) == (200, after["pid"]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no new scheduler answered; output:\n{started.output}")
        print(f"a stopped scheduler replaced and ready in {time.monotonic() - began:.1f}s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)
    assert after["port"] == port and after["restarts"] == 1
    assert survivors([stopped]) == []
    healthz = httpx.get(f"{url}/healthz", timeout=5)
    assert healthz.status_code == 200, healthz.text
    assert "exited with code" not in started.output  # one line, not two, for the kill

    repo = tmp_path / "project"
    create_sample_repository(repo)
    complete_a_mission(started, tmp_path, repo, "src/greeting.py")
    assert started.process.poll() is None


def free_port_base() -> int:
    """A port with the next four free too (the gateway's and the four other services'),
    below the kernel's ephemeral range (``free_port_run``): a port the kernel handed out
    and took back can become another worker's outgoing connection's before the stack
    binds it, which a CI run saw ("address already in use")."""
    return free_port_run(5)


def test_the_newcomer_path_in_a_terminal(tmp_path: Path):
    home = Path(tempfile.mkdtemp(prefix="aether-up-test-"))
    base = free_port_base()
    up = Up(tmp_path, home, "--port-base", str(base))
    try:
        up.wait_for("Aether is up.")
        assert f"gateway   http://127.0.0.1:{base}" in up.output
        assert "OFFLINE model" in up.output and "{" not in up.output  # no raw JSON logs
        # What it still waits for is never a step it has said is done.
        after_infrastructure = up.output.split("✓ NATS and PostgreSQL", 1)[1]
        assert "waiting for NATS" not in after_infrastructure, up.output

        repo = tmp_path / "project"
        create_sample_repository(repo)
        with Repo(str(repo)) as git:
            git.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(b"refs/heads/master"))
            git.refs[Ref(b"refs/heads/master")] = git.refs[Ref(b"refs/heads/main")]
            del git.refs[Ref(b"refs/heads/main")]
        screen = Screen(
            tmp_path,
            "mission",
            "submit",
            "- Add src/greeting.py with a greet(name) function that returns a greeting",
            "--repo",
            str(repo),
            "--watch",
            cwd=tmp_path,
        )
        shown = screen.wait_for("approve with `aether mission approve m-")
        assert "awaiting approval" in shown and "plan v1" in shown
        mission_id = shown.split("approve with `aether mission approve ", 1)[1].split("`")[0]

        approved = run(tmp_path, "mission", "approve", "@last")
        assert approved.returncode == 0, approved.stderr
        assert f"approved plan v1 of {mission_id}" in approved.stdout

        screen.wait_for("result branch:")
        assert screen.process.wait(60) == 0
        shown = screen.final()  # the review hints follow the result branch
        assert f"{mission_id}  completed" in shown
        assert "merged 1/1" in shown
        assert "src/greeting.py" in shown  # the diff stat
        assert f"git -C {repo} merge " in shown

        diff = run(tmp_path, "mission", "diff", mission_id[:8], "t1")
        assert diff.returncode == 0, diff.stderr
        assert "+++ b/src/greeting.py" in diff.stdout and "offline model" in diff.stdout
        shown = run(tmp_path, "mission", "show", "@last").stdout
        assert "    wave 1  t1" in shown and "      files   src/greeting.py" in shown

        # The agent's steps: its start, the tool calls with their files (progress is
        # sampled: at least the first), its end.
        logs = run(tmp_path, "mission", "logs", mission_id[:8], "t1", "-f")
        assert logs.returncode == 0, logs.stderr
        steps = logs.stdout.splitlines()
        assert "t1 a1  started" in steps[0] and "t1 a1  completed  commit" in steps[-1]
        assert any("_file" in s and "src/greeting.py" in s for s in steps[1:-1]), logs.stdout

        # Without a base branch (a file:// URL: nothing is checked or named by the CLI),
        # the git broker starts from the repository's default: master here, not main.
        second = Screen(
            tmp_path,
            "mission",
            "submit",
            "- Add docs/notes.md",
            "--repo",
            f"file://{repo}",
            "--watch",
            cwd=tmp_path,
        )
        second.wait_for("approve with `aether mission approve m-")
        shown = run(tmp_path, "mission", "show", "@last").stdout
        assert f"file://{repo} (master)" in shown, shown
        cancelled = run(tmp_path, "mission", "cancel", "@last")
        assert cancelled.returncode == 0, cancelled.stderr
        second.process.wait(60)

        # The same stack, as the person goes on with it (one stack for both: starting
        # one is seconds of CPU). It is found through its home and the latest up; a
        # second up on the home is refused and touches nothing; down stops it all.
        assert "token" in up.output
        pids = recorded_pids(up)
        status = run(tmp_path, "status", "--home", str(home))
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" ready ") == 5 and status.stdout.count(" running ") == 2
        again = run(tmp_path, "up", "--home", str(home), "--port-base", "0")
        assert again.returncode == 1
        assert f"a stack is already running on {home} (aether up pid {up.process.pid}" in (
            again.stderr
        )
        assert survivors(pids, timeout=0) == pids  # the refused second up touched nothing

        # Submitted from another directory with an uncommitted change: the CLI finds the
        # stack through the latest up, the base is the repository's master.
        (repo / "notes.txt").write_text("not committed\n")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        submitted = run(
            tmp_path, "mission", "submit", "Add a greeting", "--repo", str(repo), cwd=elsewhere
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "uncommitted change(s)" in submitted.stderr and "? notes.txt" in submitted.stderr
        third = submitted.stdout.strip()
        shown_last = run(tmp_path, "mission", "show", "@last", "--json", cwd=elsewhere)
        assert shown_last.returncode == 0, shown_last.stderr
        mission = json.loads(shown_last.stdout)
        assert (mission["id"], mission["base_branch"]) == (third, "master")
        prefix = run(tmp_path, "mission", "show", third[:6], "--json", cwd=elsewhere)
        assert json.loads(prefix.stdout)["id"] == third

        logs = run(tmp_path, "logs", "gateway", "-n", "5", "--home", str(home))
        assert logs.returncode == 0 and "gateway" in logs.stdout and "{" not in logs.stdout

        down = run(tmp_path, "down", "--home", str(home))
        assert down.returncode == 0, down.stderr
        assert f"stopped the stack on {home}" in down.stdout
        assert up.process.wait(60) == 0
        assert survivors(pids) == []
        assert run(tmp_path, "status", "--home", str(home)).returncode == 1
        offline = run(tmp_path, "mission", "list", cwd=elsewhere)
        assert offline.returncode == 1 and "cannot reach the gateway" in offline.stderr
    finally:
        up.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_installed_as_a_uv_tool_it_runs_the_stack_from_any_directory(tmp_path: Path):
    root = Path(__file__).resolve().parents[2]
    # Outside pytest's private directory: PostgreSQL runs as its own user under root.
    tools = Path(tempfile.mkdtemp(prefix="aether-tool-test-"))
    env = {**env_for(tmp_path), "UV_TOOL_DIR": str(tools), "UV_TOOL_BIN_DIR": str(tools / "bin")}
    # The tool's environment compiles only what its processes import, as they import it,
    # rather than all of every package at install (about 3 s of the test's CPU).
    env["UV_COMPILE_BYTECODE"] = "0"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    installed = subprocess.run(
        ["uv", "tool", "install", str(root)], env=env, capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr
    aether = tools / "bin" / "aether"
    home = Path(tempfile.mkdtemp(prefix="aether-up-test-"))
    up = subprocess.Popen(
        [str(aether), "up", "--home", str(home), "--port-base", "0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert up.stdout is not None
        output = ""
        for line in up.stdout:
            output += line
            if "Aether is up." in line or "error:" in line:
                break
        assert "Aether is up." in output, output
        status = subprocess.run(
            [str(aether), "status", "--home", str(home)], env=env, capture_output=True, text=True
        )
        assert status.returncode == 0 and status.stdout.count(" ready ") == 5, status.stdout
        down = subprocess.run(
            [str(aether), "down"], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert down.returncode == 0, down.stderr  # found the home through the latest up
        assert up.wait(60) == 0, output + up.stdout.read()
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(90)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tools, ignore_errors=True)


def test_sigterm_while_services_start_stops_everything(tmp_path: Path):
    home = Path(tempfile.mkdtemp(prefix="aether-up-test-"))
    up = Up(tmp_path, home, "--port-base", "0")
    try:
        up.wait_for("✓ NATS and PostgreSQL")
        # The services are spawned (recorded) but still importing: none can be ready yet.
        # ("waiting for …" is printed only every ten seconds off a terminal, so a fast start
        # never shows it.)
        pids = up.wait_until_recorded(7)  # NATS, PostgreSQL and the five starting services
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(120) == 0
        assert "Aether is up." not in up.output
        assert survivors(pids) == []
    finally:
        up.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_watch_without_a_gateway_says_so_and_keeps_retrying(tmp_path: Path):
    watcher = subprocess.Popen(
        [*AETHER, "mission", "watch", "m-0123456789abcdef", "--url", "http://127.0.0.1:9"],
        env=env_for(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stderr is not None
        first = watcher.stderr.readline()
        second = watcher.stderr.readline()  # it tried again, and said so again
        assert first.startswith("(cannot connect to the gateway at http://127.0.0.1:9 (")
        assert "retrying in 1s" in first and "retrying in 2s" in second
        assert watcher.poll() is None  # still trying
    finally:
        watcher.kill()
        watcher.wait()


def test_a_task_the_verification_refuses_is_told_as_such_with_what_to_run(
    started: Up, tmp_path: Path
):
    """A mission whose verification command fails: the feed says the merge was refused
    by it (not "conflict in" nothing), then, on stderr once the events stop, what to run
    about the escalated task; ``show`` says the same."""
    repo = tmp_path / "project"
    create_sample_repository(repo)
    home = ["--home", str(started.home)]
    submitted = run(
        tmp_path, *home, "mission", "submit", "--repo", str(repo), "--auto-approve",
        "--verify", "false", "- Add notes.txt",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    mission = submitted.stdout.strip()
    watcher = subprocess.Popen(
        [*AETHER, *home, "mission", "watch", mission, "--events"],
        env=env_for(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    retry = (
        f"task t1 is escalated: `aether mission retry {mission} t1` "
        f"(or `aether mission skip {mission} t1`)"
    )
    hints: list[str] = []
    told = threading.Event()

    def read_stderr() -> None:
        assert watcher.stderr is not None
        for line in watcher.stderr:
            hints.append(line.rstrip("\n"))
            if hints[-1] == f"» {retry}":
                told.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        assert told.wait(120), hints
    finally:
        watcher.kill()
        out, _ = watcher.communicate()
    refused = [line for line in out.splitlines() if "merge_conflicted" in line]
    assert refused and all("not merged: verification failed: `false`" in r for r in refused), out
    shown = run(tmp_path, *home, "mission", "show", mission)
    assert f"  next         {retry}" in shown.stdout.splitlines(), shown.stdout
    # Every task's steps: each "completed" attempt is followed by why it was not merged.
    steps = run(tmp_path, *home, "mission", "logs", mission).stdout.splitlines()
    completed = [n for n, line in enumerate(steps) if "  completed  commit " in line]
    assert completed, steps
    for n in completed:
        assert "  refused    not merged: verification failed: `false`" in steps[n + 1], steps


def test_following_the_steps_of_a_mission_with_none_yet_says_what_it_waits_for(
    started: Up, tmp_path: Path
):
    """`mission logs -f` on a plan awaiting approval was a silent wait."""
    repo = tmp_path / "project"
    create_sample_repository(repo)
    home = ["--home", str(started.home)]
    submitted = run(tmp_path, *home, "mission", "submit", "--repo", str(repo), "- Add a.txt")
    assert submitted.returncode == 0, submitted.stderr
    mission = submitted.stdout.strip()
    deadline = time.monotonic() + 120
    while (
        json.loads(run(tmp_path, *home, "--json", "mission", "show", mission).stdout)["status"]
        != "awaiting_approval"
    ):
        assert time.monotonic() < deadline, "the plan never came"
        time.sleep(0.2)
    follower = subprocess.Popen(
        [*AETHER, *home, "mission", "logs", mission, "-f"],
        env=env_for(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []
    reader = threading.Thread(
        target=lambda: said.append(follower.stderr.readline() if follower.stderr else ""),
        daemon=True,
    )
    reader.start()
    try:
        reader.join(60)
        assert said and said[0].startswith(
            f"no agent activity for any task of {mission} yet (its plan awaits approval: "
            f"`aether mission approve {mission}`); following it until the mission ends"
        ), said
    finally:
        follower.kill()
        follower.wait()


def _down_during_the_first_set_up(
    tmp_path: Path, caught: Callable[[psutil.Process], psutil.Process | None]
) -> None:
    """Start a stack on a new home, stop (SIGSTOP) the process ``caught`` finds among
    `up`'s descendants as soon as there is one, and check that `down` stops it all at
    once and that the next start on that home works, whatever the cut set-up left."""
    # The process lives a moment only: a loaded machine can run the whole set-up between
    # two looks. Then the stack is up, and the set-up is tried again on a new home.
    for tries in range(4):
        home = Path(tempfile.mkdtemp(prefix="aether-up-test-"))
        up = Up(tmp_path, home, "--port-base", "0")
        deadline = time.monotonic() + 120
        found = None
        while found is None and "Aether is up." not in up.output:
            assert time.monotonic() < deadline and up.process.poll() is None, up.output
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(up.process.pid).children(recursive=True):
                    found = found or caught(child)
            time.sleep(0.005)
        if found is not None:
            break
        up.stop()
        shutil.rmtree(home, ignore_errors=True)
        assert tries < 3, "the set-up's process was never caught in four first starts"
    try:
        stuck = [found, *found.children(recursive=True)]
        for process in stuck:
            process.suspend()
        began = time.monotonic()
        stopped = run(tmp_path, "down", "--home", str(home))
        took = time.monotonic() - began
        assert stopped.returncode == 0, stopped.stderr
        assert took < 20, f"down took {took:.1f}s"
        assert up.process.wait(10) == 0, up.output
        assert "error" not in up.output, up.output
        assert survivors([p.pid for p in stuck], timeout=10) == []
        again = Up(tmp_path, home, "--port-base", "0")
        try:
            again.wait_for("Aether is up.")
        finally:
            again.stop()
    finally:
        up.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_down_stops_a_stack_stuck_in_its_first_postgresql_set_up_at_once(tmp_path: Path):
    """The first start's `initdb` checked no stop: `down` waited its whole minute for it
    (here it hangs: stopped with SIGSTOP), then killed `up`. The set-up is cut short, and
    what it left removed so that the next start sets it up again."""
    _down_during_the_first_set_up(tmp_path, lambda p: p if p.name() == "initdb" else None)


def test_down_stops_a_stack_whose_first_postgresql_server_never_gets_ready_at_once(
    tmp_path: Path,
):
    """After `initdb`, the first start's `pg_ctl start` waits for the server, and making
    the stack's role and database waits on it too; a stop cut neither short, so `down`
    waited for them (here the server never gets ready: stopped with SIGSTOP as soon as
    `pg_ctl` starts it). Both are now killed with the server; what the cut first set-up
    left is removed (nothing of anybody's is in it yet) and the next start sets it up."""

    def server(process: psutil.Process) -> psutil.Process | None:
        if process.name() != "pg_ctl":
            return None
        return next((p for p in process.children() if p.name() == "postgres"), None)

    _down_during_the_first_set_up(tmp_path, server)
