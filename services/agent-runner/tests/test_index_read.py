"""``read_index`` reads the indexes git writes as dulwich's ``Index`` does (the stat cache
of every scan trusts what it reads), and leaves to dulwich what it does not read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dulwich.errors import ChecksumMismatch
from dulwich.index import Index, IndexEntry

from aether_agent_runner.adapters.scan import read_index

from .conftest import GIT_ENV


def git(cwd: Path, *args: str, check: bool = True) -> None:
    result = subprocess.run(
        ["git", "-C", str(cwd), *args], env=GIT_ENV, capture_output=True, text=True
    )
    assert not check or result.returncode == 0, f"git {args} failed: {result.stderr}"


def dulwich_entries(index: Path) -> dict[bytes, IndexEntry]:
    return {
        name: entry for name, entry in Index(str(index)).items() if isinstance(entry, IndexEntry)
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    for path in ["README.md", "src/app.py", "src/pkg/deep/mod.py", "docs/ünïcode name.txt"]:
        file = repo / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(f"{path}\n" * 3)
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("README.md")
    # Names of every length modulo 8, so every padding of an entry is read.
    for length in range(1, 17):
        (repo / ("n" * length)).write_text("x")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def test_an_index_git_wrote_reads_as_dulwich_reads_it(repo: Path) -> None:
    index = repo / ".git" / "index"
    got = read_index(index.read_bytes())

    assert got == dulwich_entries(index)
    assert got is not None and len(got) == 22
    assert got[b"run.sh"].mode == 0o100755 and got[b"link"].mode == 0o120000


def test_version_3_with_extended_flags(repo: Path) -> None:
    (repo / "new.txt").write_text("intent to add\n")
    git(repo, "add", "--intent-to-add", "new.txt")  # sets an extended flag
    git(repo, "update-index", "--index-version", "3")
    index = repo / ".git" / "index"
    got = read_index(index.read_bytes())

    assert got == dulwich_entries(index)
    assert got is not None and got[b"new.txt"].extended_flags != 0


def test_conflicted_paths_are_left_out(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "README.md").write_text("theirs\n")
    git(repo, "commit", "-q", "-am", "theirs")
    git(repo, "checkout", "-q", "main")
    (repo / "README.md").write_text("ours\n")
    git(repo, "commit", "-q", "-am", "ours")
    git(repo, "merge", "-q", "other", check=False)
    index = repo / ".git" / "index"
    got = read_index(index.read_bytes())

    assert got == dulwich_entries(index)
    assert got is not None and b"README.md" not in got and b"src/app.py" in got


def test_version_4_is_left_to_dulwich(repo: Path) -> None:
    git(repo, "update-index", "--index-version", "4")

    assert read_index((repo / ".git" / "index").read_bytes()) is None


def test_a_damaged_index_is_refused(repo: Path) -> None:
    data = bytearray((repo / ".git" / "index").read_bytes())
    data[40] ^= 0xFF

    with pytest.raises(ChecksumMismatch):
        read_index(bytes(data))
    with pytest.raises(ValueError, match="too short"):
        read_index(b"DIRC")
    with pytest.raises(ValueError, match="not an index"):
        read_index(b"JUNK" + bytes(40))
