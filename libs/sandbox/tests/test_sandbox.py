"""The sandbox library: settings, the backends' launches, refusal, limits and the executor."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aether_sandbox import (
    MIB,
    Bubblewrap,
    Limits,
    Request,
    SandboxSettings,
    SandboxUnavailable,
    Unconfined,
    WarmSandbox,
    enforcement,
    execute,
    execute_sync,
    open_sandbox,
)
from aether_sandbox.bubblewrap import open_bubblewrap
from aether_sandbox.cgroups import Cgroup
from aether_sandbox.egress import parse_allow_list

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")
ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"}


def test_settings_from_the_environment() -> None:
    settings = SandboxSettings.from_env(
        {
            "AETHER_SANDBOX": "unconfined",
            "AETHER_SANDBOX_NETWORK": "host",
            "AETHER_SANDBOX_MEMORY_MB": "512",
            "AETHER_SANDBOX_PROCESSES": "off",
            "AETHER_SANDBOX_DISK_MB": "1.5",
            "AETHER_SANDBOX_READ_ONLY": "/opt/tools:/srv",
        }
    )
    assert settings.unconfined and settings.network == "host"
    assert settings.limits.memory_bytes == 512 * MIB
    assert settings.limits.processes is None
    assert settings.limits.disk_bytes == int(1.5 * MIB)
    assert settings.read_only == (Path("/opt/tools"), Path("/srv"))
    assert SandboxSettings.from_env({}) == SandboxSettings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AETHER_SANDBOX", "docker"),
        ("AETHER_SANDBOX_NETWORK", "open"),
        # Neither dropped nor taken as the default: each stops the service, named.
        ("AETHER_SANDBOX_READ_ONLY", "/opt/tools:relative"),
        ("AETHER_SANDBOX_WARM", "maybe"),
        ("AETHER_SANDBOX_MEMORY_MB", "lots"),
        ("AETHER_SANDBOX_PROCESSES", "-1"),
    ],
)
def test_unknown_choices_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        SandboxSettings.from_env({name: value})


def test_a_missing_bubblewrap_is_named_and_never_falls_back_to_unconfined() -> None:
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed") as missing:
        open_sandbox(SandboxSettings(bwrap="no-such-bwrap"))
    assert "AETHER_SANDBOX=unconfined" in str(missing.value)


def test_unconfined_is_only_what_an_operator_asks_for() -> None:
    sandbox = open_sandbox(SandboxSettings(backend="unconfined", bwrap="no-such-bwrap"))
    assert isinstance(sandbox, Unconfined) and not sandbox.confined


@needs_bwrap
def test_the_launch_binds_only_the_workdir_writable(tmp_path: Path) -> None:
    workdir = tmp_path / "wt"
    workdir.mkdir()
    (workdir / ".git").write_text("gitdir: /somewhere\n")
    launch = Bubblewrap(SandboxSettings()).launch(
        Request(["true"], workdir, workdir, {**ENV, "HOME": "/root"}, protect=(workdir / ".git",))
    )
    args = launch.argv
    writable = [args[i + 1] for i, arg in enumerate(args) if arg == "--bind"]
    assert writable == [str(workdir)]
    assert ["--ro-bind", str(workdir / ".git"), str(workdir / ".git")] == args[
        args.index(str(workdir / ".git")) - 1 : args.index(str(workdir / ".git")) + 2
    ]
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--die-with-parent"):
        assert flag in args
    assert "--new-session" in args and "--disable-userns" in args
    assert launch.env["HOME"] == "/tmp/home"
    assert str(Path.home()) not in [args[i + 1] for i, a in enumerate(args) if "bind" in a]


@needs_bwrap
def test_the_host_network_is_an_explicit_choice(tmp_path: Path) -> None:
    launch = Bubblewrap(SandboxSettings(network="host")).launch(
        Request(["true"], tmp_path, tmp_path, ENV)
    )
    assert "--unshare-net" not in launch.argv


@needs_bwrap
async def test_a_sandboxed_command_reports_its_exit_code_and_output(tmp_path: Path) -> None:
    sandbox = open_sandbox(SandboxSettings())
    outcome = await execute(
        sandbox,
        Request(["sh", "-c", "echo made > made.txt; echo hello; exit 3"], tmp_path, tmp_path, ENV),
    )
    assert outcome.exit_code == 3 and outcome.output == "hello\n"
    assert outcome.sandbox == "bubblewrap" and outcome.stopped is None
    assert (tmp_path / "made.txt").read_text() == "made\n"


@needs_bwrap
def test_execute_sync_runs_without_an_event_loop(tmp_path: Path) -> None:
    sandbox = open_sandbox(SandboxSettings())
    outcome = execute_sync(sandbox, Request(["sh", "-c", "echo $HOME"], tmp_path, tmp_path, ENV))
    assert outcome.exit_code == 0 and outcome.output == "/tmp/home\n"


@needs_bwrap
async def test_a_home_asked_for_is_the_commands_home_and_outlives_it(tmp_path: Path) -> None:
    """A request's ``home`` is the command's ``HOME``, writable and kept on the host
    (where an agent keeps the sessions a restarted runner loads); what the command writes
    there counts against its disk cap as what it writes into its workdir does."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    sandbox = open_sandbox(SandboxSettings())
    script = "echo $HOME; echo kept > $HOME/session; echo gone > /tmp/scratch"
    outcome = await execute(
        sandbox, Request(["sh", "-c", script], workdir, workdir, ENV, home=home)
    )
    assert outcome.exit_code == 0 and outcome.output == "/tmp/home\n"
    assert (home / "session").read_text() == "kept\n"
    assert list(workdir.iterdir()) == [] and not (tmp_path / "scratch").exists()

    unconfined = Unconfined(SandboxSettings(backend="unconfined"))
    outcome = await execute(
        unconfined, Request(["sh", "-c", "echo $HOME"], workdir, workdir, ENV, home=home)
    )
    assert outcome.output == f"{home}\n"

    # Many files, each under the per-file cap, filling the home past the sum.
    code = (
        "import os, time\n"
        "for n in range(40):\n"
        "    open(os.path.join(os.environ['HOME'], f'f{n}'), 'wb').write(b'x' * 400_000)\n"
        "    time.sleep(0.05)\n"
    )
    limits = Limits(disk_bytes=MIB)
    request = Request([sys.executable, "-c", code], workdir, workdir, ENV, limits, home=home)
    outcome = await execute(sandbox, request)
    assert outcome.stopped == "it wrote more than 1 MiB into the worktree and its home"
    assert len(list(home.glob("f*"))) < 40


