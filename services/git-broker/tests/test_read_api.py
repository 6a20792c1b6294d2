"""The broker's read API (task diffs, default branches, files at a commit) on a real
broker: real NATS, its HTTP port under uvicorn, repositories on disk and one served by a
real ``git daemon``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from nats.aio.client import Client as NatsClient

from aether.infra import free_port
from aether_events import (
    EventPublisher,
    MissionRequested,
    RepositoryPrepared,
    WorkspaceReady,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.adapters import diff, files
from aether_git_broker.adapters.readapi import ReadApi
from aether_git_broker.adapters.remote import Remotes
from aether_runtime import RuntimeSettings, tls
from tests.gitdaemon import bare_copy, git_daemon

from .test_service import meta, task_ready, watch

TOKEN = "read-token-for-tests-0123456789"


class Served:
    """The broker's ASGI app (its consumer, health and read API) under uvicorn."""

    def __init__(self, settings: GitBrokerSettings) -> None:
        self.app = bootstrap(settings).service.asgi()
        self.url = f"http://127.0.0.1:{settings.runtime.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=settings.runtime.port,
                lifespan="on",
                log_config=None,
                access_log=False,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server._serve())
        deadline = time.monotonic() + 60
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the broker stopped while starting")
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)


@pytest.fixture
def upstream(tmp_path: Path, repo: Path, git: Callable[..., str]) -> Iterator[str]:
    """The test repository as a remote: a bare copy whose default branch is ``trunk``,
    served by ``git daemon``."""
    git(repo, "branch", "trunk")
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(repo, served, "upstream.git", head="trunk")
    with git_daemon(served) as base:
        yield f"{base}/upstream.git"


