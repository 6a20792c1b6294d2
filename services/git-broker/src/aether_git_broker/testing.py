"""An in-memory ``Repositories`` for handler tests: commits, branches and worktrees held
in dictionaries, nothing on disk.

It keeps what ``tests/test_repositories_contract.py`` checks the real adapter does, and
refuses what it cannot model rather than guess: a file both sides changed is a conflict
only where each version is at most one line (a line-level merge could not help); any
other such file, a resolution attempt (``resolve_sha``) and a verified merge (``verify``)
raise ``NotImplementedError``, so a test that needs them uses real repositories. There
are no pools and no lock files, so the clean-ups of those find nothing; paths a checkout
may not write are not refused.

``read_api_served`` serves the broker's own read API (``adapters.readapi``), nothing else
of the broker, for the tests and benchmarks of the services that read through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from dulwich.objects import ObjectID
from dulwich.repo import Repo

from aether_events import RepoFile
from aether_git_broker.adapters.readapi import ReadApi
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.adapters.repository import SHA, Handle, RepositoryError, Verifier
from aether_git_broker.domain import MergeOutcome, RepositoryOutcome, WorkspaceOutcome
from aether_git_broker.domain.markers import added_marker_lines, markers_refusal
from aether_git_broker.ports import Repositories
from aether_runtime.health import Receive, Scope, Send

Files = dict[str, str]


@dataclass(frozen=True)
class FakeCommit:
    parents: tuple[str, ...]
    files: Mapping[str, str]
    # (mission, task, attempt) of a merge commit, standing for its trailers.
    task: tuple[str, str, int] | None = None


@dataclass
class FakeRepository:
    commits: dict[str, FakeCommit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


class InMemoryRepositories:
    """Repositories in memory, for handler tests (see the module's docstring)."""

    def __init__(self) -> None:
        self.repositories: dict[str, FakeRepository] = {}
        # worktree path -> (repository path, branch)
        self.worktrees: dict[str, tuple[str, str]] = {}
        self._made = 0

    # --- what a test does by hand ---------------------------------------------------

    def add_repository(self, path: str, files: Files, branch: str = "main") -> str:
        """A repository at ``path`` with one commit of ``files`` on ``branch``."""
        repository = self.repositories.setdefault(path, FakeRepository())
        sha = self._write(repository, FakeCommit(parents=(), files=dict(files)))
        repository.branches[branch] = sha
        return sha

    def commit_on(self, path: str, branch: str, files: Mapping[str, str | None]) -> str:
        """Commit ``files`` (``None`` deletes one) on a branch, as a person or agent would."""
        repository = self._open(path)
        parent = repository.branches[branch]
        tree = dict(repository.commits[parent].files)
        for name, content in files.items():
            if content is None:
                tree.pop(name, None)
            else:
                tree[name] = content
        sha = self._write(repository, FakeCommit(parents=(parent,), files=tree))
        repository.branches[branch] = sha
        return sha

    def commit_in(self, worktree_path: str, files: Mapping[str, str | None]) -> str:
        """Commit in a task's worktree, on its branch (what an agent does)."""
        path, branch = self.worktrees[worktree_path]
        return self.commit_on(path, branch, files)

    def files(self, path: str, branch: str) -> Files:
        """The files at a branch's head."""
        repository = self._open(path)
        return dict(repository.commits[repository.branches[branch]].files)

    def has_branch(self, path: str, branch: str) -> bool:
        return branch in self._open(path).branches

    # --- the port -------------------------------------------------------------------

    def prepare_repository(
        self, repository: str, base_branch: str, integration_branch: str
    ) -> RepositoryOutcome:
        repo = self._open(repository)
        base_head = self._head(repo, base_branch, "base branch")
        current = repo.branches.get(integration_branch)
        if current is None:
            repo.branches[integration_branch] = base_head
            base_sha = base_head
        else:
            bases = self._merge_bases(repo, current, base_head)
            base_sha = bases[0] if bases else base_head
        files = tuple(
            RepoFile(path=name, size=len(content.encode()))
            for name, content in sorted(repo.commits[base_sha].files.items())
        )
        return RepositoryOutcome(
            path=repository,
            base_branch=base_branch,
            base_sha=base_sha,
            integration_branch=integration_branch,
            files=files,
            file_count=len(files),
            files_truncated=False,
        )

    def prewarm(self, repository_path: str, commit_sha: str, count: int) -> bool:
        return False

    def prepare_workspace(
        self,
        repository_path: str,
        integration_branch: str,
        branch: str,
        worktree_path: str,
        resolve_sha: str | None = None,
    ) -> WorkspaceOutcome:
        if resolve_sha is not None:
            raise NotImplementedError("resolution attempts need real repositories")
        repo = self._open(repository_path)
        head = self._head(repo, integration_branch, "integration branch")
        head = repo.branches.setdefault(branch, head)
        created = worktree_path not in self.worktrees
        self.worktrees[worktree_path] = (repository_path, branch)
        return WorkspaceOutcome(
            branch=branch, worktree_path=worktree_path, base_sha=head, created=created
        )

    def merge(
        self,
        repository_path: str,
        integration_branch: str,
        *,
        since_sha: str,
        mission_id: str,
        task_id: str,
        attempt: int,
        commit_sha: str,
        now: datetime,
        verify: Verifier | None = None,
        withhold: Callable[[], str | None] | None = None,
    ) -> MergeOutcome:
        if verify is not None:
            raise NotImplementedError("verified merges need real repositories")
        repo = self._open(repository_path)
        head = self._head(repo, integration_branch, "integration branch")
        if not SHA.fullmatch(commit_sha) or len(commit_sha) != 40:
            return MergeOutcome(
                kind="conflict",
                sha=head,
                detail=f"{commit_sha!r} is not a commit id",
                refusal="missing_commit",
            )
        if commit_sha not in repo.commits:
            return MergeOutcome(
                kind="conflict",
                sha=head,
                detail=f"commit {commit_sha} is not in the repository",
                refusal="missing_commit",
            )
        previous = self._task_merge(repo, head, since_sha, (mission_id, task_id, attempt))
        if previous is not None:
            parent = repo.commits[repo.commits[previous].parents[0]]
            return MergeOutcome(
                kind="already_merged",
                sha=previous,
                files=_changed(parent.files, repo.commits[previous].files),
            )
        bases = self._merge_bases(repo, head, commit_sha)
        if commit_sha in bases:
            return MergeOutcome(kind="already_merged", sha=commit_sha, fast_forward=True)
        if withhold is not None and (reason := withhold()) is not None:
            return MergeOutcome(kind="withheld", sha=head, detail=reason)
        ours, theirs = repo.commits[head].files, repo.commits[commit_sha].files
        if head in bases:
            if refusal := _markers_refusal(ours, theirs):
                return MergeOutcome(
                    kind="conflict", sha=head, detail=refusal, refusal="conflict_markers"
                )
            repo.branches[integration_branch] = commit_sha
            return MergeOutcome(
                kind="fast_forward",
                sha=commit_sha,
                files=_changed(ours, theirs),
                fast_forward=True,
            )
        base = repo.commits[bases[0]].files if bases else {}
        merged, conflicts = _merge_files(base, ours, theirs)
        if conflicts:
            return MergeOutcome(
                kind="conflict",
                sha=head,
                files=conflicts,
                detail="both the integration branch and the task changed "
                f"{len(conflicts)} file(s) differently",
                refusal="conflict",
            )
        if refusal := _markers_refusal(ours, merged):
            return MergeOutcome(
                kind="conflict", sha=head, detail=refusal, refusal="conflict_markers"
            )
        sha = self._write(
            repo,
            FakeCommit(
                parents=(head, commit_sha), files=merged, task=(mission_id, task_id, attempt)
            ),
        )
        repo.branches[integration_branch] = sha
        return MergeOutcome(kind="merged", sha=sha, files=_changed(ours, merged))

    def recycle_worktree(self, repository_path: str, worktree_path: str) -> bool:
        return self.worktrees.pop(worktree_path, None) is not None

    def remove_worktrees_under(self, repository_path: str, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        removed = sorted(
            path
            for path, (repository, _) in self.worktrees.items()
            if repository == repository_path and path.startswith(prefix)
        )
        for path in removed:
            del self.worktrees[path]
        return removed

    def prune_worktrees(
        self, repository_path: str, worktrees_dir: str, live: frozenset[str]
    ) -> list[str]:
        # A registration is pruned when its directory vanished; nothing vanishes here.
        return []

    def delete_branch(self, repository_path: str, branch: str) -> bool:
        repo = self.repositories.get(repository_path)
        return repo is not None and repo.branches.pop(branch, None) is not None

    def delete_branches(
        self, repository_path: str, prefix: str, locked: list[str] | None = None
    ) -> list[str]:
        if not prefix.endswith("/"):
            raise ValueError(f"{prefix!r} is not a namespace (it must end in '/')")
        repo = self.repositories.get(repository_path)
        if repo is None:
            return []
        deleted = sorted(name for name in repo.branches if name.startswith(prefix))
        for name in deleted:
            del repo.branches[name]
        return deleted

    def drop_pool(self, repository_path: str) -> bool:
        return False

    def drop_idle_pools(self, active_repositories: Iterable[str]) -> list[str]:
        return []

    def clear_pool_leftovers(self) -> list[str]:
        return []

    def clear_locks(self, repository_path: str, shared_prefixes: tuple[str, ...] = ()) -> list[str]:
        return []

    def scratch_worktree(self, handle: Handle, path: str, commit: ObjectID) -> None:
        raise NotImplementedError("verification needs real repositories")

    def release_worktree(self, repo: Repo, path: str) -> bool:
        raise NotImplementedError("verification needs real repositories")

    # --- inside ---------------------------------------------------------------------

    def _open(self, path: str) -> FakeRepository:
        repository = self.repositories.get(path)
        if repository is None:
            raise RepositoryError(f"{path} is not a git repository")
        return repository

    @staticmethod
    def _head(repo: FakeRepository, branch: str, what: str) -> str:
        head = repo.branches.get(branch)
        if head is None:
            raise RepositoryError(f"{what} {branch!r} does not exist")
        return head

    def _write(self, repo: FakeRepository, commit: FakeCommit) -> str:
        self._made += 1
        sha = hashlib.sha1(f"{self._made}:{commit!r}".encode(), usedforsecurity=False)
        repo.commits[sha.hexdigest()] = commit
        return sha.hexdigest()

    @staticmethod
    def _ancestors(repo: FakeRepository, sha: str) -> set[str]:
        seen: set[str] = set()
        pending = [sha]
        while pending:
            current = pending.pop()
            if current not in seen:
                seen.add(current)
                pending.extend(repo.commits[current].parents)
        return seen

    def _merge_bases(self, repo: FakeRepository, a: str, b: str) -> list[str]:
        common = self._ancestors(repo, a) & self._ancestors(repo, b)
        return sorted(
            c for c in common if not any(c != d and c in self._ancestors(repo, d) for d in common)
        )

    @staticmethod
    def _task_merge(
        repo: FakeRepository, head: str, since_sha: str, task: tuple[str, str, int]
    ) -> str | None:
        sha: str | None = head
        while sha is not None and sha != since_sha:
            commit = repo.commits[sha]
            if commit.task == task:
                return sha
            sha = commit.parents[0] if commit.parents else None
        return None


def _changed(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p)))


