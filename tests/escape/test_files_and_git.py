"""Escape attempts against the file tools, git and the broker's smart HTTP.

Each test plays a hostile agent (or a hostile command in its worktree) against the real
tool layer, real repositories with real linked worktrees, the runner's and the broker's
real git code, and a running broker on a real NATS server, and asserts that the attempt
is refused or contained: nothing outside the worktree is read or written, no program the
agent planted runs (each would create a marker file), and no token reaches further than
its own attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.git import (
    CommitLimits,
    CommitRefused,
    GitDir,
    GitDirError,
    changed_paths,
    commit_all,
    reset_to,
)
from aether_agent_runner.adapters.search import search
from aether_agent_runner.adapters.workspace import ToolError, Workspace
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.registry import runtimes
from aether_events import (
    AgentFailed,
    Event,
    EventPublisher,
    MissionRequested,
    PlannedTask,
    RepositoryPrepared,
    TaskReady,
    WorkspaceReady,
    decode,
    ensure_streams,
    mission_subject,
    new_event_id,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.app import GitBroker
from aether_llm import LLMSettings, MessagesServer, Reply, make_client, tool_use_block
from aether_runtime import RuntimeSettings, tls

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
}
SECRET = "escape-suite-secret"
TIMEOUT = 30.0


def run_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], env=GIT_ENV, capture_output=True, text=True
    )


def git(cwd: Path, *args: str) -> str:
    result = run_git(cwd, *args)
    assert result.returncode == 0, f"git {args} failed: {result.stderr}"
    return result.stdout.strip()


@dataclass
class Linked:
    """A repository, a task's linked worktree on its branch, and a directory outside."""

    repo: Path
    worktree: Path
    branch: str
    base: str
    admin: Path
    outside: Path
    marker: Path

    @property
    def records(self) -> GitDir:
        """The git directory as the broker names it in WorkspaceReady."""
        return GitDir.linked(self.worktree, self.admin, self.branch)

    def head(self) -> str:
        return git(self.repo, "rev-parse", self.branch)


@pytest.fixture
def linked(tmp_path: Path) -> Linked:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# demo\n")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("print('hello')\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    branch = "aether-tasks/m-1/t1/a1"
    git(repo, "branch", branch, "main")
    worktree = (tmp_path / "worktrees" / "t1-a1").resolve()
    worktree.parent.mkdir()
    git(repo, "worktree", "add", "-q", str(worktree), branch)
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET\n")
    marker = tmp_path / "pwned"
    return Linked(repo, worktree, branch, git(repo, "rev-parse", "main"), admin, outside, marker)


