"""A pooled worktree where the agent's commands ran: the runner scanned every file before
it committed, with nothing of the agent running, and its index says what the worktree
holds besides the commit's tree (ignored files and directories, nested ``.git``
directories, special files, directories holding nothing committed). The broker removes
those and reuses the worktree by what differs between the trees, without scanning it a
second time (the agent runner's commit and the broker's checkout together, as they run)."""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from aether_agent_runner.adapters import git as runner_git
from aether_agent_runner.adapters import scan as scan_module
from aether_agent_runner.adapters.git import GitDir, commit_all
from aether_agent_runner.adapters.workspace import Workspace
from aether_git_broker.adapters import checkout as checkout_module
from aether_git_broker.adapters import reuse as reuse_module
from aether_git_broker.adapters.checkout import EXTRAS_EXTENSION, read_claim
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.domain import WorkspaceOutcome

from .conftest import write_and_commit
from .pooled import INTEGRATION, MISSION, merge, no_whole_scan, reuses, workspace

Git = Callable[..., str]


def _exact(git: Git, path: Path, repo: Path) -> None:
    """``path`` holds exactly the integration head, for git, its files and its index."""
    assert git(path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert git(path, "diff-files", "--quiet") == ""
    assert git(path, "diff-index", "--cached", "--quiet", "HEAD") == ""
    on_disk = sorted(
        str(p.relative_to(path))
        for p in path.rglob("*")
        if not (p.is_dir() and not p.is_symlink()) and p.relative_to(path).parts[0] != ".git"
    )
    assert on_disk == sorted(git(path, "ls-files").split())
    directories = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_dir()}
    tracked_dirs = {str(Path(f).parent) for f in on_disk} - {"."}
    tracked_dirs |= {str(parent) for d in tracked_dirs for parent in Path(d).parents} - {"."}
    assert directories - {".git"} <= tracked_dirs, "a directory that holds nothing committed"
    assert git(path, "ls-tree", "-r", "--full-tree", "HEAD") == git(
        repo, "ls-tree", "-r", "--full-tree", INTEGRATION
    )