async def test_limits_apply_unconfined_too(tmp_path: Path) -> None:
    sandbox = Unconfined(SandboxSettings(backend="unconfined"))
    code = "open('big', 'wb').write(b'x' * (4 << 20))"
    outcome = await execute(
        sandbox,
        Request([sys.executable, "-c", code], tmp_path, tmp_path, ENV, Limits(disk_bytes=MIB)),
    )
    assert outcome.exit_code != 0 and "File too large" in outcome.output
    assert (tmp_path / "big").stat().st_size <= MIB


def test_a_cgroup_is_made_and_removed_where_the_machine_allows() -> None:
    group = Cgroup.create(Limits(processes=10, memory_bytes=64 * MIB))
    if group is None:
        pytest.skip("no writable cgroup here: rlimits apply")
    try:
        assert {"processes", "memory"} <= group.enforces
        assert all(os.path.isdir(d) for d in group.directories)
    finally:
        group.remove()
    assert group.directories == []


def test_enforcement_names_how_each_limit_is_held() -> None:
    report = enforcement(Unconfined(SandboxSettings(backend="unconfined")))
    assert set(report) == {"memory", "processes", "cpu", "disk"}
    assert report["memory"] in ("cgroup", "RLIMIT_AS")


@needs_bwrap
async def test_a_protected_git_directory_is_hidden_and_read_only(tmp_path: Path) -> None:
    """A fetched clone's ``.git`` is a directory: inside it is empty and cannot be written."""
    clone = tmp_path / "clone"
    (clone / ".git" / "hooks").mkdir(parents=True)
    (clone / ".git" / "config").write_text("[core]\n")
    script = (
        "ls -A .git; echo hook > .git/hooks/pre-commit || echo DENIED; "
        "rm -rf .git || echo KEPT; echo ok > inside.txt"
    )
    outcome = await execute(
        open_sandbox(SandboxSettings()),
        Request(["sh", "-c", script], clone, clone, ENV, protect=(clone / ".git",)),
    )
    assert "config" not in outcome.output and "DENIED" in outcome.output
    assert "KEPT" in outcome.output
    assert (clone / ".git" / "config").read_text() == "[core]\n"
    assert not (clone / ".git" / "hooks" / "pre-commit").exists()
    assert (clone / "inside.txt").read_text() == "ok\n"