def hook(path: Path, marker: Path) -> None:
    """An executable script at ``path`` that would leave ``marker`` behind if run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    path.chmod(0o755)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --- files: links, paths, races, special files --------------------------------------------


def test_a_hard_link_to_a_file_outside_is_neither_read_searched_nor_committed(
    linked: Linked,
) -> None:
    os.link(linked.outside / "secret.txt", linked.worktree / "innocent.txt")
    workspace = Workspace(linked.worktree)

    with pytest.raises(ToolError, match="hard links"):
        workspace.read_file("innocent.txt")
    with pytest.raises(ToolError, match="hard links"):
        workspace.edit_file("innocent.txt", "TOP", "NOT")
    assert "SECRET" not in search(linked.worktree, "S.CRET")
    with pytest.raises(CommitRefused, match="hard links"):
        commit_all(linked.records, "steal\n")

    assert linked.head() == linked.base
    assert (linked.outside / "secret.txt").read_text() == "TOP SECRET\n"


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(lambda wt, out: os.symlink(out / "secret.txt", wt / "s"), id="absolute"),
        pytest.param(
            lambda wt, out: os.symlink(os.path.relpath(out / "secret.txt", wt), wt / "s"),
            id="relative",
        ),
        pytest.param(
            lambda wt, out: (os.symlink(out, wt / "d"), os.symlink("d/secret.txt", wt / "s")),
            id="chain-through-a-directory-link",
        ),
    ],
)
def test_a_symlink_out_of_the_worktree_is_refused_for_every_tool(
    linked: Linked, plant: Callable[[Path, Path], object]
) -> None:
    plant(linked.worktree, linked.outside)
    before = snapshot(linked.outside)
    workspace = Workspace(linked.worktree)

    for call in (
        lambda: workspace.read_file("s"),
        lambda: workspace.edit_file("s", "TOP", "NOT"),
        lambda: workspace.write_file("s", "overwritten\n"),
        lambda: workspace.delete_file("s"),
    ):
        with pytest.raises(ToolError, match="outside"):
            call()
    assert "SECRET" not in search(linked.worktree, "S.CRET")
    assert snapshot(linked.outside) == before


@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret.txt",
        "src/../../outside/secret.txt",
        "./src/./../../../outside/secret.txt",
        "src/../../t1-a1-sibling/x",
        "../t1-a1/../../outside/secret.txt",
    ],
)
def test_dot_dot_paths_that_climb_out_are_refused(linked: Linked, path: str) -> None:
    workspace = Workspace(linked.worktree)
    with pytest.raises(ToolError, match="outside"):
        workspace.read_file(path)
    with pytest.raises(ToolError, match="outside"):
        workspace.write_file(path + "-new", "x\n")
    assert not list(linked.outside.parent.glob("**/secret.txt-new"))


def test_a_directory_swapped_for_a_symlink_while_tools_run_lets_nothing_out(
    linked: Linked,
) -> None:
    sub = linked.worktree / "sub"
    sub.mkdir()
    (sub / "secret.txt").write_text("inside\n")
    real = linked.worktree / "sub.real"
    before = snapshot(linked.outside)
    workspace = Workspace(linked.worktree)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(sub, real)
            with contextlib.suppress(OSError):
                os.symlink(linked.outside, sub)
            with contextlib.suppress(OSError):
                if sub.is_symlink():
                    os.unlink(sub)
                else:
                    shutil.rmtree(sub)
            with contextlib.suppress(OSError):
                os.rename(real, sub)

    swapper = threading.Thread(target=swap)
    swapper.start()
    read_outside = 0
    tries = 0
    try:
        for n in range(300):
            for call in (
                lambda: workspace.read_file("sub/secret.txt"),
                lambda n=n: workspace.write_file(f"sub/new{n}.txt", "x\n"),
                lambda: workspace.edit_file("sub/secret.txt", "inside", "inside!"),
                lambda: search(linked.worktree, "S.CRET|inside", "sub"),
            ):
                tries += 1
                with contextlib.suppress(ToolError, FileNotFoundError):
                    if "TOP SECRET" in str(call()):
                        read_outside += 1
    finally:
        stop.set()
        swapper.join()

    assert tries == 1200
    assert read_outside == 0
    assert snapshot(linked.outside) == before


def test_a_fifo_is_refused_without_hanging_and_skipped_by_the_commit(linked: Linked) -> None:
    os.mkfifo(linked.worktree / "pipe")
    workspace = Workspace(linked.worktree)

    with pytest.raises(ToolError, match="not a regular file"):
        workspace.read_file("pipe")
    assert "pipe" not in search(linked.worktree, ".", ".")
    (linked.worktree / "real.txt").write_text("real\n")
    sha, changed = commit_all(linked.records, "work\n")

    assert sha is not None and changed == ["real.txt"]


def test_a_device_node_is_refused(linked: Linked) -> None:
    try:
        os.mknod(linked.worktree / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except PermissionError:
        # Without the privilege to make one, a command cannot make one either; a link
        # to a device outside is the way left, and it is refused as any link out.
        os.symlink("/dev/zero", linked.worktree / "zero")
    workspace = Workspace(linked.worktree)

    with pytest.raises(ToolError):
        workspace.read_file("zero")
    with pytest.raises(ToolError):
        workspace.edit_file("zero", "a", "b")


# --- git: hooks, config, attributes, the .git file, limits ------------------------------


def test_hooks_planted_anywhere_git_looks_do_not_run_on_the_runners_commit(
    linked: Linked,
) -> None:
    common = linked.repo / ".git"
    for directory in (common / "hooks", linked.admin / "hooks", linked.worktree / "myhooks"):
        for name in ("pre-commit", "commit-msg", "post-commit", "prepare-commit-msg"):
            hook(directory / name, linked.marker)
    git(linked.repo, "config", "core.hooksPath", str(linked.worktree / "myhooks"))
    (linked.worktree / "src" / "app.py").write_text("print('changed')\n")

    sha, changed = commit_all(linked.records, "work\n")

    assert not linked.marker.exists()
    assert sha is not None and linked.head() == sha and "src/app.py" in changed


def test_fsmonitor_in_the_repository_and_worktree_config_never_runs(linked: Linked) -> None:
    script = linked.worktree / "monitor.sh"
    hook(script, linked.marker)
    git(linked.repo, "config", "core.fsmonitor", str(script))
    git(linked.repo, "config", "extensions.worktreeConfig", "true")
    (linked.admin / "config.worktree").write_text(f"[core]\n\tfsmonitor = {script}\n")
    (linked.worktree / "README.md").write_text("# changed\n")

    assert changed_paths(linked.records) == ["README.md", "monitor.sh"]
    sha, _ = commit_all(linked.records, "work\n")
    (linked.worktree / "junk.txt").write_text("junk\n")
    assert reset_to(linked.records, linked.base)

    assert not linked.marker.exists()
    assert sha is not None and not (linked.worktree / "junk.txt").exists()


def test_a_gitattributes_filter_driver_runs_neither_on_commit_nor_on_checkout(
    linked: Linked, tmp_path: Path
) -> None:
    command = f"touch {linked.marker}; cat"
    for key in ("clean", "smudge", "process"):
        git(linked.repo, "config", f"filter.evil.{key}", command)
    git(linked.repo, "config", "diff.evil.textconv", command)
    (linked.worktree / ".gitattributes").write_text("*.py filter=evil diff=evil\n")
    (linked.worktree / "src" / "app.py").write_text("print('filtered?')\n")

    sha, _ = commit_all(linked.records, "attributes\n")
    assert not linked.marker.exists()
    # The broker then checks the branch out (a worktree for the next task).
    broker = GitRepositories()
    broker.prepare_repository(str(linked.repo), linked.branch, "aether/m-2")
    outcome = broker.prepare_workspace(
        str(linked.repo), "aether/m-2", "aether-tasks/m-2/t1/a1", str(tmp_path / "next")
    )
    broker.close()

    assert not linked.marker.exists()
    assert (Path(outcome.worktree_path) / "src" / "app.py").read_text() == "print('filtered?')\n"
    assert sha is not None


def test_a_rewritten_dot_git_file_is_not_followed_by_the_runner(linked: Linked) -> None:
    decoy = linked.outside / "decoy.git"
    git(linked.outside, "init", "-q", "--bare", str(decoy))
    hook(decoy / "hooks" / "pre-commit", linked.marker)
    before = snapshot(decoy)
    (linked.worktree / ".git").write_text(f"gitdir: {decoy}\n")
    (linked.worktree / "work.txt").write_text("work\n")

    sha, _ = commit_all(linked.records, "work\n")

    assert linked.head() == sha  # the commit is on the real task branch
    assert snapshot(decoy) == before and not linked.marker.exists()
    # And the old way of finding the git directory refuses the rewritten file.
    with pytest.raises(GitDirError):
        GitDir.discover(linked.worktree, linked.branch)


def test_a_rewritten_dot_git_file_makes_the_broker_rebuild_the_worktree(
    linked: Linked, tmp_path: Path
) -> None:
    broker = GitRepositories()
    broker.prepare_repository(str(linked.repo), "main", "aether/m-3")
    path = str(tmp_path / "wt" / "t1-a1")
    first = broker.prepare_workspace(str(linked.repo), "aether/m-3", "aether-tasks/m-3/t1", path)
    pointer = (Path(path) / ".git").read_text()
    # Another worktree's administrative directory: same repository, same HEAD.
    (Path(path) / ".git").write_text(f"gitdir: {linked.admin}\n")

    again = broker.prepare_workspace(str(linked.repo), "aether/m-3", "aether-tasks/m-3/t1", path)
    broker.close()

    assert first.created and again.created  # rebuilt, not reused on the agent's word
    assert (Path(path) / ".git").read_text() == pointer
    assert again.git_dir and pointer == f"gitdir: {again.git_dir}\n"


def test_a_commit_with_too_many_files_is_refused_and_the_branch_stays(linked: Linked) -> None:
    (linked.worktree / "gen").mkdir()
    for n in range(51):
        (linked.worktree / "gen" / f"f{n}.txt").write_text(f"{n}\n")

    with pytest.raises(CommitRefused, match="51 files, more than the 50"):
        commit_all(linked.records, "many\n", CommitLimits(max_files=50))

    assert linked.head() == linked.base


def test_a_commit_with_a_huge_blob_is_refused_and_the_branch_stays(linked: Linked) -> None:
    (linked.worktree / "huge.bin").write_bytes(b"x" * 5000)

    with pytest.raises(CommitRefused, match=r"huge\.bin has 5,000 bytes"):
        commit_all(linked.records, "huge\n", CommitLimits(max_blob_bytes=4096))
    (linked.worktree / "a.bin").write_bytes(b"a" * 3000)
    with pytest.raises(CommitRefused, match="more than 6,000 bytes"):
        commit_all(linked.records, "two\n", CommitLimits(max_total_bytes=6000))

    assert linked.head() == linked.base


async def test_an_attempt_over_the_commit_limits_fails_with_the_reason(
    linked: Linked, nc: NatsClient
) -> None:
    await ensure_streams(nc.jetstream())
    turns = [
        [tool_use_block("write_file", {"path": "big.txt", "content": "y" * 2000})],
        [tool_use_block("finish", {"summary": "done"})],
    ]

    def script(request: dict[str, Any]) -> Reply:
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return Reply(turns[min(turn, 1)], "tool_use", 10, 5)

    server = MessagesServer(script).start()
    publisher = EventPublisher(nc.jetstream())
    try:
        attempts = Attempts(
            runtimes=runtimes(
                make_client(LLMSettings(api_key="k", base_url=server.url, max_retries=0))
            ),
            settings=AgentSettings(progress_seconds=0.0, commit_max_blob_bytes=1000),
            runner_id="escape",
            clock=lambda: datetime.now(UTC),
        )
        ready = WorkspaceReady(
            **meta("m-limits"),
            task=PlannedTask(id="t1", title="write a big file"),
            attempt=1,
            model="claude-sonnet",
            branch=linked.branch,
            worktree_path=str(linked.worktree),
            base_sha=linked.base,
            git_dir=str(linked.admin),
        )
        result = await attempts.work(ready, publisher.publish)
    finally:
        server.stop()

    assert isinstance(result, AgentFailed) and result.retryable is False
    assert "the commit was refused: big.txt has 2,000 bytes" in result.reason
    assert linked.head() == linked.base


# --- smart HTTP: per-attempt push tokens ---------------------------------------------------


def meta(mission_id: str) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": f"corr-{mission_id}",
    }


class Watch:
    """One mission's events, in order, as the stream holds them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.sub: Any = None

    async def next(self, cls: type[Any]) -> Any:
        while True:
            event = await asyncio.wait_for(self.queue.get(), TIMEOUT)
            if isinstance(event, cls):
                return event