def test_a_worktree_where_commands_ran_is_reused_without_a_second_scan(
    project: Path, worktrees_dir: Path, git: Git, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    first = workspace(broker, project, worktrees_dir, "t1")
    other = workspace(broker, project, worktrees_dir, "t9")

    # Another task, merged first: an edit, new files, and files where the first task
    # leaves a FIFO and an empty directory.
    other_path = Path(other.worktree_path)
    (other_path / "lib" / "deep" / "er" / "x.py").write_text("x = 2\n")
    (other_path / "docs" / "notes.txt").write_text("notes\n")
    (other_path / "docs" / "pipe").write_text("a file now\n")
    (other_path / "empty" / "inside").mkdir(parents=True)
    (other_path / "empty" / "inside" / "file.txt").write_text("merged\n")
    other_records = GitDir.linked(other_path, Path(other.git_dir), other.branch)
    other_sha, _ = commit_all(other_records, "other\n")
    assert other_sha is not None
    merge(broker, project, base, "t9", other_sha)
    broker.remove_worktree(str(project), other.worktree_path)

    # The first task: the file tools and what its commands left behind.
    worktree = Path(first.worktree_path)
    Workspace(worktree).write_file("app/extra.py", "extra = 1\n")
    (worktree / "lib" / "y.py").write_text("y = 2\n")
    (worktree / "lib" / "out.log").write_text("ignored\n")
    (worktree / "lib" / "__pycache__").mkdir()
    (worktree / "lib" / "__pycache__" / "y.pyc").write_bytes(b"\0\1")
    (worktree / "build" / "deep").mkdir(parents=True)
    (worktree / "build" / "deep" / "a.o").write_bytes(b"\0")
    (worktree / "empty" / "inside" / "deeper").mkdir(parents=True)
    (worktree / "only-ignored").mkdir()
    (worktree / "only-ignored" / "x.log").write_text("ignored\n")
    (worktree / "vendor" / "lib" / ".git").mkdir(parents=True)
    (worktree / "vendor" / "lib" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (worktree / "vendor" / "lib" / "kept.txt").write_text("committed\n")
    os.mkfifo(worktree / "docs" / "pipe")
    (worktree / "docs" / "notes.log").write_text("ignored\n")
    records = GitDir.linked(worktree, Path(first.git_dir), first.branch)
    sha, changed = commit_all(records, "work\n", settled=True)
    assert sha is not None
    assert changed == ["app/extra.py", "lib/y.py", "vendor/lib/kept.txt"]
    claim = read_claim(str(Path(first.git_dir) / "index"))
    assert claim is not None and claim.index is not None
    assert claim.extras == [
        b"build",
        b"docs/notes.log",
        b"docs/pipe",
        b"empty",
        b"lib/__pycache__",
        b"lib/out.log",
        b"only-ignored",
        b"vendor/lib/.git",
    ]
    assert claim.base.decode() == git(worktree, "rev-parse", f"{sha}^{{tree}}").strip()
    assert claim.index.names == sorted(git(worktree, "ls-files").encode().split())
    # The runner's index is git's own, stat data and all (looked at without a refresh,
    # which would drop the claim).
    assert git(worktree, "--no-optional-locks", "status", "--porcelain", "-uall") == ""
    head = merge(broker, project, base, "t1", sha)
    assert broker.recycle_worktree(str(project), first.worktree_path)

    no_whole_scan(monkeypatch)
    second = workspace(broker, project, worktrees_dir, "t2")

    path = Path(second.worktree_path)
    assert second.base_sha == head
    _exact(git, path, project)
    assert (path / "lib" / "deep" / "er" / "x.py").read_text() == "x = 2\n"
    assert (path / "docs" / "notes.txt").read_text() == "notes\n"
    assert (path / "lib" / "y.py").read_text() == "y = 2\n"
    assert (path / "vendor" / "lib" / "kept.txt").read_text() == "committed\n"
    assert (path / "docs" / "pipe").read_text() == "a file now\n"
    assert (path / "empty" / "inside" / "file.txt").read_text() == "merged\n"
    assert not (path / "empty" / "inside" / "deeper").exists()
    for gone in ("build", "only-ignored", "lib/out.log", "lib/__pycache__", "vendor/lib/.git"):
        assert not os.path.lexists(path / gone), gone


def test_a_commit_not_known_settled_says_nothing_of_the_worktree(
    project: Path, worktrees_dir: Path
) -> None:
    """Unconfined, a command's processes may outlive it: the scan is no promise, and
    the broker checks the worktree file by file."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    broker.prepare_repository(str(project), "main", INTEGRATION)
    ws = workspace(broker, project, worktrees_dir, "t1")
    (Path(ws.worktree_path) / "lib" / "y.py").write_text("y = 3\n")
    records = GitDir.linked(Path(ws.worktree_path), Path(ws.git_dir), ws.branch)
    sha, _ = commit_all(records, "work\n")
    assert sha is not None
    assert read_claim(str(Path(ws.git_dir) / "index")) is None


def test_a_scan_that_could_not_look_everywhere_makes_no_claim(
    project: Path, worktrees_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    broker.prepare_repository(str(project), "main", INTEGRATION)
    ws = workspace(broker, project, worktrees_dir, "t1")
    worktree = Path(ws.worktree_path)
    (worktree / "lib" / "y.py").write_text("y = 3\n")
    (worktree / "locked").mkdir()
    (worktree / "locked" / "secret.txt").write_text("unreadable\n")
    opened = scan_module.open_dir

    def refusing(fd: int, name: str) -> int:
        if name == "locked":
            raise PermissionError("not here")
        return opened(fd, name)

    monkeypatch.setattr(scan_module, "open_dir", refusing)
    records = GitDir.linked(worktree, Path(ws.git_dir), ws.branch)
    sha, _ = commit_all(records, "work\n", settled=True)
    assert sha is not None
    assert read_claim(str(Path(ws.git_dir) / "index")) is None


def test_extras_that_will_not_go_leave_the_worktree_to_the_whole_checkout(
    project: Path, worktrees_dir: Path, git: Git, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    ws = workspace(broker, project, worktrees_dir, "t1")
    worktree = Path(ws.worktree_path)
    (worktree / "lib" / "y.py").write_text("y = 3\n")
    (worktree / "build").mkdir()
    (worktree / "build" / "a.o").write_bytes(b"\0")
    records = GitDir.linked(worktree, Path(ws.git_dir), ws.branch)
    sha, _ = commit_all(records, "work\n", settled=True)
    assert sha is not None
    merge(broker, project, base, "t1", sha)
    assert broker.recycle_worktree(str(project), ws.worktree_path)
    results = reuses(monkeypatch)
    # A directory that will not go (the reuse's removals only).
    monkeypatch.setattr(reuse_module, "remove_tree", lambda *a, **k: False)
    second = Path(workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert results == [None]
    _exact(git, second, project)


def _a_command_task(
    broker: GitRepositories, project: Path, worktrees_dir: Path
) -> tuple[WorkspaceOutcome, str]:
    """Task t1, whose command edited a file and left an ignored one, committed after a
    scan of every file: its workspace and commit."""
    ws = workspace(broker, project, worktrees_dir, "t1")
    worktree = Path(ws.worktree_path)
    (worktree / "lib" / "y.py").write_text("y = 3\n")
    (worktree / "x.log").write_text("ignored\n")
    records = GitDir.linked(worktree, Path(ws.git_dir), ws.branch)
    sha, _ = commit_all(records, "work\n", settled=True)
    assert sha is not None
    return ws, sha


def _forge(index: Path, extras: list[bytes]) -> None:
    """Put ``extras`` in the claim of the runner's index at ``index``."""
    data = index.read_bytes()[:-20]
    claimed = data.index(EXTRAS_EXTENSION)
    (size,) = struct.unpack_from(">L", data, claimed + 4)
    body = b"\0".join(extras)
    rest = data[claimed + 8 + size :]
    data = data[:claimed] + EXTRAS_EXTENSION + struct.pack(">L", len(body)) + body + rest
    index.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())


@pytest.mark.parametrize(
    "extras",
    [
        [b"lib/y.py"],  # a file of the tree
        [b"lib"],  # a directory of the tree
        [b"lib/y.py/under"],  # through a file
        [b"nowhere/x.log"],  # in a directory the tree does not have
        [b".git"],  # the worktree's own
        [b"../victim.txt"],  # out of the worktree
    ],
)
def test_a_claim_of_extras_not_beside_the_tree_is_not_believed(
    project: Path,
    worktrees_dir: Path,
    git: Git,
    extras: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    ws, sha = _a_command_task(broker, project, worktrees_dir)
    merge(broker, project, base, "t1", sha)
    victim = worktrees_dir / MISSION / "victim.txt"
    victim.write_text("not the broker's\n")
    assert broker.recycle_worktree(str(project), ws.worktree_path)
    (index,) = (worktrees_dir / ".pool").glob("*/*.admin/index")
    _forge(index, extras)
    results = reuses(monkeypatch)
    second = Path(workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert results == [None]
    assert victim.read_text() == "not the broker's\n"
    assert (second / "lib" / "y.py").read_text() == "y = 3\n"
    _exact(git, second, project)


def test_an_index_read_that_is_not_the_bases_is_written_whole(
    project: Path, worktrees_dir: Path, git: Git
) -> None:
    """After a whole scan the commit copies the entries the index read vouched for;
    an index holding others besides (here one staged by hand, of a file gone, in place of
    one dropped from it) is not copied, and the new index is exactly the commit's."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    broker.prepare_repository(str(project), "main", INTEGRATION)
    ws = workspace(broker, project, worktrees_dir, "t1")
    worktree = Path(ws.worktree_path)
    (worktree / "stray.txt").write_text("staged, then gone\n")
    git(worktree, "add", "stray.txt")
    (worktree / "stray.txt").unlink()
    git(worktree, "rm", "-q", "--cached", "lib/y.py")
    (worktree / "docs" / "guide.md").write_text("a command's\n")
    records = GitDir.linked(worktree, Path(ws.git_dir), ws.branch)
    sha, changed = commit_all(records, "work\n", settled=True)
    assert sha is not None and changed == ["docs/guide.md"]
    staged = sorted(line.split("\t")[1] for line in git(worktree, "ls-files", "-s").splitlines())
    assert staged == sorted(git(worktree, "ls-tree", "-r", "--name-only", "HEAD").split())
    assert git(worktree, "--no-optional-locks", "status", "--porcelain", "-uall") == ""
    assert git(worktree, "diff-index", "--cached", "--quiet", "HEAD") == ""


def test_the_runners_index_is_read_by_its_offsets_and_believed_only_if_they_fit(
    project: Path, worktrees_dir: Path, git: Git
) -> None:
    """The runner's index says where each entry begins (as the broker's own does): the
    broker slices it rather than walking it, and an index whose offsets do not fit its
    entries, or that has none, is no claim."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    ws, sha = _a_command_task(broker, project, worktrees_dir)
    worktree = Path(ws.worktree_path)
    index = Path(ws.git_dir) / "index"

    claim = read_claim(str(index))
    assert claim is not None and claim.index is not None and claim.extras == [b"x.log"]
    assert claim.index.names == sorted(git(worktree, "ls-files").encode().split())
    merge(broker, project, base, "t1", sha)
    assert broker.recycle_worktree(str(project), ws.worktree_path)
    (pooled,) = (worktrees_dir / ".pool").glob("*/*.admin/index")
    original = pooled.read_bytes()[:-20]
    offsets = original.index(checkout_module.OFFSETS_EXTENSION)
    (size,) = struct.unpack_from(">L", original, offsets + 4)
    # The second entry said to begin four bytes later than it does.
    second = offsets + 8 + 4 + 4
    (start,) = struct.unpack_from(">L", original, second)
    moved = original[:second] + struct.pack(">L", start + 4) + original[second + 4 :]
    # No offsets at all: the claim follows the entries at once.
    none = original[:offsets] + original[offsets + 8 + size :]
    for data in (moved, none):
        pooled.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())
        assert read_claim(str(pooled)) is None

    path = Path(workspace(broker, project, worktrees_dir, "t2").worktree_path)
    _exact(git, path, project)


def test_too_many_extras_make_no_claim() -> None:
    extras = scan_module.Extras(
        paths=[f"f{i}.log".encode() for i in range(runner_git.MAX_EXTRAS + 1)], entered=[b""]
    )
    assert runner_git._extras_claim(extras, {b""}) is None
    extras.paths.pop()
    assert runner_git._extras_claim(extras, {b""}) == sorted(extras.paths)
    extras.sure = False
    assert runner_git._extras_claim(extras, {b""}) is None


def _command_like(rng: random.Random, path: Path, git: Git, task: str, part: int) -> None:
    """What a command might leave in a worktree: edits and deletions (of the tracked
    files of one ``part`` of two, so that two tasks do not clash), new files and
    directories, ignored ones, a nested repository, a FIFO, an empty directory."""
    tracked = [t for t in git(path, "ls-files").split() if t != ".gitignore"]
    mine = [t for t in tracked if int(hashlib.sha1(t.encode()).hexdigest(), 16) % 2 == part]
    for victim in rng.sample(mine, min(2, len(mine))):
        if rng.random() < 0.5:
            (path / victim).write_text(f"{task} was here\n")
        else:
            (path / victim).unlink()
    top = rng.choice(["d0", "d1", "d2", f"{task}-new"])
    (path / top / "made").mkdir(parents=True, exist_ok=True)
    (path / top / "made" / f"{task}.txt").write_text(f"{task}\n")
    kinds = ["log", "build", "empty", "nested", "fifo", "cache"]
    for kind in rng.sample(kinds, 3):
        where = path / rng.choice(["", "d0", "d1/s0", "d2/s1"])
        where.mkdir(parents=True, exist_ok=True)
        if kind == "log":
            (where / f"{task}.log").write_text("ignored\n")
        elif kind == "build":
            (where / "build" / "obj").mkdir(parents=True, exist_ok=True)
            (where / "build" / "obj" / "a.o").write_bytes(b"\0")
        elif kind == "empty":
            (where / f"{task}-empty" / "deeper").mkdir(parents=True, exist_ok=True)
        elif kind == "nested":
            (where / f"{task}-clone" / ".git").mkdir(parents=True, exist_ok=True)
            (where / f"{task}-clone" / ".git" / "HEAD").write_text("ref: refs/heads/x\n")
        elif kind == "fifo":
            os.mkfifo(where / f"{task}.fifo")
        else:
            (where / "__pycache__").mkdir(exist_ok=True)
            (where / "__pycache__" / f"{task}.pyc").write_bytes(b"\0")


@pytest.mark.parametrize("seed", range(6))
def test_chained_tasks_with_commands_each_get_exactly_the_new_tree(
    repo: Path, worktrees_dir: Path, git: Git, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chained tasks whose agents ran commands, with other tasks' changes merged
    between them: each next worktree, reused by the runner's word on what it held, is
    exactly the new head, and every reuse takes the short way."""
    rng = random.Random(seed)
    files = {
        f"d{d}/s{s}/f{f}.txt": f"{d}{s}{f}\n" for d in range(3) for s in range(2) for f in range(3)
    }
    ignore = "*.log\nbuild/\n__pycache__/\n"
    write_and_commit(repo, {".gitignore": ignore, "top.txt": "top\n", **files}, "a project")
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    results = reuses(monkeypatch)
    for round_ in range(8):
        task = f"t{round_}"
        ws = workspace(broker, repo, worktrees_dir, task)
        path = Path(ws.worktree_path)
        _exact(git, path, repo)
        other = workspace(broker, repo, worktrees_dir, f"o{round_}")
        other_path = Path(other.worktree_path)
        _command_like(rng, other_path, git, f"o{round_}", 0)
        other_records = GitDir.linked(other_path, Path(other.git_dir), other.branch)
        other_sha, _ = commit_all(other_records, "other\n", settled=True)
        assert other_sha is not None
        merge(broker, repo, base, f"o{round_}", other_sha)
        broker.remove_worktree(str(repo), other.worktree_path)
        _command_like(rng, path, git, task, 1)
        records = GitDir.linked(path, Path(ws.git_dir), ws.branch)
        sha, _ = commit_all(records, f"{task}\n", settled=True)
        assert sha is not None
        assert read_claim(str(Path(ws.git_dir) / "index")) is not None
        # The runner's index, the scan's clean entries copied as they were, is the
        # commit's (looked at without git refreshing it, which would drop the claim).
        assert git(path, "--no-optional-locks", "status", "--porcelain", "-uall") == ""
        assert git(path, "diff-index", "--cached", "--quiet", "HEAD") == ""
        head = merge(broker, repo, base, task, sha)
        assert broker.recycle_worktree(str(repo), ws.worktree_path)
    assert head
    following = Path(workspace(broker, repo, worktrees_dir, "last").worktree_path)
    _exact(git, following, repo)
    assert None not in results, results
