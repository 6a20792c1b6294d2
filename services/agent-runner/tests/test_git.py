"""Committing the agent's work in a linked worktree."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest
from dulwich.file import FileLocked
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, ObjectID

from aether_agent_runner.adapters import scan as scan_module
from aether_agent_runner.adapters.git import (
    _FANOUTS,
    GitDir,
    add_object,
    changed_paths,
    commit_all,
    commit_message_trailers,
    move_branch,
    reset_to,
)
from aether_agent_runner.adapters.scan import StatCache


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_commit_all_records_new_changed_and_deleted_files_on_the_task_branch(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "keep.txt").write_text("keep\n")
    (repo / "gone.txt").write_text("gone\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)
    git("branch", "task", cwd=repo)
    git("worktree", "add", "-q", str(tmp_path / "wt"), "task", cwd=repo)
    wt = tmp_path / "wt"
    (wt / "new" / "deep").mkdir(parents=True)
    (wt / "new" / "deep" / "file.py").write_text("x = 1\n")
    (wt / "keep.txt").write_text("changed\n")
    (wt / "gone.txt").unlink()

    sha, changed = commit_all(
        GitDir.discover(wt, "task"), "Work\n\nAether-Task: t1\nAether-Attempt: 2\n"
    )

    assert sha is not None
    assert changed == ["gone.txt", "keep.txt", "new/deep/file.py"]
    assert git("rev-parse", "task", cwd=repo).strip() == sha
    assert git("ls-tree", "-r", "--name-only", "task", cwd=repo).split() == [
        "keep.txt",
        "new/deep/file.py",
    ]
    assert git("status", "--short", cwd=wt) == ""
    assert commit_message_trailers(sha, GitDir.discover(wt, "task").store()) == {
        "Aether-Attempt": "2",
        "Aether-Task": "t1",
    }


def test_nothing_to_commit_is_reported_as_none(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "a").write_text("a\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)
    assert commit_all(GitDir.clone(repo, "main"), "nothing\n") == (None, [])


def _linked(tmp_path: Path) -> tuple[Path, Path, GitDir]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "tracked.log").write_text("tracked although ignored\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "src").mkdir()
    (repo / "src" / ".gitignore").write_text("local.txt\n")
    (repo / "src" / "app.py").write_text("x = 1\n")
    git("add", "-f", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)
    git("branch", "task", cwd=repo)
    git("worktree", "add", "-q", str(tmp_path / "wt"), "task", cwd=repo)
    wt = (tmp_path / "wt").resolve()
    return repo, wt, GitDir.discover(wt, "task")


def test_ignored_files_stay_out_and_tracked_ones_are_committed_as_git_would(
    tmp_path: Path,
) -> None:
    repo, wt, records = _linked(tmp_path)
    (wt / "debug.log").write_text("ignored\n")
    (wt / "build").mkdir()
    (wt / "build" / "out.o").write_text("ignored\n")
    (wt / "src" / "local.txt").write_text("ignored below\n")
    (wt / "tracked.log").write_text("changed\n")
    (wt / "link").symlink_to("src/app.py")
    (wt / "run.sh").chmod(0o644)

    sha, changed = commit_all(records, "work\n")

    assert changed == ["link", "run.sh", "tracked.log"]
    listing = git("ls-tree", "-r", "task", cwd=repo)
    assert "120000 blob" in listing.split("\tlink")[0].splitlines()[-1]
    assert "100644 blob" in listing.split("\trun.sh")[0].splitlines()[-1]
    assert git("show", "task:link", cwd=repo) == "src/app.py"
    # git itself agrees the worktree is committed (its ignored files aside).
    assert git("status", "--porcelain", cwd=wt) == ""
    assert sha == git("rev-parse", "task", cwd=repo).strip()


def test_reset_restores_tracked_files_removes_untracked_and_keeps_ignored(
    tmp_path: Path,
) -> None:
    repo, wt, records = _linked(tmp_path)
    base = git("rev-parse", "task", cwd=repo).strip()
    (wt / "src" / "app.py").write_text("broken\n")
    (wt / "run.sh").unlink()
    (wt / "new" / "deep").mkdir(parents=True)
    (wt / "new" / "deep" / "file.py").write_text("new\n")
    (wt / "src" / "local.txt").write_text("kept\n")
    (wt / "extra.py").write_text("committed, then reset away\n")
    commit_all(records, "to be undone\n")

    assert reset_to(records, base)

    assert git("rev-parse", "task", cwd=repo).strip() == base
    assert (wt / "src" / "app.py").read_text() == "x = 1\n"
    assert (wt / "run.sh").stat().st_mode & 0o100
    assert not (wt / "new").exists() and not (wt / "extra.py").exists()
    assert (wt / "src" / "local.txt").read_text() == "kept\n"
    assert changed_paths(records) == []
    assert git("status", "--porcelain", cwd=wt) == ""
    assert not reset_to(records, base)


def test_a_change_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """The index's stat data spares reading unchanged files, but a file rewritten in
    place with its old size and modification time put back is still read again."""
    _, wt, records = _linked(tmp_path)
    app = wt / "src" / "app.py"
    old = time.time_ns() - 3600 * 10**9
    os.utime(app, ns=(old, old))
    (wt / "other.txt").write_text("x\n")
    commit_all(records, "the index now records app.py's stat data\n")
    cache = StatCache(records.admin / "index")
    assert cache.sha(b"src/app.py", app.stat(), 0o100644) is not None  # trusted as is

    with app.open("r+b") as file:
        file.write(b"y")
    os.utime(app, ns=(old, old))

    assert app.stat().st_mtime_ns == old
    assert changed_paths(records) == ["src/app.py"]


def test_the_stat_data_compared_is_the_same_read_from_entries_or_as_stored(
    tmp_path: Path,
) -> None:
    """``StatCache.sha`` compares keys built from the index's bytes where it can slice
    them (``_raw_stat_keys``), else from its parsed entries: the same keys either way,
    for git's index and for the runner's."""
    _, wt, records = _linked(tmp_path)
    index = records.admin / "index"
    for _ in range(2):  # git's index, then the runner's after a commit
        st = index.stat()
        cache = StatCache(index)
        raw = cache.raw_entries()
        assert raw is not None
        parsed = scan_module._stat_keys(index, st, cache._entries)
        assert dict(scan_module._raw_stat_keys(index, st, raw)) == dict(parsed)
        assert len(parsed) == len(git("ls-files", cwd=wt).split())
        (wt / "src" / "new.py").write_text("y = 2\n")
        commit_all(records, "another\n")


def test_a_rewritten_index_is_read_again_not_taken_from_the_parsed_copy(tmp_path: Path) -> None:
    """Parsed indexes are kept by the identity of their file; the commit's new index is
    a new file, so what it records is seen at once."""
    _, wt, records = _linked(tmp_path)
    assert changed_paths(records) == []  # the index git wrote, parsed and kept
    (wt / "other.txt").write_text("x\n")
    old = time.time_ns() - 3600 * 10**9
    os.utime(wt / "other.txt", ns=(old, old))
    before = StatCache(records.admin / "index")
    assert before.sha(b"other.txt", (wt / "other.txt").stat(), 0o100644) is None

    sha, _ = commit_all(records, "adds other.txt\n")

    assert sha is not None
    after = StatCache(records.admin / "index")
    assert after.sha(b"other.txt", (wt / "other.txt").stat(), 0o100644) is not None
    assert git("status", "--porcelain", cwd=wt) == ""


def test_an_index_that_does_not_read_only_means_every_file_is_read(tmp_path: Path) -> None:
    """The index is a cache written without a sync: one a crash left torn or empty
    costs reading the files, never a change overlooked."""
    _, wt, records = _linked(tmp_path)
    app = wt / "src" / "app.py"
    old = time.time_ns() - 3600 * 10**9
    os.utime(app, ns=(old, old))
    (wt / "other.txt").write_text("x\n")
    commit_all(records, "the index now records app.py's stat data\n")
    index = records.admin / "index"
    index.write_bytes(index.read_bytes()[:-7])  # torn: the checksum does not match
    with app.open("r+b") as file:
        file.write(b"y")
    os.utime(app, ns=(old, old))

    assert StatCache(index).sha(b"src/app.py", app.stat(), 0o100644) is None
    assert changed_paths(records) == ["src/app.py"]
    index.write_bytes(b"")
    assert changed_paths(records) == ["src/app.py"]
    sha, changed = commit_all(records, "app.py changed\n")
    assert sha is not None and changed == ["src/app.py"]
    assert git("status", "--porcelain", cwd=wt) == ""


def test_the_task_branch_moves_only_from_where_it_was_and_never_past_a_held_lock(
    tmp_path: Path,
) -> None:
    """The branch is moved as git moves it (lock, look again, rename), not synced: a
    commit whose branch someone else moved is not recorded, and a held lock stops it."""
    repo, wt, records = _linked(tmp_path)
    base = git("rev-parse", "task", cwd=repo).strip()
    (wt / "other.txt").write_text("x\n")
    sha, _ = commit_all(records, "first\n")
    assert sha is not None
    assert git("rev-parse", "task", cwd=repo).strip() == sha
    assert not (records.common / "refs" / "heads" / "task.lock").exists()

    # Someone else moved it: a move from where the runner last saw it is refused.
    git("update-ref", "refs/heads/task", base, cwd=repo)
    assert move_branch(records, ObjectID(sha.encode()), ObjectID(b"1" * 40)) is False
    assert git("rev-parse", "task", cwd=repo).strip() == base

    lock = records.common / "refs" / "heads" / "task.lock"
    lock.write_text("held\n")
    (wt / "second.txt").write_text("y\n")
    with pytest.raises(FileLocked):
        commit_all(records, "blocked\n")
    assert lock.read_text() == "held\n"
    assert git("rev-parse", "task", cwd=repo).strip() == base
    lock.unlink()

    assert reset_to(records, sha) is True
    assert git("rev-parse", "task", cwd=repo).strip() == sha
    assert git("status", "--porcelain", cwd=wt) == ""
    assert not lock.exists()


def _tree_files(store: DiskObjectStore, tree: bytes) -> dict[bytes, tuple[int, ObjectID]]:
    return {
        e.path: (e.mode, e.sha)
        for e in store.iter_tree_contents(ObjectID(tree))
        if e.path is not None and e.mode is not None and e.sha is not None
    }


def test_a_commit_builds_the_same_tree_as_one_built_whole(tmp_path: Path) -> None:
    """Only the changed directories are rebuilt; every other tree is the base's. The
    result must be the tree dulwich's ``commit_tree`` builds from all the files, over
    adds, edits, mode changes, deletions that empty a directory, and a file turned into a
    directory and a directory into a file."""
    from dulwich.index import commit_tree
    from dulwich.objects import Blob

    from aether_agent_runner.adapters.git import changed_tree

    repo, _, records = _linked(tmp_path)
    store = records.store()
    base: dict[bytes, tuple[int, ObjectID]] = {}
    for path in [b"a.txt", b"d/x.txt", b"d/e/y.txt", b"d/e/z.txt", b"f", b"g/h/i.txt", b"k/l"]:
        blob = Blob.from_string(path + b"\n")
        store.add_object(blob)
        base[path] = (0o100644, blob.id)
    base_tree = commit_tree(store, [(p, s, m) for p, (m, s) in base.items()])

    def blob(text: bytes) -> ObjectID:
        made = Blob.from_string(text)
        store.add_object(made)
        return made.id

    cases: list[dict[bytes, tuple[int, ObjectID] | None]] = [
        {b"a.txt": (0o100644, blob(b"edited"))},
        {b"new/deep/er/file.py": (0o100644, blob(b"x"))},
        {b"d/e/y.txt": None, b"d/e/z.txt": None},  # d/e goes away
        {b"f": None, b"f/inside.txt": (0o100644, blob(b"f is a directory"))},
        {b"k/l": None, b"k": (0o100644, blob(b"k is a file"))},
        {b"d/x.txt": (0o100755, base[b"d/x.txt"][1])},  # mode only
        {b"g/h/i.txt": (0o120000, blob(b"../a.txt"))},  # a symlink now
        dict.fromkeys(base),  # nothing left
    ]
    for case in cases:
        files = dict(base)
        for path, entry in case.items():
            if entry is None:
                files.pop(path, None)
            else:
                files[path] = entry
        built = changed_tree(store, base_tree, files, sorted(case))
        # Read back as written here (the trees built whole below are the same objects).
        assert _tree_files(store, built) == files, case
        assert git("cat-file", "-t", built.decode(), cwd=repo) == "tree\n"
        whole = commit_tree(store, [(p, s, m) for p, (m, s) in files.items()])
        assert built == whole, case
    assert git("fsck", "--strict", "--no-dangling", cwd=repo) == ""


def test_a_lock_a_killed_writer_left_on_an_object_does_not_stop_the_commit(
    tmp_path: Path,
) -> None:
    """A runner killed while dulwich wrote a loose object leaves the object's ``.lock``;
    the same file committed again (the attempt resumed, or its next attempt) writes the
    same object, and the commit failed on that lock every time. The object is written
    past it, whole, and git reads the commit."""
    repo, wt, records = _linked(tmp_path)
    content = b"print('resumed')\n"
    (wt / "src" / "new.py").write_bytes(content)
    blob = Blob.from_string(content).id.decode()
    objects = repo / ".git" / "objects" / blob[:2]
    objects.mkdir(exist_ok=True)
    (objects / f"{blob[2:]}.lock").write_bytes(b"half a write")

    sha, changed = commit_all(records, "Resumed\n\nAether-Task: t1\nAether-Attempt: 1\n")

    assert sha is not None and changed == ["src/new.py"]
    assert git("cat-file", "-p", f"{sha}:src/new.py", cwd=repo).encode() == content
    assert git("fsck", "--no-dangling", cwd=repo) == ""


def test_objects_are_written_whole_beside_existing_ones_and_after_a_prune_of_their_directory(
    tmp_path: Path,
) -> None:
    """An object already stored is not written again but has its time refreshed (an
    age-based prune spares it); a directory of objects pruned since this process last
    wrote into it is made again; git reads every commit."""
    repo, wt, records = _linked(tmp_path)
    (wt / "src" / "first.py").write_text("first = 1\n")
    first, _ = commit_all(records, "First\n")
    assert first is not None
    store = records.store()
    old = time.time() - 30 * 86400
    blob = git("rev-parse", f"{first}:src/first.py", cwd=repo).strip()
    loose = repo / ".git" / "objects" / blob[:2] / blob[2:]
    os.utime(loose, (old, old))

    (wt / "src" / "again.py").write_text("first = 1\n")  # the same blob
    warm_up = Blob.from_string(b"a warm-up object\n")
    objects = repo / ".git" / "objects"

    def fanout_of(text: str) -> Path:
        return objects / Blob.from_string(text.encode()).id.decode()[:2]

    # A new blob whose directory of objects holds nothing yet: the first commit's objects
    # are named by their content and its time, and may have made any directory.
    content = next(
        text
        for text in (f"second = {n}\n" for n in itertools.count(2))
        if not fanout_of(text).exists() and fanout_of(text).name != warm_up.id.decode()[:2]
    )
    (wt / "src" / "second.py").write_text(content)
    fanout = fanout_of(content)
    # Its directory known to this process, then pruned (git's prune removes an emptied
    # one).
    fanout.mkdir()
    add_object(store, warm_up)
    _FANOUTS.add(str(fanout))
    fanout.rmdir()
    second, changed = commit_all(records, "Second\n")

    assert second is not None and changed == ["src/again.py", "src/second.py"]
    assert loose.stat().st_mtime > old + 86400
    assert git("cat-file", "-p", f"{second}:src/second.py", cwd=repo) == content
    assert git("fsck", "--no-dangling", cwd=repo) == ""
    assert not list((repo / ".git" / "objects").rglob("tmp_obj_*"))