async def watch(nc: NatsClient, mission_id: str) -> Watch:
    watched = Watch()

    async def on_message(msg: Any) -> None:
        await watched.queue.put(decode(msg.data))

    watched.sub = await nc.jetstream().subscribe(
        mission_subject(mission_id),
        cb=on_message,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    return watched


@pytest.fixture
async def served(nc: NatsClient, nats_url: str, tmp_path: Path) -> AsyncIterator[GitBroker]:
    await ensure_streams(nc.jetstream())
    worktrees = tmp_path / "broker-worktrees"
    worktrees.mkdir()
    broker = bootstrap(
        GitBrokerSettings(
            runtime=RuntimeSettings(nats_url=nats_url, port=0),
            worktrees_dir=worktrees.resolve(),
            data_dir=tmp_path / "broker-data",
            ack_wait_seconds=2.0,
            git_http_port=0,
            git_token=SECRET,
        )
    )
    await broker.service.start()
    try:
        yield broker
    finally:
        await broker.service.stop()


async def attempt_of(nc: NatsClient, repo: Path, mission_id: str) -> tuple[Watch, WorkspaceReady]:
    """A running mission with task t1's first attempt ready: its events and WorkspaceReady."""
    publisher = EventPublisher(nc.jetstream())
    events = await watch(nc, mission_id)
    await publisher.publish(
        MissionRequested(**meta(mission_id), repository=str(repo), requirement="x")
    )
    await events.next(RepositoryPrepared)
    return events, await another_task(nc, events, mission_id, "t1")


async def another_task(
    nc: NatsClient, events: Watch, mission_id: str, task_id: str
) -> WorkspaceReady:
    await EventPublisher(nc.jetstream()).publish(
        TaskReady(
            **meta(mission_id),
            task=PlannedTask(id=task_id, title="t"),
            attempt=1,
            model="claude-sonnet",
            requirement="x",
        )
    )
    ready: WorkspaceReady = await events.next(WorkspaceReady)
    assert ready.push_token and ready.task.id == task_id
    return ready


def remote(broker: GitBroker, mission_id: str, token: str) -> str:
    assert broker.http is not None
    return f"http://agent:{token}@127.0.0.1:{broker.http.port}/{mission_id}"


async def test_a_token_clones_only_its_own_mission(
    served: GitBroker, nc: NatsClient, linked: Linked, tmp_path: Path
) -> None:
    _, mine = await attempt_of(nc, linked.repo, "m-mine")
    _, theirs = await attempt_of(nc, linked.repo, "m-theirs")

    stolen = run_git(tmp_path, "clone", "-q", remote(served, "m-theirs", mine.push_token), "x")
    own = run_git(tmp_path, "ls-remote", remote(served, "m-mine", mine.push_token))

    assert stolen.returncode != 0 and "403" in stolen.stderr
    assert not (tmp_path / "x").exists()
    assert own.returncode == 0 and mine.branch in own.stdout
    assert theirs.branch not in own.stdout  # not even the other mission's name


async def test_a_token_pushes_only_its_own_task_branch(
    served: GitBroker, nc: NatsClient, linked: Linked, tmp_path: Path
) -> None:
    events, mine = await attempt_of(nc, linked.repo, "m-push")
    sibling = await another_task(nc, events, "m-push", "t2")
    _, theirs = await attempt_of(nc, linked.repo, "m-victim")
    clone = tmp_path / "clone"
    cloned = run_git(
        tmp_path,
        "clone",
        "-q",
        "--branch",
        mine.branch,
        remote(served, "m-push", mine.push_token),
        str(clone),
    )
    assert cloned.returncode == 0, cloned.stderr
    (clone / "evil.txt").write_text("evil\n")
    git(clone, "add", "evil.txt")
    git(clone, "commit", "-q", "-m", "evil")
    victim_head = git(linked.repo, "rev-parse", theirs.branch)
    sibling_head = git(linked.repo, "rev-parse", sibling.branch)

    # Into the other mission, with this token: refused at the door.
    across = run_git(
        clone, "push", remote(served, "m-victim", mine.push_token), f"HEAD:{theirs.branch}"
    )
    # Within its own mission, to another task's branch, or to a branch of the other
    # mission by name: refused by name.
    sideways = run_git(clone, "push", "origin", f"HEAD:refs/heads/{sibling.branch}")
    by_name = run_git(clone, "push", "origin", f"HEAD:refs/heads/{theirs.branch}")

    assert across.returncode != 0 and sideways.returncode != 0 and by_name.returncode != 0
    assert git(linked.repo, "rev-parse", theirs.branch) == victim_head
    assert git(linked.repo, "rev-parse", sibling.branch) == sibling_head
    assert run_git(clone, "push", "-q", "origin", f"HEAD:{mine.branch}").returncode == 0


async def test_a_token_is_refused_once_its_attempt_has_ended(
    served: GitBroker, nc: NatsClient, linked: Linked, tmp_path: Path
) -> None:
    events, ready = await attempt_of(nc, linked.repo, "m-ended")
    url = remote(served, "m-ended", ready.push_token)
    assert run_git(tmp_path, "ls-remote", url).returncode == 0

    failed = AgentFailed(
        **meta("m-ended"), task_id="t1", attempt=1, reason="gave up", retryable=False
    )
    await EventPublisher(nc.jetstream()).publish(failed)
    await events.next(AgentFailed)
    # The broker takes events one at a time: a later mission prepared shows it has
    # folded the failure in.
    await attempt_of(nc, linked.repo, "m-after-ended")

    ended = run_git(tmp_path, "ls-remote", url)

    assert ended.returncode != 0 and "403" in ended.stderr
    assert git(linked.repo, "rev-parse", ready.branch) == ready.base_sha


async def test_a_forged_or_widened_token_is_refused(
    served: GitBroker, nc: NatsClient, linked: Linked
) -> None:
    _, ready = await attempt_of(nc, linked.repo, "m-forge")
    claims, _, mac = ready.push_token.partition(".")
    assert served.http is not None
    base = f"http://127.0.0.1:{served.http.port}/m-forge/info/refs?service=git-upload-pack"
    forged = msgspec.json.encode(["m-forge", "t1", 2]).decode()
    widened = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=") + "." + mac
    async with httpx.AsyncClient(verify=tls.shared(), timeout=10) as client:
        answers = [
            (await client.get(base, auth=("agent", token))).status_code
            for token in (SECRET, widened, claims + "." + "0" * 64, ready.push_token)
        ]

    assert answers == [401, 401, 401, 200]


# --- a reviewer's further attempts: names git reads as .git elsewhere ---------------------

# Plain names on Linux; the repository's own directory on the file system a person clones
# the merged branch onto (NTFS: trailing dots and spaces, the short name; HFS+: ignored
# code points), where its hooks would run. git itself refuses to check them out.
DOT_GIT_ELSEWHERE = [".git.", ".GIT ", ".git. .", "GIT~1", ".git::$INDEX_ALLOCATION", ".g\u200cit"]


@pytest.mark.parametrize("name", DOT_GIT_ELSEWHERE)
def test_a_name_read_as_dot_git_elsewhere_is_refused_and_never_committed(
    linked: Linked, name: str
) -> None:
    workspace = Workspace(linked.worktree)
    with pytest.raises(ToolError, match=r"\.git"):
        workspace.write_file(f"{name}/hooks/post-checkout", "#!/bin/sh\n")
    # Made by a command instead, beside a real change: the commit leaves it out.
    hook(linked.worktree / name / "hooks" / "post-checkout", linked.marker)
    (linked.worktree / "README.md").write_text("# changed\n")

    sha, changed = commit_all(linked.records, "work\n")

    assert sha is not None and changed == ["README.md"]
    assert name not in workspace.list_dir(".")
    assert "post-checkout" not in search(linked.worktree, "touch", ".")


def _commit_with(repo: Path, parent: str, path: list[bytes]) -> str:
    """A commit (made by hand, as a push could bring it) adding a hook at ``path`` to
    ``parent``'s tree: no git that checks names is involved."""
    from dulwich.objects import Blob, Commit, Tree
    from dulwich.repo import Repo

    with Repo(str(repo)) as handle:
        store = handle.object_store
        blob = Blob.from_string(b"#!/bin/sh\ntouch pwned\n")
        store.add_object(blob)
        child: Blob | Tree = blob
        mode = 0o100755
        for name in reversed(path[1:]):
            tree = Tree()
            tree.add(name, mode, child.id)
            store.add_object(tree)
            child, mode = tree, 0o040000
        top = store[handle[parent.encode()].tree]  # type: ignore[attr-defined]
        assert isinstance(top, Tree)
        top.add(path[0], mode, child.id)
        store.add_object(top)
        commit = Commit()
        commit.tree = top.id
        commit.parents = [parent.encode()]
        commit.author = commit.committer = b"Agent <agent@example.com>"
        commit.author_time = commit.commit_time = 0
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"hand-made\n"
        store.add_object(commit)
        return commit.id.decode()


@pytest.mark.parametrize("name", DOT_GIT_ELSEWHERE)
def test_the_broker_neither_checks_out_nor_merges_a_name_read_as_dot_git(
    linked: Linked, tmp_path: Path, name: str
) -> None:
    bad = _commit_with(linked.repo, linked.base, [name.encode(), b"hooks", b"post-checkout"])
    git(linked.repo, "branch", "-f", "hand-made", bad)
    broker = GitRepositories()
    try:
        broker.prepare_repository(str(linked.repo), "main", "aether/m-names")
        merged = broker.merge(
            str(linked.repo),
            "aether/m-names",
            since_sha=linked.base,
            mission_id="m-names",
            task_id="t1",
            attempt=1,
            commit_sha=bad,
            now=datetime.now(UTC),
        )
        # A branch that already holds it (pushed as the base of a mission): no checkout.
        broker.prepare_repository(str(linked.repo), "hand-made", "aether/m-names-2")
        with pytest.raises(ValueError, match="the tree has an entry"):
            broker.prepare_workspace(
                str(linked.repo),
                "aether/m-names-2",
                "aether-tasks/m-names-2/t1/a1",
                str(tmp_path / "next"),
            )
    finally:
        broker.close()

    assert merged.kind == "conflict" and "no checkout may write" in merged.detail
    assert git(linked.repo, "rev-parse", "aether/m-names") == linked.base
    assert not (tmp_path / "next" / name).exists()


# --- a reviewer's further attempts: files a command leaves for the runner --------------------


def _nest(top: Path, levels: int) -> None:
    """``levels`` directories one inside the other under ``top``, with a file at the bottom
    (as a command makes them: a few thousand, far within the sandbox's file cap)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _unnest(top: Path) -> None:
    """Remove what ``_nest`` made (``shutil.rmtree`` would overflow as well; rm does not)."""
    subprocess.run(["rm", "-rf", str(top / "d")], check=True)


def test_directories_nested_thousands_deep_overflow_neither_search_nor_commit(
    linked: Linked,
) -> None:
    _nest(linked.worktree, 3000)
    (linked.worktree / "README.md").write_text("# changed\n")
    try:
        assert "README.md:1" in search(linked.worktree, "changed", ".")
        with pytest.raises(CommitRefused, match="more than 200 deep"):
            commit_all(linked.records, "deep\n")
        assert linked.head() == linked.base
    finally:
        _unnest(linked.worktree)


async def test_a_unix_socket_file_is_refused_as_a_tool_error_not_a_crash(linked: Linked) -> None:
    import socket

    from aether_agent_runner.adapters.commands import CommandPolicy
    from aether_agent_runner.adapters.tools import ToolBox

    listener = socket.socket(socket.AF_UNIX)
    # Bound through the directory's descriptor: a socket's path may be 107 bytes at most,
    # and a worktree under a test's temporary directory can be longer than that.
    directory = os.open(linked.worktree, os.O_PATH | os.O_DIRECTORY)
    try:
        listener.bind(f"/proc/self/fd/{directory}/control.sock")
    finally:
        os.close(directory)
    listener.listen()
    tools = ToolBox(Workspace(linked.worktree), CommandPolicy(None, check_paths=False))
    try:
        for name, args in (
            ("read_file", {"path": "control.sock"}),
            ("edit_file", {"path": "control.sock", "old_text": "a", "new_text": "b"}),
            ("search", {"pattern": ".", "path": "control.sock"}),
        ):
            result = await tools.call(name, args)
            assert (name != "search" and result.is_error) or "no matches" in result.content
        (linked.worktree / "README.md").write_text("# changed\n")
        sha, changed = commit_all(linked.records, "work\n")
    finally:
        tools.close()
        listener.close()
    assert sha is not None and changed == ["README.md"]


def test_a_sparse_file_of_64_gib_is_neither_read_whole_searched_nor_committed(
    linked: Linked,
) -> None:
    with open(linked.worktree / "sparse.bin", "wb") as handle:
        handle.truncate(64 << 30)
        handle.seek(32 << 30)
        handle.write(b"needle\n")
    workspace = Workspace(linked.worktree)

    with pytest.raises(ToolError, match="binary"):
        workspace.read_file("sparse.bin")
    assert "needle" not in search(linked.worktree, "ne.dle", ".")
    with pytest.raises(CommitRefused, match="more than the"):
        commit_all(linked.records, "sparse\n")
    assert linked.head() == linked.base


@pytest.mark.parametrize(
    "target",
    [
        "/proc/self/root{outside}/secret.txt",
        "/proc/self/cwd/../outside/secret.txt",
        "/proc/{pid}/root{outside}/secret.txt",
        "/proc/{pid}/fd/{fd}",
        "../../../../../../../../../../proc/self/root{outside}/secret.txt",
    ],
)
def test_a_link_through_proc_leads_nowhere_for_every_tool(linked: Linked, target: str) -> None:
    held = os.open(linked.outside / "secret.txt", os.O_RDONLY)
    try:
        os.symlink(
            target.format(outside=linked.outside, pid=os.getpid(), fd=held),
            linked.worktree / "p",
        )
        workspace = Workspace(linked.worktree)
        for call in (
            lambda: workspace.read_file("p"),
            lambda: workspace.edit_file("p", "TOP", "NOT"),
            lambda: workspace.write_file("p/../x", "x\n"),
            lambda: workspace.list_dir("p"),
        ):
            with pytest.raises(ToolError, match=r"outside|not a directory"):
                call()
        assert "TOP SECRET" not in search(linked.worktree, "S.CRET", ".")
    finally:
        os.close(held)
    assert (linked.outside / "secret.txt").read_text() == "TOP SECRET\n"
    assert not (linked.outside / "x").exists()


async def test_names_too_long_and_paths_thousands_deep_are_tool_errors(linked: Linked) -> None:
    from aether_agent_runner.adapters.commands import CommandPolicy
    from aether_agent_runner.adapters.tools import ToolBox

    tools = ToolBox(Workspace(linked.worktree), CommandPolicy(None, check_paths=False))
    before = snapshot(linked.outside)
    try:
        long_name = await tools.call("write_file", {"path": "x" * 300, "content": "x"})
        newline = await tools.call(
            "write_file", {"path": "a\nb/../../../outside/x", "content": "x"}
        )
        climb = "/".join(["d"] * 50 + [".."] * 52) + "/outside/x"
        climbed = await tools.call("write_file", {"path": climb, "content": "x"})
        deep = await tools.call("read_file", {"path": "/".join(["d"] * 5000) + "/f"})
    finally:
        tools.close()
    assert long_name.is_error and "name too long" in long_name.content.lower()
    assert newline.is_error and climbed.is_error and "outside" in climbed.content
    assert deep.is_error
    assert snapshot(linked.outside) == before


async def test_a_token_cannot_push_refs_git_itself_would_not_send(
    served: GitBroker, nc: NatsClient, linked: Linked, tmp_path: Path
) -> None:
    # A raw client sends what git refuses to: names with "..", "@{", a lock file's name,
    # a branch under its own, the integration branch, a tag, HEAD.
    from dulwich.client import HttpGitClient
    from dulwich.repo import Repo

    _, mine = await attempt_of(nc, linked.repo, "m-refs")
    clone = tmp_path / "clone"
    url = remote(served, "m-refs", mine.push_token)
    assert (
        run_git(tmp_path, "clone", "-q", "--branch", mine.branch, url, str(clone)).returncode == 0
    )
    (clone / "evil.txt").write_text("evil\n")
    git(clone, "add", "evil.txt")
    git(clone, "commit", "-q", "-m", "evil")
    new = git(clone, "rev-parse", "HEAD").encode()
    own = f"refs/heads/{mine.branch}"
    names = [
        f"{own}/../../../../aether/m-refs",
        f"{own}@{{0}}",
        f"{own}.lock",
        f"{own}/sub",
        f"{own}/../t2/a1",
        "refs/heads/aether/m-refs",
        "refs/tags/v1",
        "HEAD",
        "refs/heads/../../config",
    ]
    before = set(git(linked.repo, "for-each-ref").splitlines())
    assert served.http is not None
    client = HttpGitClient(
        f"http://127.0.0.1:{served.http.port}/", username="agent", password=mine.push_token
    )
    refused = []
    with Repo(str(clone)) as local:
        for name in names:

            def update(refs: dict[Any, Any], name: str = name) -> dict[Any, Any]:
                return {**refs, name.encode(): new}

            try:
                result = client.send_pack("/m-refs", update, local.generate_pack_data)
            except Exception as error:  # refused before or while sending
                refused.append((name, str(error)))
                continue
            status = (result.ref_status or {}).get(name.encode())
            if status is not None:
                refused.append((name, status))

    assert [name for name, _ in refused] == names
    assert set(git(linked.repo, "for-each-ref").splitlines()) == before
    assert git(linked.repo, "rev-parse", mine.branch) == mine.base_sha
    assert not (linked.repo / ".git" / "refs" / "heads" / f"{mine.branch}.lock").exists()


def test_a_gitmodules_url_that_runs_a_command_is_never_fetched(
    linked: Linked, tmp_path: Path
) -> None:
    # ext:: runs its URL as a command; "--upload-pack" in a URL was another way in.
    (linked.worktree / ".gitmodules").write_text(
        '[submodule "lib"]\n\tpath = lib\n'
        f"\turl = ext::sh -c touch% {linked.marker}\n"
        '[submodule "two"]\n\tpath = two\n'
        f"\turl = --upload-pack=touch {linked.marker}\n"
        "\tupdate = !sh -c 'touch {linked.marker}'\n"
    )
    sha, _ = commit_all(linked.records, "modules\n")
    assert sha is not None
    # The gitlinks themselves, added by hand (as a pushed commit could carry them).
    for path in ("lib", "two"):
        git(linked.worktree, "update-index", "--add", "--cacheinfo", f"160000,{linked.base},{path}")
        (linked.worktree / path).mkdir()  # as a checkout leaves them: empty
    git(linked.worktree, "commit", "-q", "-m", "gitlinks")
    (linked.worktree / "README.md").write_text("# changed\n")
    sha, changed = commit_all(linked.records, "more\n")
    broker = GitRepositories()
    try:
        broker.prepare_repository(str(linked.repo), linked.branch, "aether/m-modules")
        outcome = broker.prepare_workspace(
            str(linked.repo),
            "aether/m-modules",
            "aether-tasks/m-modules/t1/a1",
            str(tmp_path / "next"),
        )
    finally:
        broker.close()

    assert sha is not None and changed == ["README.md"]
    assert (Path(outcome.worktree_path) / "lib").is_dir()
    assert list((Path(outcome.worktree_path) / "lib").iterdir()) == []
    assert not linked.marker.exists()


def _plant_inside(*candidates: Path) -> None:
    """Put a victim.txt in whichever candidate is a real directory right now, never
    through the link the swapper plants (the test's own write must not be the escape)."""
    for candidate in candidates:
        try:
            directory = os.open(candidate, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            out = os.open(
                "victim.txt",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                0o644,
                dir_fd=directory,
            )
            try:
                os.write(out, b"inside\n")
            finally:
                os.close(out)
            return
        except OSError:
            continue
        finally:
            os.close(directory)


def test_delete_and_list_while_a_directory_is_swapped_for_a_link_out(linked: Linked) -> None:
    # delete_file and list_dir (the swap test above covers read, write, edit, search).
    sub = linked.worktree / "sub"
    sub.mkdir()
    (linked.outside / "victim.txt").write_text("keep\n")
    real = linked.worktree / "sub.real"
    workspace = Workspace(linked.worktree)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(sub, real)
            with contextlib.suppress(OSError):
                os.symlink(linked.outside, sub)
            with contextlib.suppress(OSError):
                os.unlink(sub)
            with contextlib.suppress(OSError):
                os.rename(real, sub)

    swapper = threading.Thread(target=swap)
    swapper.start()
    listed_outside = 0
    try:
        for _ in range(400):
            _plant_inside(real, sub)
            with contextlib.suppress(ToolError, FileNotFoundError):
                workspace.delete_file("sub/victim.txt")
            with contextlib.suppress(ToolError, FileNotFoundError):
                if "secret.txt" in workspace.list_dir("sub", 2):
                    listed_outside += 1
    finally:
        stop.set()
        swapper.join()

    assert listed_outside == 0
    assert (linked.outside / "victim.txt").read_text() == "keep\n"
    assert (linked.outside / "secret.txt").read_text() == "TOP SECRET\n"


def test_the_brokers_checkout_never_writes_through_a_link_committed_or_planted(
    linked: Linked, tmp_path: Path
) -> None:
    # A tree with "link" a symlink out, checked out; then one where "link" is a directory
    # with a file in it, checked out over the first: the file must land inside. And a
    # directory the agent swapped for a link out before the broker reuses the worktree.
    from dulwich.objects import Blob, Tree
    from dulwich.repo import Repo

    from aether_git_broker.adapters.checkout import checkout
    from aether_git_broker.adapters.treemerge import Trees

    directory = tmp_path / "wt" / "reused"
    directory.mkdir(parents=True)
    relative_out = os.path.relpath(linked.outside, directory)
    before = snapshot(linked.outside)
    with Repo(str(linked.repo)) as repo:
        store = repo.object_store
        link = Blob.from_string(relative_out.encode())
        payload = Blob.from_string(b"pwned\n")
        first, inner, second = Tree(), Tree(), Tree()
        first.add(b"link", 0o120000, link.id)
        inner.add(b"pwned", 0o100644, payload.id)
        inner.add(b"secret.txt", 0o100644, payload.id)
        second.add(b"link", 0o040000, inner.id)
        for obj in (link, payload, first, inner, second):
            store.add_object(obj)
        trees = Trees(store)
        index_one, index_two = str(tmp_path / "index-1"), str(tmp_path / "index-2")
        checkout(repo, trees, first.id, str(directory), index_one)
        assert os.readlink(directory / "link") == relative_out
        checkout(repo, trees, second.id, str(directory), index_two, previous=index_one)
        assert (directory / "link").is_dir() and not (directory / "link").is_symlink()
        # The agent replaces the directory by a link out; the broker reuses the worktree.
        shutil.rmtree(directory / "link")
        os.symlink(relative_out, directory / "link")
        checkout(repo, trees, second.id, str(directory), index_one, previous=index_two)

    assert (directory / "link").is_dir() and not (directory / "link").is_symlink()
    assert (directory / "link" / "pwned").read_text() == "pwned\n"
    assert snapshot(linked.outside) == before


def test_a_gitignore_that_is_a_link_out_or_a_fifo_is_not_read_by_the_commit(
    linked: Linked,
) -> None:
    # The runner reads .gitignore files as data: one linked to a secret outside (which
    # the patterns could echo) or a FIFO (which would hang a plain open) is passed over.
    os.symlink(linked.outside / "secret.txt", linked.worktree / ".gitignore")
    (linked.worktree / "src" / "sub").mkdir()
    os.mkfifo(linked.worktree / "src" / ".gitignore")
    (linked.worktree / "src" / "sub" / "new.py").write_text("x = 1\n")

    sha, changed = commit_all(linked.records, "ignores\n")

    assert sha is not None and changed == [".gitignore", "src/sub/new.py"]
    # The link is committed as a link (its target's name), never the secret itself.
    assert git(linked.repo, "cat-file", "-p", f"{sha}:.gitignore") == str(
        linked.outside / "secret.txt"
    )
    assert "TOP SECRET" not in git(linked.repo, "log", "-p", "-1", sha)


@pytest.mark.parametrize("name", [".gitmodules", ".GitModules. ", "GITMOD~1"])
def test_a_gitmodules_link_is_neither_committed_checked_out_nor_merged(
    linked: Linked, tmp_path: Path, name: str
) -> None:
    # A linked .gitmodules is read through its link by the git of whoever clones the
    # merged branch (CVE-2018-11235); git now refuses to check one out.
    os.symlink(linked.outside / "secret.txt", linked.worktree / name)
    with pytest.raises(CommitRefused, match="symbolic link"):
        commit_all(linked.records, "modules\n")
    assert linked.head() == linked.base
    # Brought by a push instead: the broker merges it not, and checks it out not.
    from dulwich.objects import Blob, Commit, Tree
    from dulwich.repo import Repo

    with Repo(str(linked.repo)) as handle:
        link = Blob.from_string(str(linked.outside / "secret.txt").encode())
        handle.object_store.add_object(link)
        top = handle.object_store[handle[linked.base.encode()].tree]  # type: ignore[attr-defined]
        assert isinstance(top, Tree)
        top.add(name.encode(), 0o120000, link.id)
        handle.object_store.add_object(top)
        commit = Commit()
        commit.tree, commit.parents = top.id, [linked.base.encode()]
        commit.author = commit.committer = b"Agent <agent@example.com>"
        commit.author_time = commit.commit_time = 0
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"linked\n"
        handle.object_store.add_object(commit)
        bad = commit.id.decode()
    git(linked.repo, "branch", "-f", "linked-modules", bad)
    broker = GitRepositories()
    try:
        broker.prepare_repository(str(linked.repo), "main", "aether/m-linked")
        merged = broker.merge(
            str(linked.repo),
            "aether/m-linked",
            since_sha=linked.base,
            mission_id="m-linked",
            task_id="t1",
            attempt=1,
            commit_sha=bad,
            now=datetime.now(UTC),
        )
        broker.prepare_repository(str(linked.repo), "linked-modules", "aether/m-linked-2")
        with pytest.raises(ValueError, match="as a link"):
            broker.prepare_workspace(
                str(linked.repo),
                "aether/m-linked-2",
                "aether-tasks/m-linked-2/t1/a1",
                str(tmp_path / "next"),
            )
    finally:
        broker.close()
    assert merged.kind == "conflict" and ".gitmodules link" in merged.detail
    assert git(linked.repo, "rev-parse", "aether/m-linked") == linked.base