def _markers_refusal(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """Why a merge from ``before`` to ``after`` is refused for the conflict markers it
    adds (as ``domain.markers`` says), or ``""``."""
    found = []
    for path in _changed(before, after):
        if path in after:
            old = before.get(path)
            lines = added_marker_lines(None if old is None else old.encode(), after[path].encode())
            if lines:
                found.append((path, lines))
    return markers_refusal(found) if found else ""


def _one_line(content: str | None) -> bool:
    return content is None or "\n" not in content.rstrip("\n")


def _merge_files(
    base: Mapping[str, str], ours: Mapping[str, str], theirs: Mapping[str, str]
) -> tuple[Files, tuple[str, ...]]:
    merged: Files = {}
    conflicts = []
    for path in sorted(base.keys() | ours.keys() | theirs.keys()):
        b, o, t = base.get(path), ours.get(path), theirs.get(path)
        if o == t or t == b:
            result = o
        elif o == b:
            result = t
        elif _one_line(b) and _one_line(o) and _one_line(t):
            conflicts.append(path)
            continue
        else:
            raise NotImplementedError(f"{path}: a line-level merge needs real repositories")
        if result is not None:
            merged[path] = result
    return merged, tuple(conflicts)


if TYPE_CHECKING:
    # mypy holds the fake to the port's signatures; the contract test to its behaviour.
    _conforms: Repositories = InMemoryRepositories()


@contextlib.contextmanager
def read_api_served(
    token: str, remotes: Remotes, port: int, roots: tuple[str, ...] = ()
) -> Iterator[str]:
    """The broker's read API with ``token`` on ``127.0.0.1:port`` (remote repositories'
    clones where ``remotes`` keeps them), served by uvicorn in a thread: its URL."""
    import uvicorn

    routes = ReadApi(token, roots, remotes).routes()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        route = routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await route(scope, receive, send)

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="broker-read-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the broker's read API did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
