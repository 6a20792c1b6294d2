"""A mission requested without a base branch starts from the repository's default branch."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain

from aether_events import MissionFailed, MissionRequested, RepositoryPrepared
from aether_git_broker.adapters.defaultbranch import local_default_branch, remote_default_branch
from aether_git_broker.adapters.remote import RemoteError
from aether_git_broker.adapters.repository import RepositoryError
from aether_git_broker.sources import RemoteSource, parse_repository

from .test_handlers import Recorder, RecordingDelivery, handlers_for, meta


async def request(worktrees_dir: Path, repository: str, base_branch: str = "") -> Recorder:
    recorder = Recorder()
    handlers = handlers_for(worktrees_dir, recorder)
    event = MissionRequested(
        **meta(), repository=repository, requirement="r", base_branch=base_branch
    )
    await handlers.handle(event, RecordingDelivery())
    return recorder


async def test_a_repository_on_master_is_prepared_from_master(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    git(repo, "branch", "-m", "main", "master")
    recorder = await request(worktrees_dir, str(repo))
    (prepared,) = recorder.of(RepositoryPrepared)
    assert isinstance(prepared, RepositoryPrepared)
    assert prepared.base_branch == "master"
    assert prepared.base_sha == git(repo, "rev-parse", "master")


async def test_the_default_is_the_branch_head_names_not_main(
    repo: Path, worktrees_dir: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    git(repo, "checkout", "-q", "-b", "develop")
    ahead = commit(repo, {"dev.txt": "dev\n"}, "only on develop")
    recorder = await request(worktrees_dir, str(repo))
    (prepared,) = recorder.of(RepositoryPrepared)
    assert isinstance(prepared, RepositoryPrepared)
    assert (prepared.base_branch, prepared.base_sha) == ("develop", ahead)


async def test_a_named_base_branch_is_still_used_as_named(
    repo: Path, worktrees_dir: Path, git: Callable[..., str]
) -> None:
    git(repo, "branch", "release")
    git(repo, "checkout", "-q", "-b", "develop")
    recorder = await request(worktrees_dir, str(repo), base_branch="release")
    (prepared,) = recorder.of(RepositoryPrepared)
    assert isinstance(prepared, RepositoryPrepared)
    assert prepared.base_branch == "release"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("detached", "has a detached HEAD, so it has no default branch"),
        ("empty", "the default branch 'trunk' (HEAD) of"),
    ],
)
async def test_a_repository_without_a_usable_default_fails_the_mission_with_the_reason(
    tmp_path: Path, worktrees_dir: Path, git: Callable[..., str], setup: str, reason: str
) -> None:
    path = tmp_path / setup
    path.mkdir()
    if setup == "empty":
        git(path, "init", "-q", "-b", "trunk")
    else:
        git(path, "init", "-q", "-b", "main")
        (path / "a.txt").write_text("a\n")
        git(path, "add", "a.txt")
        git(path, "commit", "-q", "-m", "a")
        git(path, "checkout", "-q", "--detach")
    recorder = await request(worktrees_dir, str(path))
    assert recorder.of(RepositoryPrepared) == []
    (failed,) = recorder.of(MissionFailed)
    assert isinstance(failed, MissionFailed)
    assert reason in failed.reason


def test_local_default_branch_refuses_what_is_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="is not a git repository"):
        local_default_branch(str(tmp_path))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(repo: Path) -> Iterator[str]:
    """The test repository served read-only over smart HTTP."""
    backend = DictBackend({"/upstream.git": Repo(str(repo))})
    server = make_server("127.0.0.1", 0, make_wsgi_chain(backend), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/upstream.git"
    finally:
        server.shutdown()
        server.server_close()


def remote(url: str) -> RemoteSource:
    source = parse_repository(url)
    assert isinstance(source, RemoteSource)
    return source


def test_a_remotes_default_is_the_branch_its_head_names(
    repo: Path, served: str, git: Callable[..., str]
) -> None:
    git(repo, "checkout", "-q", "-b", "trunk")
    assert remote_default_branch(remote(served), timeout=10) == "trunk"


def test_an_unreachable_remote_says_it_could_not_be_read() -> None:
    with pytest.raises(
        RemoteError, match=re.escape("could not fetch from http://127.0.0.1:9/x.git")
    ):
        remote_default_branch(remote("http://127.0.0.1:9/x.git"), timeout=5)