@needs_bwrap
async def test_a_directory_shown_in_part_holds_only_its_listed_entries(tmp_path: Path) -> None:
    """Even under a tree shown whole, only the listed entries are there, read-only, and a
    file shown in place of another can lie inside."""
    shared, work = tmp_path / "shared", tmp_path / "work"
    git_dir = shared / "repo.git"
    for name in ("objects/pack/p", "logs/HEAD", "FETCH_HEAD", "HEAD", "config", "wt/a/index"):
        (git_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (git_dir / name).write_text(f"{name}\n")
    (shared / "beside").write_text("beside\n")
    work.mkdir()
    clean = tmp_path / "clean-config"
    clean.write_text("clean\n")
    script = (
        f"cd {git_dir} && find . | sort && cat HEAD config objects/pack/p wt/a/index ../beside; "
        "touch new || echo DENIED; echo x > HEAD || echo DENIED-TOO"
    )
    outcome = await execute(
        open_sandbox(SandboxSettings()),
        Request(
            ["sh", "-c", script],
            work,
            work,
            ENV,
            read_only=(shared,),
            shown_as=((clean, git_dir / "config"),),
            shown_only=((git_dir, ("HEAD", "objects", "wt/a/index", "packed-refs")),),
        ),
    )
    listed = outcome.output.splitlines()
    assert "./logs" not in listed and "./FETCH_HEAD" not in listed, outcome.output
    assert "./packed-refs" not in listed  # listed but not on the host: not made up
    for line in ("./HEAD", "./objects/pack/p", "./wt/a/index", "clean", "beside"):
        assert line in listed, outcome.output
    assert "DENIED" in listed and "DENIED-TOO" in listed
    assert (git_dir / "HEAD").read_text() == "HEAD\n" and not (git_dir / "new").exists()


def test_unconfined_logs_say_so_on_every_line(tmp_path: Path) -> None:
    # In a child process: the mark lasts for the life of the process that sets it.
    code = (
        "import logging\n"
        "from aether_runtime import configure_logging\n"
        "from aether_sandbox import mark_logs_unconfined\n"
        "configure_logging('agent-runner')\n"
        "mark_logs_unconfined()\n"
        "logging.getLogger('a').info('one')\n"
        "logging.getLogger('b').warning('two', extra={'sandbox': 'unconfined'})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["msg"] for line in lines] == ["one", "two"]
    assert all(line["confinement"] == "unconfined" for line in lines)


async def test_without_prlimit_the_limits_are_set_in_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = importlib.import_module("aether_sandbox.execute")
    monkeypatch.setattr(executor.shutil, "which", lambda name: None)
    sandbox = Unconfined(SandboxSettings(backend="unconfined"))
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_FSIZE))"
    outcome = await execute(
        sandbox,
        Request([sys.executable, "-c", code], tmp_path, tmp_path, ENV, Limits(disk_bytes=MIB)),
    )
    assert outcome.output == f"({MIB}, {MIB})\n"


@needs_bwrap
async def test_a_held_bubblewrap_gets_its_limits_and_cgroup_before_the_command(
    tmp_path: Path,
) -> None:
    sandbox = open_sandbox(SandboxSettings())
    request = Request(
        [
            sys.executable,
            "-c",
            "import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_FSIZE))\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
            "print(open('/proc/self/cgroup').read())",
        ],
        tmp_path,
        tmp_path,
        ENV,
        Limits(disk_bytes=MIB),
    )
    assert sandbox.launch(request).held is not None
    outcome = await execute(sandbox, request)
    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert lines[0] == f"({MIB}, {MIB})"
    assert lines[1] == f"({Limits().open_files}, {Limits().open_files})"
    probe = Cgroup.create(Limits())
    if probe is not None:  # where cgroups are writable, the command runs in its own
        probe.remove()
        assert "aether-sandbox-" in outcome.output


@needs_bwrap
async def test_a_held_bubblewrap_that_cannot_be_limited_never_runs_its_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = importlib.import_module("aether_sandbox.execute")

    def refused(*_: object) -> None:
        raise PermissionError("prlimit refused")

    monkeypatch.setattr(executor.resource, "prlimit", refused)
    request = Request(["sh", "-c", "echo ran > ran.txt"], tmp_path, tmp_path, ENV)
    with pytest.raises(PermissionError):
        await execute(open_sandbox(SandboxSettings()), request)
    assert not (tmp_path / "ran.txt").exists()


