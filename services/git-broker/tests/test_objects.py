"""Raw object reads and writes (``ObjectIO``) against git's own view of the repository.

The reader parses packs itself (offset and reference deltas, chains of them), so every
object of packed repositories is read both ways and compared with ``git cat-file``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from dulwich.objects import ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.objects import ObjectIO

_TYPES = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}


def _history(path: Path, git: Callable[..., str], commit: Callable[..., str]) -> None:
    """Files edited over several commits, so the pack holds chains of deltas, plus a
    binary file larger than one read of the pack and an empty file."""
    git(path.parent, "init", "-q", "-b", "main", str(path))
    lines = [f"line {i} of a file long enough to be stored as a delta\n" for i in range(300)]
    for step in range(6):
        lines[step * 40] = f"edited in step {step}\n"
        commit(
            path,
            {
                "a.txt": "".join(lines),
                "docs/b.md": "".join(reversed(lines[step:])),
                "empty": "",
                f"new{step}.txt": f"step {step}\n",
            },
            f"step {step}",
        )
    (path / "big.bin").write_bytes(bytes(range(256)) * 2000)
    git(path, "add", "big.bin")
    git(path, "commit", "-q", "-m", "binary")
    git(path, "tag", "-a", "v1", "-m", "a tag")


def _all_objects(path: Path, git: Callable[..., str]) -> dict[str, tuple[str, int]]:
    listing = git(path, "cat-file", "--batch-all-objects", "--batch-check")
    return {
        sha: (kind, int(size))
        for sha, kind, size in (entry.split() for entry in listing.splitlines())
    }


def _git_content(path: Path, sha: str) -> bytes:
    loose = path / ".git" / "objects" / sha[:2] / sha[2:]
    if loose.exists():
        return zlib.decompress(loose.read_bytes()).partition(b"\0")[2]
    import subprocess

    return subprocess.run(
        ["git", "-C", str(path), "cat-file", "--batch"],
        input=sha.encode() + b"\n",
        capture_output=True,
        check=True,
    ).stdout.partition(b"\n")[2][:-1]


@pytest.mark.parametrize("offset_deltas", [True, False], ids=["ofs-delta", "ref-delta"])
def test_every_packed_object_reads_as_git_stores_it(
    tmp_path: Path, git: Callable[..., str], commit: Callable[..., str], offset_deltas: bool
) -> None:
    path = tmp_path / "repo"
    _history(path, git, commit)
    setting = "true" if offset_deltas else "false"
    git(path, "-c", f"repack.useDeltaBaseOffset={setting}", "repack", "-adfq", "--depth=4")
    stats = git(path, "verify-pack", "-v", *map(str, (path / ".git/objects/pack").glob("*.idx")))
    assert "chain length = 2" in stats  # deltas of deltas were written
    objects = _all_objects(path, git)
    with Repo(str(path)) as repo:
        reader = ObjectIO(repo.object_store)
        for sha, (kind, size) in objects.items():
            type_num, content = reader.read(ObjectID(sha.encode()))
            assert type_num == _TYPES[kind]
            assert len(content) == size
            assert content == _git_content(path, sha), sha
        reader.close()


def test_a_pack_arriving_after_the_first_read_is_found(
    tmp_path: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    path = tmp_path / "repo"
    _history(path, git, commit)
    git(path, "repack", "-adq")
    with Repo(str(path)) as repo:
        reader = ObjectIO(repo.object_store)
        head = git(path, "rev-parse", "HEAD")
        assert reader.read(ObjectID(head.encode()))[0] == 1
        later = commit(path, {"later.txt": "later\n"}, "later")
        git(path, "repack", "-adq")  # the first pack is gone, the new one holds all
        assert reader.read(ObjectID(later.encode()))[0] == 1
        assert reader.read(ObjectID(head.encode()))[0] == 1
        reader.close()


def test_written_objects_are_what_git_reads(
    tmp_path: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    path = tmp_path / "repo"
    _history(path, git, commit)
    git(path, "repack", "-adq")
    with Repo(str(path)) as repo:
        reader = ObjectIO(repo.object_store)
        sha = reader.write(b"blob", b"written by the broker\n")
        assert git(path, "cat-file", "-p", sha.decode()) == "written by the broker"
        assert reader.read(sha) == (3, b"written by the broker\n")
        reader.close()
    git(path, "fsck", "--strict", "--no-dangling")


def _packs(path: Path) -> set[str]:
    return {p.name for p in (path / ".git/objects/pack").glob("*.pack")}


def test_a_batch_is_written_as_one_pack_git_reads(
    tmp_path: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    path = tmp_path / "repo"
    _history(path, git, commit)
    git(path, "repack", "-adq")
    before = _packs(path)
    with Repo(str(path)) as repo:
        reader = ObjectIO(repo.object_store)
        with reader.batch():
            written = [reader.write(b"blob", f"object {i}\n".encode()) for i in range(20)]
            assert reader.read(written[3]) == (3, b"object 3\n")  # seen before it is stored
            assert _packs(path) == before
        assert len(_packs(path) - before) == 1
        assert reader.read(written[7]) == (3, b"object 7\n")
        with reader.batch():
            few = reader.write(b"blob", b"only one\n")
        assert len(_packs(path) - before) == 1  # too few for a pack: a loose object
        assert (path / ".git/objects" / few.decode()[:2] / few.decode()[2:]).exists()
        reader.close()
    for i, sha in enumerate(written):
        assert git(path, "cat-file", "-p", sha.decode()) == f"object {i}"
    git(path, "fsck", "--strict")


def test_many_small_packs_are_folded_into_one(
    tmp_path: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    path = tmp_path / "repo"
    _history(path, git, commit)
    git(path, "repack", "-adq")
    with Repo(str(path)) as repo:
        reader = ObjectIO(repo.object_store)
        written = []
        for batch in range(40):
            with reader.batch():
                written += [reader.write(b"blob", f"{batch}/{i}\n".encode()) for i in range(8)]
            assert len(_packs(path)) <= 33
        reader.close()
    assert len(_packs(path)) < 33
    objects = _all_objects(path, git)
    assert all(sha.decode() in objects for sha in written)
    for sha in written[::7]:
        assert reader.read(sha)[1] == _git_content(path, sha.decode())
    git(path, "fsck", "--strict")
