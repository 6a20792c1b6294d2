"""A pooled worktree only the agent runner's file tools wrote to: its index names the
paths they wrote (the runner's optional index extension), and the next checkout looks
only on the ways to them, trusting the rest as the index says (the agent runner's
commit and the broker's checkout together, as they run)."""

from __future__ import annotations

import array
import hashlib
import os
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dulwich.objects import ObjectID

from aether_agent_runner.adapters import scan as scan_module
from aether_agent_runner.adapters.git import GitDir, commit_all, snapshot
from aether_agent_runner.adapters.workspace import Workspace
from aether_git_broker.adapters import checkout as checkout_module
from aether_git_broker.adapters import reuse as reuse_module
from aether_git_broker.adapters.checkout import (
    END_EXTENSION,
    WRITTEN_EXTENSION,
    read_claim,
    read_index,
)
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.domain import WorkspaceOutcome

from .conftest import write_and_commit
from .pooled import INTEGRATION, merge, no_whole_scan, reuses, workspace

Git = Callable[..., str]


def test_a_worktree_the_file_tools_wrote_to_is_reused_looking_only_on_their_ways(
    project: Path, worktrees_dir: Path, git: Git, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    first = workspace(broker, project, worktrees_dir, "t1")
    other = workspace(broker, project, worktrees_dir, "t9")

    # Another task changes files off the first one's ways, and is merged first.
    other_path = Path(other.worktree_path)
    (other_path / "lib" / "deep" / "er" / "x.py").write_text("x = 2\n")
    (other_path / "docs" / "api" / "index.md").write_text("API\n")
    (other_path / "README.md").write_text("# demo, merged first\n")  # on the ways, not written
    other_records = GitDir.linked(other_path, Path(other.git_dir), other.branch)
    other_sha, _ = commit_all(other_records, "other\n")
    assert other_sha is not None
    merge(broker, project, base, "t9", other_sha)
    broker.remove_worktree(str(project), other.worktree_path)

    # The first task's agent: new files in new and existing directories, an edit, a
    # deletion, an ignored file.
    worktree = Path(first.worktree_path)
    records = GitDir.linked(worktree, Path(first.git_dir), first.branch)
    tools = Workspace(worktree)
    tools.write_file("notes/new/deep.txt", "deep\n")
    tools.write_file("app/extra.py", "extra = 1\n")
    tools.edit_file("app/main.py", "hello", "HELLO")
    tools.delete_file("app/util.py")
    tools.write_file("app/trace.log", "ignored\n")
    sha, changed = commit_all(records, "work\n", scanned=snapshot(records, written=tools.touched))
    assert sha is not None
    assert changed == ["app/extra.py", "app/main.py", "app/util.py", "notes/new/deep.txt"]
    index = read_index(str(Path(first.git_dir) / "index"))
    assert index is not None and index.written is not None
    assert sorted(index.written) == [
        b"app/extra.py",
        b"app/main.py",
        b"app/trace.log",
        b"app/util.py",
        b"notes/new/deep.txt",
    ]
    claim = read_claim(str(Path(first.git_dir) / "index"))
    assert claim is not None and claim.written == sorted(index.written)
    assert claim.base.decode() == git(worktree, "rev-parse", f"{first.base_sha}^{{tree}}").strip()
    head = merge(broker, project, base, "t1", sha)
    assert broker.recycle_worktree(str(project), first.worktree_path)

    no_whole_scan(monkeypatch)
    second = workspace(broker, project, worktrees_dir, "t2")

    path = Path(second.worktree_path)
    assert second.base_sha == head
    assert git(path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert git(path, "diff-files", "--quiet") == ""
    assert (path / "lib" / "deep" / "er" / "x.py").read_text() == "x = 2\n"
    assert (path / "docs" / "api" / "index.md").read_text() == "API\n"
    assert (path / "README.md").read_text() == "# demo, merged first\n"
    assert (path / "app" / "main.py").read_text() == "print('HELLO')\n"
    assert not (path / "app" / "trace.log").exists()
    assert not (path / "app" / "util.py").exists()
    assert (path / "notes" / "new" / "deep.txt").read_text() == "deep\n"


def test_a_worktree_where_more_than_the_file_tools_wrote_is_scanned_whole(
    project: Path, worktrees_dir: Path, git: Git
) -> None:
    """A commit from a scan of every directory (a command ran, or the attempt resumed)
    leaves no extension: whatever else changed in the worktree is put right."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    first = workspace(broker, project, worktrees_dir, "t1")
    worktree = Path(first.worktree_path)
    records = GitDir.linked(worktree, Path(first.git_dir), first.branch)
    Workspace(worktree).write_file("app/extra.py", "extra = 1\n")
    (worktree / "lib" / "deep" / "er" / "x.py").write_text("x = 9\n")  # a command's
    (worktree / "lib" / "deep" / "er" / "out.log").write_text("ignored\n")
    sha, _ = commit_all(records, "work\n")
    assert sha is not None
    index = read_index(str(Path(first.git_dir) / "index"))
    assert index is not None and index.written is None
    merge(broker, project, base, "t1", sha)
    broker.recycle_worktree(str(project), first.worktree_path)

    second = Path(workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert git(second, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert (second / "lib" / "deep" / "er" / "x.py").read_text() == "x = 9\n"


@pytest.mark.parametrize("path", [b"../out", b"/etc/passwd", b"a/.git/hooks/x", b"a//b", b""])
def test_an_extension_naming_an_unsafe_path_is_not_believed(tmp_path: Path, path: bytes) -> None:
    body = b"\0".join([b"ok.txt", path])
    data = b"DIRC" + struct.pack(">LL", 2, 0)
    data += WRITTEN_EXTENSION + struct.pack(">L", len(body)) + body
    data += hashlib.sha1(data, usedforsecurity=False).digest()
    (tmp_path / "index").write_bytes(data)
    index = read_index(str(tmp_path / "index"))
    assert index is not None and index.entries == {} and index.written is None


def test_an_index_whose_paths_lead_out_is_not_believed(
    project: Path, worktrees_dir: Path, git: Git
) -> None:
    """The broker removes what the index names and the new tree lacks: an index naming
    a path out of the worktree (a runner gone wrong) makes it scan the worktree whole,
    and nothing outside is touched."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=2)
    broker.prepare_repository(str(project), "main", INTEGRATION)
    first = workspace(broker, project, worktrees_dir, "t1")
    broker.recycle_worktree(str(project), first.worktree_path)
    (index_path,) = (worktrees_dir / ".pool").glob("*/*.admin/index")
    victim = worktrees_dir / "victim.txt"
    victim.write_text("not the broker's\n")
    index = read_index(str(index_path))
    assert index is not None
    entries: list[tuple[bytes, int, ObjectID, checkout_module.Stat]] = [
        (path, entry.mode, entry.sha, entry.stat) for path, entry in index.entries.items()
    ]
    some = entries[0]
    entries.append((b"../../victim.txt", 0o100644, some[2], some[3]))
    checkout_module.write_index(str(index_path), entries)
    body = b"README.md"
    data = index_path.read_bytes()[:-20]
    data += WRITTEN_EXTENSION + struct.pack(">L", len(body)) + body
    index_path.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())
    forged = read_index(str(index_path))
    assert forged is not None and forged.written == [b"README.md"]

    second = Path(workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert victim.read_text() == "not the broker's\n"
    assert git(second, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""


KINDS = ["edit", "delete", "exec", "link"]


def _tree_files(git: Git, path: Path, rev: str) -> str:
    return git(path, "ls-tree", "-r", "--full-tree", rev)


@pytest.mark.parametrize("seed", range(6))
def test_a_reuse_by_what_changed_leaves_exactly_the_new_tree(
    repo: Path, worktrees_dir: Path, git: Git, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chained tasks whose agents only use the file tools, with other tasks' changes
    merged between them (edits, new and deleted files and directories, an executable, a
    symbolic link, a file turned directory): each next worktree, reused by what changed
    since the broker's checkout, is exactly the new head for git, files and index; the
    unusual cases fall back to the whole checkout, and most reuses take the short way."""
    rng = random.Random(seed)
    files = {
        f"d{d}/s{s}/f{f}.txt": f"{d}{s}{f}\n" for d in range(3) for s in range(2) for f in range(3)
    }
    write_and_commit(repo, {".gitignore": "*.log\n", "top.txt": "top\n", **files}, "a project")
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    results = reuses(monkeypatch)
    for round_ in range(8):
        task = f"t{round_}"
        ws = workspace(broker, repo, worktrees_dir, task)
        path = Path(ws.worktree_path)
        assert git(path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
        assert git(path, "diff-index", "--cached", "--quiet", "HEAD") == ""
        tracked = sorted(git(path, "ls-files").split())
        # Another task's changes, merged first (not on this task's paths).
        other = workspace(broker, repo, worktrees_dir, f"o{round_}")
        other_path = Path(other.worktree_path)
        assert git(other_path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
        regular = [t for t in tracked if not (path / t).is_symlink()]
        mine = set(rng.sample(regular, 2))
        others = [t for t in regular if t not in mine and t != ".gitignore"]
        for number, victim in enumerate(rng.sample(others, 3)):
            # A file turned directory once: left to the whole checkout.
            kind = "dir" if round_ == 5 and number == 0 else rng.choice(KINDS)
            target = other_path / victim
            if kind == "edit":
                target.write_text(f"other {round_}\n")
            elif kind == "delete":
                target.unlink()
            elif kind == "exec":
                target.chmod(0o755)
            elif kind == "link":
                target.unlink()
                target.symlink_to("../top.txt")
            else:
                target.unlink()
                target.mkdir()
                (target / "inside.txt").write_text("now a directory\n")
        (other_path / f"new{round_}" / "deep").mkdir(parents=True)
        (other_path / f"new{round_}" / "deep" / "n.txt").write_text("new\n")
        other_records = GitDir.linked(other_path, Path(other.git_dir), other.branch)
        other_sha, _ = commit_all(other_records, "other\n")
        assert other_sha is not None
        merge(broker, repo, base, f"o{round_}", other_sha)
        broker.remove_worktree(str(repo), other.worktree_path)
        # This task's agent: the file tools only.
        tools = Workspace(path)
        edited, deleted = sorted(mine)
        tools.write_file(edited, f"edited in {task}\n")
        tools.delete_file(deleted)
        tools.write_file(f"{task}/made/here.txt", f"{task}\n")
        tools.write_file(f"d{rng.randrange(3)}/{task}.txt", "beside\n")
        tools.write_file(f"d0/{task}.log", "ignored\n")
        records = GitDir.linked(path, Path(ws.git_dir), ws.branch)
        sha, _ = commit_all(records, f"{task}\n", scanned=snapshot(records, written=tools.touched))
        assert sha is not None
        # The runner's index, its base's with what changed replaced, is the commit's
        # (looked at without git refreshing it, which would drop the runner's claim).
        assert git(path, "--no-optional-locks", "status", "--porcelain", "-uall") == ""
        assert git(path, "diff-index", "--cached", "--quiet", "HEAD") == ""
        head = merge(broker, repo, base, task, sha)
        assert broker.recycle_worktree(str(repo), ws.worktree_path)

        following = workspace(broker, repo, worktrees_dir, f"n{round_}")
        next_path = Path(following.worktree_path)
        assert following.base_sha == head
        assert git(next_path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
        assert git(next_path, "diff-files", "--quiet") == ""
        assert git(next_path, "diff-index", "--cached", "--quiet", "HEAD") == ""
        on_disk = sorted(
            str(p.relative_to(next_path))
            for p in next_path.rglob("*")
            if (p.is_file() or p.is_symlink()) and ".git" not in p.relative_to(next_path).parts
        )
        assert on_disk == sorted(git(next_path, "ls-files").split())
        assert git(next_path, "ls-files", "-s") != ""
        assert _tree_files(git, next_path, "HEAD") == _tree_files(git, repo, INTEGRATION)
        broker.remove_worktree(str(repo), following.worktree_path)
    assert results.count(None) <= 1, results


def _one_task(broker: GitRepositories, repo: Path, worktrees_dir: Path, base: str) -> Path:
    """A task whose agent wrote one file with the file tools, merged; its worktree pooled.
    Returns the pooled worktree's index."""
    ws = workspace(broker, repo, worktrees_dir, "t1")
    tools = Workspace(Path(ws.worktree_path))
    tools.write_file("lib/z.py", "z = 1\n")
    records = GitDir.linked(Path(ws.worktree_path), Path(ws.git_dir), ws.branch)
    sha, _ = commit_all(records, "t1\n", scanned=snapshot(records, written=tools.touched))
    assert sha is not None
    merge(broker, repo, base, "t1", sha)
    assert broker.recycle_worktree(str(repo), ws.worktree_path)
    (index,) = (worktrees_dir / ".pool").glob("*/*.admin/index")
    return index


@pytest.mark.parametrize("case", ["restarted", "another base", "no trailer"])
def test_a_claim_the_broker_cannot_match_with_its_own_checkout_is_checked_whole(
    project: Path, worktrees_dir: Path, git: Git, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No record of the checkout (a broker started since), a claim about another tree,
    or an index without the runner's trailer: the worktree is looked at file by file."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    index = _one_task(broker, project, worktrees_dir, base)
    data = index.read_bytes()[:-20]
    if case == "restarted":
        broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    elif case == "another base":
        claimed = data.index(b"AETB") + 8
        data = data[:claimed] + b"0" * 40 + data[claimed + 40 :]
    else:
        data = data[: data.index(END_EXTENSION)]
    index.write_bytes(data + hashlib.sha1(data, usedforsecurity=False).digest())
    results = reuses(monkeypatch)
    second = Path(workspace(broker, project, worktrees_dir, "t2").worktree_path)

    assert results == [None]
    assert git(second, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert (second / "lib" / "z.py").read_text() == "z = 1\n"


@pytest.mark.parametrize(
    "trailer",
    [
        END_EXTENSION + struct.pack(">LL", 4, 4),  # the claim would start in the header
        END_EXTENSION + struct.pack(">LL", 4, 1 << 30),  # past the end
        END_EXTENSION + struct.pack(">LL", 8, 12),  # not its size
    ],
)
def test_a_trailer_pointing_anywhere_else_is_no_claim(tmp_path: Path, trailer: bytes) -> None:
    body = b"ok.txt"
    data = b"DIRC" + struct.pack(">LL", 2, 0)
    data += WRITTEN_EXTENSION + struct.pack(">L", len(body)) + body
    data += b"AETB" + struct.pack(">L", 40) + b"a" * 40 + trailer
    data += hashlib.sha1(data, usedforsecurity=False).digest()
    (tmp_path / "index").write_bytes(data)
    assert read_claim(str(tmp_path / "index")) is None
    good = data[: -20 - len(trailer)] + END_EXTENSION + struct.pack(">LL", 4, 12)
    (tmp_path / "index").write_bytes(good + hashlib.sha1(good, usedforsecurity=False).digest())
    claim = read_claim(str(tmp_path / "index"))
    assert claim is not None and claim.written == [b"ok.txt"] and claim.base == b"a" * 40


def test_the_records_of_checkouts_are_bounded_and_go_with_the_pools(
    project: Path, worktrees_dir: Path, tmp_path: Path
) -> None:
    records = checkout_module.Checkouts(max_entries=5)
    written = checkout_module.Written([b"a", b"b", b"c"], [b"1", b"2", b"3"], 1, frozenset())
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        records.remember(str(tmp_path / name / "index"), ObjectID(b"a" * 40), written)
    # Six entries in all are over the bound: the oldest record goes.
    assert len(records) == 1
    assert records.take(str(tmp_path / "one" / "index")) is None
    taken = records.take(str(tmp_path / "two" / "index"))
    assert taken is not None and taken.entry(b"b") == b"2" and taken.entry(b"d") is None
    assert records.take(str(tmp_path / "two" / "index")) is None  # taken once

    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    base = broker.prepare_repository(str(project), "main", INTEGRATION).base_sha
    _one_task(broker, project, worktrees_dir, base)
    assert len(broker._checkouts) == 1
    assert broker.drop_idle_pools([]) != []
    assert len(broker._checkouts) == 0


def test_the_runner_copies_the_brokers_index_by_its_offsets_and_its_word_on_racy_entries(
    project: Path, worktrees_dir: Path, git: Git, tmp_path: Path
) -> None:
    """The broker's index ends with where each entry begins and which paths were just
    written: the runner's commit copies it without walking it entry by entry, and an
    entry the broker names whose stat data is not older than the index is not copied
    with it (a file changed in the same instant could hold other bytes)."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    broker.prepare_repository(str(project), "main", INTEGRATION)
    ws = workspace(broker, project, worktrees_dir, "t1")
    index_path = Path(ws.git_dir) / "index"
    st = index_path.stat()
    read = scan_module._raw_index(index_path, st)
    assert read is not None and isinstance(read.starts, array.array)  # told, not walked
    listed = sorted(git(Path(ws.worktree_path), "ls-files").split())
    assert sorted(read.by_path) == [p.encode() for p in listed]

    # An index the broker writes with a file whose time is ahead of the index's.
    ahead = tmp_path / "ahead.txt"
    ahead.write_text("x\n")
    future = time.time_ns() + 60_000_000_000
    os.utime(ahead, ns=(future, future))
    sha = ObjectID(b"a" * 40)
    forged = tmp_path / "index"
    checkout_module.write_index(
        str(forged), [(b"ahead.txt", 0o100644, sha, ahead.stat()), (b"b.txt", 0o100644, sha, None)]
    )
    told = scan_module._raw_index(forged, forged.stat())
    assert told is not None and told.unkept == {b"ahead.txt"}
    assert told.name(1) == b"b.txt" and told.sound(1)

    # The runner's commit on the ways, from the broker's index: git reads it as true.
    tools = Workspace(Path(ws.worktree_path))
    tools.write_file("lib/new.py", "new = 1\n")
    records = GitDir.linked(Path(ws.worktree_path), Path(ws.git_dir), ws.branch)
    sha_done, _ = commit_all(records, "t1\n", scanned=snapshot(records, written=tools.touched))
    assert sha_done is not None
    path = Path(ws.worktree_path)
    assert git(path, "--no-optional-locks", "status", "--porcelain", "-uall") == ""
    assert git(path, "diff-index", "--cached", "--quiet", "HEAD") == ""


def _merged_writes(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, files: dict[str, str]
) -> tuple[WorkspaceOutcome, Path, str]:
    """Task t1, whose agent wrote ``files`` with the file tools, committed and merged:
    its workspace, worktree and the integration branch's new head."""
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    ws = workspace(broker, repo, worktrees_dir, "t1")
    path = Path(ws.worktree_path)
    tools = Workspace(path)
    for name, text in files.items():
        tools.write_file(name, text)
    records = GitDir.linked(path, Path(ws.git_dir), ws.branch)
    sha, _ = commit_all(records, "t1\n", scanned=snapshot(records, written=tools.touched))
    assert sha is not None
    return ws, path, merge(broker, repo, base, "t1", sha)


@pytest.mark.parametrize("meddled", ["", "a second link", "its permissions"])
def test_a_written_file_the_next_tree_holds_is_kept_unless_it_is_not_what_a_checkout_writes(
    repo: Path,
    worktrees_dir: Path,
    git: Git,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    meddled: str,
) -> None:
    """A chained task's file, merged as the file tools wrote it, is what the next tree
    holds: the next reuse keeps it (the same file, not written again) and the worktree is
    exactly the new head. One with a second link to it, or permissions a checkout would
    not give it, is written again."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    ws, path, head = _merged_writes(
        broker, repo, worktrees_dir, {"lib/kept.py": "kept = 1\n", "top.txt": "edited\n"}
    )
    if meddled == "a second link":
        os.link(path / "lib" / "kept.py", tmp_path / "outside.py")
    elif meddled == "its permissions":
        (path / "lib" / "kept.py").chmod(0o600)
    before = (path / "lib" / "kept.py").stat().st_ino, (path / "top.txt").stat().st_ino
    assert broker.recycle_worktree(str(repo), ws.worktree_path)

    results = reuses(monkeypatch)
    no_whole_scan(monkeypatch)
    following = workspace(broker, repo, worktrees_dir, "t2")
    next_path = Path(following.worktree_path)
    assert following.base_sha == head
    after = (next_path / "lib" / "kept.py").stat().st_ino, (next_path / "top.txt").stat().st_ino
    if meddled:
        assert results == [1] and after[0] != before[0] and after[1] == before[1]
        assert (next_path / "lib" / "kept.py").stat().st_nlink == 1
        assert (next_path / "lib" / "kept.py").stat().st_mode & 0o777 == 0o644
    else:
        assert results == [0] and after == before
    assert git(next_path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert git(next_path, "diff-files", "--quiet") == ""
    assert git(next_path, "diff-index", "--cached", "--quiet", "HEAD") == ""
    assert (next_path / "lib" / "kept.py").read_text() == "kept = 1\n"
    assert (next_path / "top.txt").read_text() == "edited\n"


def test_a_written_file_behind_a_linked_directory_is_not_opened_to_be_kept(
    repo: Path, worktrees_dir: Path, git: Git, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory on the way to a written file turned into a link (to a copy holding
    the same file): the file is not opened through it to be kept, and the reuse is left
    to the whole checkout, which leaves exactly the new head."""
    broker = GitRepositories(worktrees_dir=str(worktrees_dir), pool_capacity=1)
    ws, path, head = _merged_writes(broker, repo, worktrees_dir, {"lib/kept.py": "kept = 1\n"})
    elsewhere = tmp_path / "elsewhere"
    (path / "lib").rename(elsewhere)
    (path / "lib").symlink_to(elsewhere)
    assert broker.recycle_worktree(str(repo), ws.worktree_path)

    opened: list[bytes] = []
    holds = reuse_module._holds

    def recorded(at: bytes, *args: Any) -> bool:
        opened.append(at)
        return holds(at, *args)

    monkeypatch.setattr(reuse_module, "_holds", recorded)
    results = reuses(monkeypatch)
    following = workspace(broker, repo, worktrees_dir, "t2")
    next_path = Path(following.worktree_path)
    assert following.base_sha == head
    assert opened == [] and results == [None]
    assert not (next_path / "lib").is_symlink()
    assert (next_path / "lib" / "kept.py").read_text() == "kept = 1\n"
    assert git(next_path, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert (elsewhere / "kept.py").read_text() == "kept = 1\n"