@needs_bwrap
async def test_a_command_killed_for_memory_is_reported_so(tmp_path: Path) -> None:
    """The cgroup's OOM count is read before the cgroup is removed."""
    probe = Cgroup.create(Limits(memory_bytes=64 * MIB))
    if probe is None or "memory" not in probe.enforces:
        pytest.skip("no writable memory cgroup here: RLIMIT_AS applies")
    probe.remove()
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))"
    outcome = await execute(
        open_sandbox(SandboxSettings()),
        Request(
            [sys.executable, "-c", code],
            tmp_path,
            tmp_path,
            ENV,
            Limits(memory_bytes=64 * MIB),
        ),
    )
    assert outcome.exit_code != 0
    assert outcome.stopped is not None and "out of memory" in outcome.stopped


@needs_bwrap
def test_readable_paths_already_shown_get_no_mount_of_their_own(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    (tool / "bin").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    workdir = tmp_path / "wt"
    workdir.mkdir()
    path = os.pathsep.join(["/usr/bin", "/bin", str(tool / "bin"), str(tmp_path / "link")])
    launch = Bubblewrap(SandboxSettings(read_only=(tool,))).launch(
        Request(["true"], workdir, workdir, {"PATH": path})
    )
    bound = [launch.argv[i + 1] for i, a in enumerate(launch.argv) if a == "--ro-bind-try"]
    assert "/usr/bin" not in bound and "/bin" not in bound  # inside /usr already
    assert str(tool) in bound and str(tool / "bin") not in bound  # inside a bound tree
    assert str(tmp_path / "link") in bound  # a symlink out of what is shown: bound


@needs_bwrap
async def test_a_bubblewrap_failing_in_its_setup_reports_why(tmp_path: Path) -> None:
    """It exits before it reads the hold's pipe: its own message comes back, no error."""
    missing = tmp_path / "missing"
    for _ in range(3):  # it may be gone before, or after, the service writes to the pipe
        outcome = await execute(
            open_sandbox(SandboxSettings()), Request(["true"], missing, tmp_path, ENV)
        )
        assert outcome.exit_code not in (None, 0)
        assert "missing" in outcome.output


@needs_bwrap
async def test_without_pidfds_commands_are_still_watched_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = importlib.import_module("aether_sandbox.execute")

    def no_pidfds(pid: int, flags: int = 0) -> int:
        raise OSError("no pidfd_open here")

    monkeypatch.setattr(executor.os, "pidfd_open", no_pidfds)
    sandbox = open_sandbox(SandboxSettings())
    done = await execute(sandbox, Request(["sh", "-c", "echo hi; exit 4"], tmp_path, tmp_path, ENV))
    assert done.exit_code == 4 and done.output == "hi\n"
    stopped = await execute(
        sandbox, Request(["sleep", "30"], tmp_path, tmp_path, ENV, Limits(wall_seconds=0.5))
    )
    assert stopped.timed_out and stopped.exit_code is None


# --- the warm sandbox -------------------------------------------------------------------


@needs_bwrap
async def test_a_warm_sandbox_keeps_the_worktree_and_nothing_else(tmp_path: Path) -> None:
    # tmp_path lies under the host's /tmp: the worktree is then mounted inside the
    # sandbox's own /tmp, which is emptied after every command, around the mount.
    workdir = tmp_path / "work"
    (workdir / "src").mkdir(parents=True)
    (workdir / "src" / "kept.txt").write_text("kept\n")
    warm = WarmSandbox(open_bubblewrap(SandboxSettings()))
    try:

        def request(script: str) -> Request:
            argv = ["/bin/sh", "-c", script]
            return Request(argv, workdir, workdir / "src", ENV, Limits(wall_seconds=30))

        first = await execute(warm, request("echo made > made.txt; echo left > /tmp/left"))
        assert first.exit_code == 0 and first.sandbox == "bubblewrap"
        second = await execute(warm, request("cat kept.txt made.txt; ls /tmp/left; exit 3"))
        assert second.exit_code == 3
        assert "kept\nmade\n" in second.output and "No such file" in second.output
        assert (workdir / "src" / "kept.txt").read_text() == "kept\n"
        assert (workdir / "src" / "made.txt").read_text() == "made\n"
        assert warm.started == 1
    finally:
        warm.close()


@needs_bwrap
async def test_a_warm_sandbox_reports_a_missing_program_and_stays_usable(tmp_path: Path) -> None:
    warm = WarmSandbox(open_bubblewrap(SandboxSettings()))
    try:
        with pytest.raises(FileNotFoundError, match="not-a-program"):
            await execute(warm, Request(["not-a-program"], tmp_path, tmp_path, ENV))
        done = await execute(warm, Request(["echo", "still"], tmp_path, tmp_path, ENV))
        assert done.output == "still\n" and warm.started == 1
    finally:
        warm.close()


@needs_bwrap
async def test_a_warm_sandbox_that_was_closed_or_changed_starts_anew(tmp_path: Path) -> None:
    warm = WarmSandbox(open_bubblewrap(SandboxSettings()))
    other = tmp_path / "other"
    other.mkdir()
    try:
        await execute(warm, Request(["true"], tmp_path, tmp_path, ENV))
        # Other mounts (another workdir): another sandbox.
        await execute(warm, Request(["true"], other, other, ENV))
        assert warm.started == 2
        warm.close()
        done = await execute(warm, Request(["echo", "again"], other, other, ENV))
        assert done.output == "again\n" and warm.started == 3
    finally:
        warm.close()


@needs_bwrap
async def test_commands_side_by_side_each_get_a_sandbox(tmp_path: Path) -> None:
    warm = WarmSandbox(open_bubblewrap(SandboxSettings()))
    try:
        slow = Request(["sh", "-c", "sleep 0.5; echo slow"], tmp_path, tmp_path, ENV)
        quick = Request(["echo", "quick"], tmp_path, tmp_path, ENV)
        done = await asyncio.gather(execute(warm, slow), execute(warm, quick))
        assert [outcome.output for outcome in done] == ["slow\n", "quick\n"]
        assert warm.started == 1
    finally:
        warm.close()


def test_warm_is_on_unless_an_operator_turns_it_off() -> None:
    assert SandboxSettings.from_env({}).warm
    assert not SandboxSettings.from_env({"AETHER_SANDBOX_WARM": "off"}).warm


# --- the egress allow-list --------------------------------------------------------------


def test_the_egress_allow_list_is_read_and_checked() -> None:
    settings = SandboxSettings.from_env({"AETHER_SANDBOX_EGRESS": "PyPI.org:443, *.npmjs.org"})
    assert settings.egress == ("pypi.org:443", "*.npmjs.org")
    with pytest.raises(ValueError, match="AETHER_SANDBOX_NETWORK=host"):
        SandboxSettings.from_env(
            {"AETHER_SANDBOX_EGRESS": "pypi.org", "AETHER_SANDBOX_NETWORK": "host"}
        )
    with pytest.raises(ValueError, match="AETHER_SANDBOX=unconfined"):
        SandboxSettings.from_env(
            {"AETHER_SANDBOX_EGRESS": "pypi.org", "AETHER_SANDBOX": "unconfined"}
        )
    for bad in ("pypi.org:http", "user@pypi.org", "http://pypi.org/", "py*.org", "a:0"):
        with pytest.raises(ValueError, match="AETHER_SANDBOX_EGRESS"):
            SandboxSettings.from_env({"AETHER_SANDBOX_EGRESS": bad})


def test_destinations_match_by_name_and_port() -> None:
    exact, wildcard, bare, v6 = parse_allow_list(
        "pypi.org:443 *.npmjs.org:443 example.com [::1]:8080"
    )
    assert exact.matches("pypi.org", 443) and not exact.matches("pypi.org", 80)
    assert not exact.matches("evil-pypi.org", 443) and not exact.matches("x.pypi.org", 443)
    assert wildcard.matches("registry.npmjs.org", 443) and not wildcard.matches("npmjs.org", 443)
    assert not wildcard.matches("npmjs.org.evil.com", 443)
    assert bare.ports == (80, 443)
    assert v6.matches("::1", 8080)


@needs_bwrap
def test_a_one_off_command_with_an_allow_list_gets_the_proxy(tmp_path: Path) -> None:
    # The git broker's verification runs one command, without a kept sandbox of its own.
    sandbox = open_sandbox(SandboxSettings(egress=("pypi.org:443",)))
    code = (
        "import os, socket\n"
        "socket.create_connection(('127.0.0.1', 3128))\n"
        "print(os.environ['HTTPS_PROXY'])"
    )
    done = execute_sync(sandbox, Request([sys.executable, "-c", code], tmp_path, tmp_path, ENV))
    assert done.exit_code == 0 and done.output == "http://127.0.0.1:3128\n"