@pytest.fixture
async def broker(nc: NatsClient, nats_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    settings = GitBrokerSettings(
        runtime=RuntimeSettings(nats_url=nats_url, host="127.0.0.1", port=free_port()),
        worktrees_dir=tmp_path / "worktrees",
        data_dir=tmp_path / "data",
        ack_wait_seconds=2.0,
        remote_timeout_seconds=10.0,
        read_token=TOKEN,
    )
    served = Served(settings)
    try:
        await served.start()
        yield served
    finally:
        await served.stop()


def client(broker: Served, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(verify=tls.shared(), base_url=broker.url, headers=headers, timeout=30)


async def test_a_local_diff_is_bounded_and_marks_binary_files(
    broker: Served, repo: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    (repo / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    git(repo, "add", "logo.png")
    long = "".join(f"line {i}\n" for i in range(diff.MAX_LINES_PER_FILE + 50))
    minified = "x" * (diff.MAX_LINE_CHARS * 3) + "\n"
    head = commit(
        repo,
        {"app/util.py": "def util():\n    return 2\n", "long.txt": long, "min.js": minified},
        "t",
    )
    async with client(broker) as http:
        answer = await http.get(
            "/repository/diff", params={"repository": str(repo), "base": base, "head": head}
        )
    assert answer.status_code == 200, answer.text
    found = answer.json()
    by_path = {f["path"]: f for f in found["files"]}
    assert sorted(by_path) == ["app/util.py", "logo.png", "long.txt", "min.js"]
    (line,) = [x for x in by_path["min.js"]["lines"] if x.startswith("+")]
    assert len(line) == diff.MAX_LINE_CHARS + 1 and line.endswith("…")
    assert by_path["min.js"]["truncated"] is True
    assert by_path["app/util.py"]["lines"][1:] == [" def util():", "-    return 1", "+    return 2"]
    assert by_path["logo.png"]["binary"] is True and by_path["logo.png"]["lines"] == []
    assert by_path["long.txt"]["truncated"] is True
    assert len(by_path["long.txt"]["lines"]) == diff.MAX_LINES_PER_FILE
    assert by_path["long.txt"]["added"] == diff.MAX_LINES_PER_FILE + 50
    assert (found["base_sha"], found["head_sha"]) == (base, head)


async def test_reads_need_the_read_token_and_say_what_is_wrong(
    broker: Served, repo: Path, git: Callable[..., str]
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    query = {"repository": str(repo), "base": head, "head": head}
    async with client(broker, token=None) as anonymous:
        assert (await anonymous.get("/repository/diff", params=query)).status_code == 401
    async with client(broker, token="x" * len(TOKEN)) as forged:
        refused = await forged.get("/repository/default-branch", params={"repository": "/r"})
        assert refused.status_code == 401
    async with client(broker) as http:
        bad_sha = await http.get("/repository/diff", params={**query, "head": "HEAD"})
        assert bad_sha.status_code == 400
        assert "40 hexadecimal digits" in bad_sha.json()["error"]
        missing = await http.get("/repository/diff", params={**query, "head": "a" * 40})
        assert missing.status_code == 404
        assert "aaaaaaaaaaaa is not in the repository" in missing.json()["error"]
        relative = await http.get("/repository/diff", params={**query, "repository": "r/x"})
        assert relative.status_code == 400
        assert "not an absolute path" in relative.json()["error"]
        twice = await http.get(
            "/repository/diff?repository=/a&repository=/b&base=" + head + "&head=" + head
        )
        assert twice.status_code == 400
        posted = await http.post("/repository/diff", params=query)
        assert posted.status_code == 405


async def test_files_are_read_from_the_commits_tree_and_say_what_was_left_out(
    broker: Served, repo: Path, git: Callable[..., str], commit: Callable[..., str]
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    (repo / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    (repo / "link.py").symlink_to("/etc/passwd")
    git(repo, "add", "logo.png", "link.py")
    big = "x" * (files.MAX_FILE_BYTES + 10)
    head = commit(repo, {"big.txt": big, "app/util.py": "def util():\n    return 2\n"}, "t")
    # Edits not committed are never what is answered.
    (repo / "README.md").write_text("# edited, not committed\n")
    asked = ["README.md", "app/util.py", "big.txt", "logo.png", "link.py", "app", "nope.py"]
    async with client(broker) as http:
        answer = await http.get(
            "/repository/files",
            params=[("repository", str(repo)), ("commit", head)] + [("path", p) for p in asked],
        )
        assert answer.status_code == 200, answer.text
        found = answer.json()
        at_base = await http.get(
            "/repository/files",
            params={"repository": str(repo), "commit": base, "path": ["app/util.py", "big.txt"]},
        )
    assert found["commit_sha"] == head
    assert found["files"] == {
        "README.md": "# demo\n",
        "app/util.py": "def util():\n    return 2\n",
        "big.txt": big[: files.MAX_FILE_BYTES],
    }
    assert found["truncated"] == ["big.txt"]
    assert found["omitted"] == {
        "logo.png": "binary",
        "link.py": "not a file",
        "app": "not a file",
        "nope.py": "missing",
    }
    assert at_base.json()["files"] == {"app/util.py": "def util():\n    return 1\n"}
    assert at_base.json()["omitted"] == {"big.txt": "missing"}


REFUSED_PATHS = [
    ([], "name at least one file"),
    (["../outside.py"], "'.' or '..' part"),
    (["app//main.py"], "'.' or '..' part"),
    (["/etc/passwd"], "is absolute"),
    (["a\0b"], "NUL"),
    (["x" * (files.MAX_PATH_CHARS + 1)], "longer than"),
    ([f"f{i}.py" for i in range(files.MAX_PATHS + 1)], f"at most {files.MAX_PATHS} paths"),
]


async def test_files_refuses_paths_that_name_no_file_of_a_tree(
    broker: Served, repo: Path, git: Callable[..., str]
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    async with client(broker) as http:
        for paths, reason in REFUSED_PATHS:
            params = [("repository", str(repo)), ("commit", head)] + [("path", p) for p in paths]
            refused = await http.get("/repository/files", params=params)
            assert refused.status_code == 400, (paths, refused.text)
            assert reason in refused.json()["error"], paths
        unknown = await http.get(
            "/repository/files", params={"repository": str(repo), "commit": "c" * 40, "path": "a"}
        )
        assert unknown.status_code == 404
        assert "cccccccccccc is not in the repository" in unknown.json()["error"]
        not_a_commit = await http.get(
            "/repository/files", params={"repository": str(repo), "commit": "HEAD", "path": "a"}
        )
        assert not_a_commit.status_code == 400


async def test_default_branches_of_local_and_remote_repositories(
    broker: Served, repo: Path, upstream: str, git: Callable[..., str]
) -> None:
    git(repo, "checkout", "-q", "-b", "develop")
    async with client(broker) as http:
        local = await http.get("/repository/default-branch", params={"repository": str(repo)})
        assert local.json() == {"repository": str(repo), "default_branch": "develop"}
        remote = await http.get("/repository/default-branch", params={"repository": upstream})
        assert remote.status_code == 200, remote.text
        assert remote.json()["default_branch"] == "trunk"
        unreachable = await http.get(
            "/repository/default-branch", params={"repository": "git://127.0.0.1:9/none.git"}
        )
        assert unreachable.status_code == 502
        assert "could not fetch from git://127.0.0.1:9/none.git" in unreachable.json()["error"]
        scheme = await http.get(
            "/repository/default-branch", params={"repository": "ftp://example.com/r.git"}
        )
        assert scheme.status_code == 400


async def test_a_task_diff_on_a_remote_repository_is_read_from_the_brokers_clone(
    broker: Served,
    nc: NatsClient,
    upstream: str,
    commit: Callable[..., str],
) -> None:
    async with client(broker) as http:
        before = await http.get(
            "/repository/diff", params={"repository": upstream, "base": "a" * 40, "head": "b" * 40}
        )
        assert before.status_code == 404
        assert "holds no clone" in before.json()["error"]

        mission = "m-remote-diff"
        events = await watch(nc, mission)
        publisher = EventPublisher(nc.jetstream())
        await publisher.publish(
            MissionRequested(**meta(mission), repository=upstream, requirement="r")
        )
        prepared = await events.next(RepositoryPrepared)
        assert prepared.base_branch == "trunk"
        await publisher.publish(task_ready(mission, "t1"))
        workspace = await events.next(WorkspaceReady)
        # The task's commit exists only in the broker's clone, never upstream.
        head = commit(workspace.worktree_path, {"feature.py": "FEATURE = True\n"}, "feature")
        found = await http.get(
            "/repository/diff",
            params={"repository": upstream, "base": workspace.base_sha, "head": head},
        )
        assert found.status_code == 200, found.text
        (changed,) = found.json()["files"]
        assert (changed["path"], changed["change"], changed["lines"][1:]) == (
            "feature.py",
            "add",
            ["+FEATURE = True"],
        )
        # What the planner reads of a remote repository comes from the same clone.
        read = await http.get(
            "/repository/files",
            params={"repository": upstream, "commit": head, "path": ["feature.py", "README.md"]},
        )
        assert read.status_code == 200, read.text
        assert read.json()["files"] == {"feature.py": "FEATURE = True\n", "README.md": "# demo\n"}


async def test_without_a_read_token_the_api_is_off(tmp_path: Path) -> None:
    api = ReadApi("", (), Remotes(str(tmp_path)))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/repository/diff", "headers": []}
    await api.routes()["/repository/diff"](scope, receive, send)
    assert sent[0]["status"] == 503
    assert b"AETHER_GIT_READ_TOKEN" in sent[1]["body"]
