"""Checking trees out into worktrees: the result is what git itself would leave."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dulwich.objects import Blob, ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.checkout import UnsafePath, checkout
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.treemerge import Trees

Git = Callable[..., str]


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tree or name known as checked yet (the caches are the process's)."""
    from aether_git_broker.adapters import checkout as checkout_module

    monkeypatch.setattr(checkout_module, "_CHECKED_TREES", set())
    monkeypatch.setattr(checkout_module, "_SAFE_NAMES", set())


@pytest.fixture
def rich_repo(tmp_path: Path, git: Git) -> Path:
    """Executable files, a symlink, a submodule entry, odd names, nested directories."""
    path = tmp_path / "rich"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "bin").mkdir()
    (path / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (path / "bin" / "run.sh").chmod(0o755)
    (path / "deep" / "er" / "est").mkdir(parents=True)
    (path / "deep" / "er" / "est" / "leaf.txt").write_text("leaf\n")
    (path / "My Notes ünï.md").write_text("notes\n")
    (path / "empty.txt").write_text("")
    (path / "link").symlink_to("bin/run.sh")
    (path / "a-b").write_text("sorts before a/b\n")
    (path / "a").mkdir()
    (path / "a" / "b").write_text("a/b\n")
    git(path, "add", "-A")
    git(path, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/lib")
    git(path, "commit", "-q", "-m", "rich")
    return path


def test_a_worktree_is_exactly_the_branch_as_git_sees_it(
    rich_repo: Path, worktrees_dir: Path, git: Git
) -> None:
    broker = GitRepositories()
    broker.prepare_repository(str(rich_repo), "main", "aether/m-1")
    outcome = broker.prepare_workspace(
        str(rich_repo), "aether/m-1", "aether-tasks/m-1/t1/a1", str(worktrees_dir / "t1")
    )
    wt = Path(outcome.worktree_path)
    assert git(wt, "status", "--porcelain", "--ignore-submodules=none") == ""
    index = git(wt, "ls-files", "-s").splitlines()
    tree = git(rich_repo, "ls-tree", "-r", "main").splitlines()
    assert [line.split(maxsplit=3)[::3] for line in index] == [
        [line.split()[0], line.split("\t")[1]] for line in tree
    ]
    assert os.stat(wt / "bin" / "run.sh").st_mode & stat.S_IXUSR
    assert not os.stat(wt / "empty.txt").st_mode & stat.S_IXUSR
    assert os.readlink(wt / "link") == "bin/run.sh"
    assert (wt / "vendor" / "lib").is_dir()
    assert (wt / "My Notes ünï.md").read_text() == "notes\n"
    # The index holds real stat data: git trusts it without reading the files again.
    assert git(wt, "diff-files", "--quiet") == ""
    broker.close()


def test_attributes_and_filter_drivers_are_ignored_by_the_checkout(
    repo: Path, worktrees_dir: Path, git: Git, commit: Callable[..., str]
) -> None:
    """Files are written as their blobs hold them: a line-ending attribute changes
    nothing, and a filter driver configured in the repository is never started."""
    marker = repo.parent / "smudged"
    git(repo, "config", "filter.evil.smudge", f"touch {marker}; cat")
    git(repo, "config", "filter.evil.clean", f"touch {marker}; cat")
    attributes = "*.txt text eol=crlf\n*.py filter=evil\n"
    commit(repo, {".gitattributes": attributes, "notes.txt": "one\ntwo\n", "a.py": "x\n"}, "attrs")
    marker.unlink(missing_ok=True)
    broker = GitRepositories()
    broker.prepare_repository(str(repo), "main", "aether/m-1")
    wt = Path(
        broker.prepare_workspace(
            str(repo), "aether/m-1", "aether-tasks/m-1/t1/a1", str(worktrees_dir / "t1")
        ).worktree_path
    )
    assert (wt / "notes.txt").read_bytes() == b"one\ntwo\n"
    assert (wt / "a.py").read_bytes() == b"x\n"
    assert not marker.exists()
    broker.close()


@pytest.mark.parametrize("name", [b"..", b".git", b".GIT", b"."])
def test_a_tree_that_would_escape_its_directory_is_refused(
    repo: Path, tmp_path: Path, name: bytes
) -> None:
    with Repo(str(repo)) as dulwich_repo:
        blob = Blob.from_string(b"owned\n")
        dulwich_repo.object_store.add_object(blob)
        trees = Trees(dulwich_repo.object_store)
        inner = trees.write({b"payload": (0o100644, blob.id)})
        evil = trees.write({name: (0o040000, inner), b"ok.txt": (0o100644, blob.id)})
        target = tmp_path / "out"
        target.mkdir()
        with pytest.raises(UnsafePath):
            checkout(dulwich_repo, trees, ObjectID(evil), str(target), str(tmp_path / "index"))
    assert not (tmp_path / "payload").exists()
    assert list(target.iterdir()) == []


def test_a_task_commit_with_a_path_no_checkout_may_write_is_not_merged(
    repo: Path, worktrees_dir: Path, git: Git
) -> None:
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", "aether/m-1").base_sha
    with Repo(str(repo)) as dulwich_repo:
        blob = Blob.from_string(b"[core]\n\tfsmonitor = touch /tmp/pwned\n")
        dulwich_repo.object_store.add_object(blob)
        trees = Trees(dulwich_repo.object_store)
        root = dict(trees.entries(ObjectID(git(repo, "rev-parse", "main^{tree}").encode())))
        root[b".git"] = (0o040000, trees.write({b"config": (0o100644, blob.id)}))
        evil_tree = trees.write(root)
    sha = git(repo, "commit-tree", evil_tree.decode(), "-p", base, "-m", "sneaky")
    outcome = broker.merge(
        str(repo),
        "aether/m-1",
        since_sha=base,
        mission_id="m-1",
        task_id="t1",
        attempt=1,
        commit_sha=sha,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert outcome.kind == "conflict"
    assert outcome.files == (".git/config",)
    assert "no checkout may write" in outcome.detail
    assert git(repo, "rev-parse", "aether/m-1") == base
    broker.close()


def test_a_checkout_finds_the_objects_a_git_gc_packs_while_it_reads(
    repo: Path, worktrees_dir: Path, git: Git, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git packs loose objects in the background after a large commit: one deleted
    between dulwich's look at the packs and its look at the loose files is found in
    the new pack, not reported missing."""
    broker = GitRepositories()
    broker.prepare_repository(str(repo), "main", "aether/m-1")
    store = broker._open(str(repo)).repo.object_store
    loose = store._get_loose_object
    packed: list[bool] = []

    def gc_meanwhile(sha: bytes) -> object:
        if not packed:
            git(repo, "repack", "-a", "-d", "-q")
            git(repo, "prune-packed")
            packed.append(True)
        return loose(sha)

    monkeypatch.setattr(store, "_get_loose_object", gc_meanwhile)
    outcome = broker.prepare_workspace(
        str(repo), "aether/m-1", "aether-tasks/m-1/t1/a1", str(worktrees_dir / "t1")
    )
    assert packed
    assert git(Path(outcome.worktree_path), "status", "--porcelain") == ""
    broker.close()


@pytest.mark.usefixtures("unchecked")
def test_a_trees_names_are_checked_once_and_a_new_bad_one_still_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree's id names its entries: once its names passed, listing it again checks
    none of them; a tree that differs (here by one bad name) is checked in full."""
    from aether_git_broker.adapters import checkout as checkout_module

    checked: list[bytes] = []
    real = checkout_module._check_name

    def counting(name: bytes, prefix: bytes) -> None:
        checked.append(prefix + name)
        real(name, prefix)

    monkeypatch.setattr(checkout_module, "_check_name", counting)
    with Repo(str(repo)) as dulwich_repo:
        blob = Blob.from_string(b"x\n")
        dulwich_repo.object_store.add_object(blob)
        trees = Trees(dulwich_repo.object_store)
        inner = trees.write({b"a.py": (0o100644, blob.id), b"b.py": (0o100644, blob.id)})
        good = trees.write({b"src": (0o040000, inner), b"README": (0o100644, blob.id)})
        _, files = checkout_module.list_tree(trees, ObjectID(good))
        assert sorted(f.path for f in files) == [b"README", b"src/a.py", b"src/b.py"]
        assert sorted(checked) == [b"README", b"src", b"src/a.py", b"src/b.py"]

        checked.clear()
        _, again = checkout_module.list_tree(trees, ObjectID(good))
        assert again == files and checked == []

        bad = trees.write({b"src": (0o040000, inner), b".GIT": (0o040000, inner)})
        with pytest.raises(UnsafePath):
            checkout_module.list_tree(trees, ObjectID(bad))
        with pytest.raises(UnsafePath):  # refused again, not remembered as checked
            checkout_module.list_tree(trees, ObjectID(bad))


@pytest.mark.usefixtures("unchecked")
def test_a_directory_that_gains_a_name_has_only_that_name_checked(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a name is safe depends on the name alone: a changed directory is listed
    whole, but only the names not seen before are read as git's readers would read them
    (``.git`` in NTFS's and HFS+'s ways), and a bad name is refused however often."""
    from aether_git_broker.adapters import checkout as checkout_module

    read: list[bytes] = []
    real = checkout_module.is_dot_git

    def counting(name: bytes) -> bool:
        read.append(name)
        return real(name)

    monkeypatch.setattr(checkout_module, "is_dot_git", counting)
    with Repo(str(repo)) as dulwich_repo:
        blob = Blob.from_string(b"x\n")
        dulwich_repo.object_store.add_object(blob)
        trees = Trees(dulwich_repo.object_store)
        names = {f"t{n}.txt".encode(): (0o100644, blob.id) for n in range(50)}
        checkout_module.list_tree(trees, ObjectID(trees.write(names)))
        assert sorted(read) == sorted(names)

        read.clear()
        grown = trees.write({**names, b"t50.txt": (0o100644, blob.id)})
        _, files = checkout_module.list_tree(trees, ObjectID(grown))
        assert len(files) == 51 and read == [b"t50.txt"]

        bad = trees.write({**names, b"git~1": (0o100644, blob.id)})
        for _ in range(2):
            read.clear()
            with pytest.raises(UnsafePath):
                checkout_module.list_tree(trees, ObjectID(bad))
            assert read == [b"git~1"]


@pytest.mark.usefixtures("unchecked")
def test_a_gitmodules_file_seen_before_does_not_let_a_gitmodules_link_through(
    repo: Path,
) -> None:
    """A name is remembered as safe by itself, but ``.gitmodules`` may be checked out as
    a file and not as a link: seen as a file first, it is still refused as a link."""
    from aether_git_broker.adapters import checkout as checkout_module

    with Repo(str(repo)) as dulwich_repo:
        blob = Blob.from_string(b"[submodule]\n")
        dulwich_repo.object_store.add_object(blob)
        trees = Trees(dulwich_repo.object_store)
        for name in (b".gitmodules", b".GitModules. ", b"GITMOD~1"):
            as_file = trees.write({name: (0o100644, blob.id), b"a": (0o100644, blob.id)})
            checkout_module.list_tree(trees, ObjectID(as_file))
            as_link = trees.write({name: (0o120000, blob.id), b"a": (0o100644, blob.id)})
            with pytest.raises(UnsafePath, match="as a link"):
                checkout_module.list_tree(trees, ObjectID(as_link))
