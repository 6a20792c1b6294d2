"""Merge bases, raw object writes and branch moves, checked against the git CLI."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from dulwich.file import FileLocked
from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether_git_broker.adapters.history import Commits, merge_bases
from aether_git_broker.adapters.objects import ObjectIO
from aether_git_broker.adapters.refs import add_branch, move_branch
from aether_git_broker.adapters.treemerge import Trees, changed_paths

Git = Callable[..., str]


def _sha(value: str) -> ObjectID:
    return ObjectID(value.encode())


def test_merge_bases_agree_with_git_on_random_histories(tmp_path: Path, git: Git) -> None:
    rng = random.Random(7)
    repo = tmp_path / "dag"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    tree = git(repo, "write-tree")
    commits: list[str] = []
    with Repo(str(repo)) as dulwich_repo:
        objects = ObjectIO(dulwich_repo.object_store)
        for n in range(60):
            parents = rng.sample(commits, k=min(len(commits), rng.choice([1, 1, 1, 2])))
            # Dates out of order on purpose: the walk must not trust them.
            stamp = 1_700_000_000 + rng.randint(0, 10_000)
            text = f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents)
            text += f"author A <a@b> {stamp} +0000\ncommitter A <a@b> {stamp} +0000\n\nc{n}\n"
            commits.append(objects.write(b"commit", text.encode()).decode())
        history = Commits(dulwich_repo.object_store)
        for _ in range(80):
            one, two = rng.sample(commits, 2)
            expected = set(git(repo, "merge-base", "--all", one, two).split())
            assert {b.decode() for b in merge_bases(history, _sha(one), _sha(two))} == expected


def test_criss_cross_merges_have_two_bases(tmp_path: Path, git: Git) -> None:
    repo = tmp_path / "criss"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    tree = git(repo, "write-tree")
    root = git(repo, "commit-tree", tree, "-m", "root")
    a = git(repo, "commit-tree", tree, "-p", root, "-m", "a")
    b = git(repo, "commit-tree", tree, "-p", root, "-m", "b")
    x = git(repo, "commit-tree", tree, "-p", a, "-p", b, "-m", "x")
    y = git(repo, "commit-tree", tree, "-p", b, "-p", a, "-m", "y")
    with Repo(str(repo)) as dulwich_repo:
        bases = merge_bases(Commits(dulwich_repo.object_store), _sha(x), _sha(y))
    assert sorted(b.decode() for b in bases) == sorted([a, b])


def test_written_trees_and_commits_are_what_git_would_write(repo: Path, git: Git) -> None:
    head = git(repo, "rev-parse", "HEAD")
    with Repo(str(repo)) as dulwich_repo:
        trees = Trees(dulwich_repo.object_store)
        root = trees.entries(_sha(git(repo, "rev-parse", "HEAD^{tree}")))
        # Reversed input order: the writer must sort as git does (a dir as "name/").
        shuffled = dict(reversed(list(root.items())))
        shuffled[b"app.py"] = shuffled[b"README.md"]
        written = trees.write(shuffled)
        objects = ObjectIO(dulwich_repo.object_store)
        commit = objects.write(
            b"commit",
            f"tree {written.decode()}\nparent {head}\n"
            "author A <a@b> 1700000000 +0000\ncommitter A <a@b> 1700000000 +0000\n\nm\n".encode(),
        )
        assert objects.read(commit)[0] == 1
    listing = git(repo, "ls-tree", "--name-only", written.decode()).split()
    assert listing == ["README.md", "app.py", "app"]  # "app" sorts as "app/"
    assert git(repo, "cat-file", "-t", commit.decode()) == "commit"
    assert git(repo, "fsck", "--no-progress", "--no-dangling") == ""


def test_changed_paths_skip_equal_directories(
    repo: Path, git: Git, commit: Callable[..., str]
) -> None:
    before = git(repo, "rev-parse", "HEAD^{tree}")
    commit(repo, {"app/new.py": "n\n", "README.md": None}, "change")
    after = git(repo, "rev-parse", "HEAD^{tree}")
    with Repo(str(repo)) as dulwich_repo:
        changes = changed_paths(Trees(dulwich_repo.object_store), _sha(before), _sha(after))
    assert sorted(changes) == [b"README.md", b"app/new.py"]
    assert changes[b"README.md"] is None


def test_moving_a_branch_is_a_compare_and_swap_with_a_reflog(
    repo: Path, git: Git, commit: Callable[..., str]
) -> None:
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo, {"x.txt": "x\n"}, "second")
    git(repo, "branch", "integration", first)
    ref = Ref(b"refs/heads/integration")
    with Repo(str(repo)) as dulwich_repo:
        kwargs = {"committer": b"A <a@b>", "timestamp": 1_700_000_000, "message": b"merge\nt1"}
        assert not move_branch(dulwich_repo, ref, _sha(second), _sha(first), **kwargs)
        assert move_branch(dulwich_repo, ref, _sha(first), _sha(second), **kwargs)
        (Path(repo) / ".git" / "refs" / "heads" / "integration.lock").write_text("held\n")
        # A held lock is said as such (it may be stale), not taken for a moved branch.
        with pytest.raises(FileLocked):
            move_branch(dulwich_repo, ref, _sha(second), _sha(first), **kwargs)
    assert git(repo, "rev-parse", "integration") == second
    assert git(repo, "reflog", "show", "--format=%H %gs", "integration").splitlines()[0] == (
        f"{second} merge t1"
    )


def test_a_packed_branch_moves_through_dulwich(
    repo: Path, git: Git, commit: Callable[..., str]
) -> None:
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo, {"x.txt": "x\n"}, "second")
    git(repo, "branch", "packed", first)
    git(repo, "pack-refs", "--all")
    assert not (Path(repo) / ".git" / "refs" / "heads" / "packed").exists()
    with Repo(str(repo)) as dulwich_repo:
        assert move_branch(
            dulwich_repo,
            Ref(b"refs/heads/packed"),
            _sha(first),
            _sha(second),
            committer=b"A <a@b>",
            timestamp=1_700_000_000,
            message=b"m",
        )
    assert git(repo, "rev-parse", "packed") == second


@pytest.mark.parametrize("missing", ["0" * 40])
def test_reading_a_missing_object_raises_key_error(repo: Path, missing: str) -> None:
    with Repo(str(repo)) as dulwich_repo, pytest.raises(KeyError):
        ObjectIO(dulwich_repo.object_store).read(_sha(missing))


def test_a_task_branch_is_added_once_without_a_reflog_and_never_past_a_held_lock(
    repo: Path, git: Git, commit: Callable[..., str]
) -> None:
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo, {"x.txt": "x\n"}, "second")
    ref = Ref(b"refs/heads/tasks/m-1/t1/a1")
    git(repo, "branch", "packed", first)
    git(repo, "pack-refs", "--all")
    with Repo(str(repo)) as dulwich_repo:
        assert add_branch(dulwich_repo, ref, _sha(first))
        assert not add_branch(dulwich_repo, ref, _sha(second))  # exists: left alone
        assert not add_branch(dulwich_repo, Ref(b"refs/heads/packed"), _sha(second))
        held = Ref(b"refs/heads/tasks/m-1/t2/a1")
        lock = Path(repo) / ".git" / "refs" / "heads" / "tasks" / "m-1" / "t2" / "a1.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text("held\n")
        with pytest.raises(FileLocked):
            add_branch(dulwich_repo, held, _sha(second))
        assert lock.read_text() == "held\n"
        with pytest.raises(ValueError, match="cannot name"):
            add_branch(dulwich_repo, Ref(b"refs/heads/tasks/../../x"), _sha(first))
    assert git(repo, "rev-parse", "tasks/m-1/t1/a1") == first
    assert git(repo, "rev-parse", "packed") == first
    assert not (Path(repo) / ".git" / "logs" / "refs" / "heads" / "tasks").exists()
    assert git(repo, "branch", "--list", "tasks/m-1/*") == "tasks/m-1/t1/a1"
