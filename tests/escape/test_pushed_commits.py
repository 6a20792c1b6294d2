"""The fifth red-team pass, against the git broker: what a remote agent holding an
attempt's push token can push, and what the broker's merge and diff then make of it.

The runner's own commit refuses a file over 10 MB; these commits do not come from it.
"""

# ruff: noqa: F811  (the fixture ``linked`` taken as an argument)
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dulwich.repo import Repo
from nats.aio.client import Client as NatsClient

from aether_events import (
    AgentCompleted,
    BranchMerged,
    EventPublisher,
    MergeConflicted,
    ensure_streams,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.adapters.diff import commit_diff
from aether_git_broker.app import GitBroker
from aether_runtime import RuntimeSettings
from tests.escape.test_files_and_git import (  # noqa: F401  (the fixture ``linked``)
    GIT_ENV,
    SECRET,
    Linked,
    Watch,
    attempt_of,
    git,
    linked,
    meta,
    remote,
    run_git,
)

PUSH_CAP = 1 << 20  # the broker's bound on a push's pack here
BLOB_CAP = 100_000  # and on one file (pushed, merged)


@pytest.fixture
async def bounded(nc: NatsClient, nats_url: str, tmp_path: Path) -> AsyncIterator[GitBroker]:
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
            git_http_max_push_bytes=PUSH_CAP,
            merge_max_blob_bytes=BLOB_CAP,
            merge_max_bytes=3 * BLOB_CAP,
            merge_max_files=500,
            merge_max_depth=100,
        )
    )
    await broker.service.start()
    try:
        yield broker
    finally:
        await broker.service.stop()


def clone_of(broker: GitBroker, mission_id: str, token: str, branch: str, into: Path) -> Path:
    cloned = run_git(
        into.parent, "clone", "-q", "--branch", branch, remote(broker, mission_id, token), str(into)
    )
    assert cloned.returncode == 0, cloned.stderr
    return into


def temporary_packs(repo: Path) -> list[str]:
    return [name for name in os.listdir(repo / ".git" / "objects") if name.startswith("tmp_pack_")]


async def completed(
    nc: NatsClient, events: Watch, mission_id: str, branch: str, sha: str
) -> object:
    await EventPublisher(nc.jetstream()).publish(
        AgentCompleted(**meta(mission_id), task_id="t1", attempt=1, commit_sha=sha, branch=branch)
    )
    return await events.next((BranchMerged, MergeConflicted))


async def test_a_pushed_file_of_200_mb_that_inflates_from_a_small_pack_is_refused_unread(
    bounded: GitBroker, nc: NatsClient, linked: Linked, tmp_path: Path
) -> None:
    _, mine = await attempt_of(nc, linked.repo, "m-zeros")
    clone = clone_of(bounded, "m-zeros", mine.push_token, mine.branch, tmp_path / "clone")
    with open(clone / "big.bin", "wb") as file:  # 200 MB of zeros: about 200 KB packed
        file.truncate(200_000_000)
    git(clone, "add", "big.bin")
    git(clone, "commit", "-q", "-m", "big")

    started = time.monotonic()
    pushed = run_git(clone, "push", "origin", f"HEAD:{mine.branch}")

    assert pushed.returncode != 0
    assert "more than the 100,000 one pushed object may hold" in pushed.stderr
    assert time.monotonic() - started < 20  # refused at its header, not inflated
    assert git(linked.repo, "rev-parse", mine.branch) == mine.base_sha
    assert temporary_packs(linked.repo) == []


async def test_a_push_over_the_brokers_bound_is_refused_and_leaves_no_temporary_pack(
    bounded: GitBroker, nc: NatsClient, linked: Linked, tmp_path: Path
) -> None:
    _, mine = await attempt_of(nc, linked.repo, "m-wire")
    clone = clone_of(bounded, "m-wire", mine.push_token, mine.branch, tmp_path / "clone")
    # Files under the object bound, which do not compress: the pack is past the push's.
    for n in range(15):
        (clone / f"noise{n}.bin").write_bytes(os.urandom(90_000))
    git(clone, "add", ".")
    git(clone, "commit", "-q", "-m", "noise")

    pushed = [run_git(clone, "push", "origin", f"HEAD:{mine.branch}") for _ in range(3)]

    assert all(p.returncode != 0 for p in pushed)
    # The refusal is sent as the bound is passed, while git still sends the rest: it
    # reads the answer, or (its send cut first) says the remote end hung up.
    said = pushed[0].stderr
    assert "pack exceeds maximum input size" in said or "remote end hung up" in said, said
    assert git(linked.repo, "rev-parse", mine.branch) == mine.base_sha
    assert temporary_packs(linked.repo) == []  # dulwich's own left each one behind


def commit_on(repo: Path, branch: str, files: dict[str, bytes]) -> str:
    """A commit on ``branch`` adding ``files``, made without a worktree (paths of any
    depth), as whatever wrote into the repository other than the runner would."""
    index = repo / "scratch-index"
    env = {**GIT_ENV, "GIT_INDEX_FILE": str(index)}

    def run(*args: str, data: bytes | None = None) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], env=env, input=data, capture_output=True, check=True
        )
        return done.stdout.decode().strip()

    run("read-tree", branch)
    blobs = {
        content: run("hash-object", "-w", "--stdin", data=content)
        for content in set(files.values())
    }
    listed = "".join(f"100644 {blobs[content]}\t{path}\n" for path, content in files.items())
    run("update-index", "--add", "--index-info", data=listed.encode())
    tree = run("write-tree")
    commit = run("commit-tree", tree, "-p", branch, "-m", "hostile", data=b"")
    run("update-ref", f"refs/heads/{branch}", commit)
    index.unlink()
    return commit


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({"big.bin": b"x" * 150_000}, "big.bin has 150,000 bytes, more than the 100,000"),
        ({f"f{n}.txt": b"same\n" for n in range(600)}, "more than 500 changed files"),
        ({f"part{n}.txt": b"y" * 90_000 for n in range(4)}, "more than 300,000 bytes of files"),
        ({"d/" * 1500 + "deep.txt": b"deep\n"}, "directories deep, more than the 100"),
    ],
    ids=["one-file", "many-files", "all-files", "deep-tree"],
)
async def test_a_commit_over_the_brokers_limits_is_refused_with_the_reason_and_others_merge(
    bounded: GitBroker,
    nc: NatsClient,
    linked: Linked,
    files: dict[str, bytes],
    said: str,
) -> None:
    events, mine = await attempt_of(nc, linked.repo, "m-much")
    sha = commit_on(linked.repo, mine.branch, files)

    refused = await completed(nc, events, "m-much", mine.branch, sha)

    assert isinstance(refused, MergeConflicted) and refused.refusal == "too_large"
    assert said in refused.detail
    assert git(linked.repo, "rev-parse", "aether/m-much") == mine.base_sha
    # Another mission's task merges after it.
    others, theirs = await attempt_of(nc, linked.repo, "m-fine")
    fine = commit_on(linked.repo, theirs.branch, {"fine.txt": b"fine\n"})
    assert isinstance(await completed(nc, others, "m-fine", theirs.branch, fine), BranchMerged)


def test_the_diff_of_a_file_of_200_mb_reads_only_its_header(linked: Linked) -> None:
    with open(linked.worktree / "big.bin", "wb") as file:
        file.truncate(200_000_000)
    git(linked.worktree, "add", "big.bin")
    git(linked.worktree, "commit", "-q", "-m", "big")
    head = git(linked.worktree, "rev-parse", "HEAD")

    started = time.process_time()
    with Repo(str(linked.repo)) as repo:
        diff = commit_diff(repo, linked.base, head)

    assert [(f.path, f.binary) for f in diff.files] == [("big.bin", True)]
    assert time.process_time() - started < 1.0  # inflating 200 MB takes longer
