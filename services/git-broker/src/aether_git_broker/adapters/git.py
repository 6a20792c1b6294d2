"""Every repository write the broker makes, done with dulwich (never the ``git`` binary).

Each operation is level-triggered: it looks at the repository first and only does what
is still missing, so repeating it after a crash or a redelivery is harmless.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from datetime import datetime

from dulwich.errors import NotGitRepository
from dulwich.graph import can_fast_forward, find_merge_base
from dulwich.object_store import iter_tree_contents
from dulwich.objects import S_ISGITLINK, Commit, ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.trailers import parse_trailers

from aether_events import RepoFile
from aether_git_broker.adapters import worktrees
from aether_git_broker.adapters.treemerge import changed_paths, merge_trees
from aether_git_broker.domain import MergeOutcome, RepositoryOutcome, WorkspaceOutcome

log = logging.getLogger("aether.git_broker.git")

DEFAULT_IDENTITY = "Aether <aether@localhost>"

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class RepositoryError(Exception):
    """A repository the broker cannot use as asked; the message is for people."""


class RefMoved(RuntimeError):
    """The integration branch changed under a merge; merging again will see the new head."""


def local_path(repository: str) -> str:
    """The absolute path a local repository reference points at."""
    path = repository.removeprefix("file://")
    return os.path.realpath(os.path.expanduser(path))


def _branch_ref(branch: str) -> Ref:
    return Ref(b"refs/heads/" + branch.encode())


def _commit(repo: Repo, sha: ObjectID) -> Commit:
    obj = repo.object_store[sha]
    if not isinstance(obj, Commit):
        raise RepositoryError(f"{sha.decode()} is a {obj.type_name.decode()}, not a commit")
    return obj


def open_repository(repository: str) -> Repo:
    """Open a local repository by path, or raise ``RepositoryError`` saying what is wrong."""
    path = local_path(repository)
    if not os.path.exists(path):
        raise RepositoryError(f"repository {repository!r} does not exist")
    if not os.path.isdir(path):
        raise RepositoryError(f"repository {repository!r} is not a directory")
    try:
        return Repo(path)
    except NotGitRepository:
        raise RepositoryError(
            f"{path} is not a git repository (give the top directory of a repository)"
        ) from None


def _head(repo: Repo, branch: str, what: str) -> ObjectID:
    try:
        return repo.refs[_branch_ref(branch)]
    except KeyError:
        raise RepositoryError(f"{what} {branch!r} does not exist in {repo.path}") from None


def _paths(changes: Iterable[bytes]) -> tuple[str, ...]:
    return tuple(sorted(path.decode(errors="replace") for path in changes))


class GitRepositories:
    """The repository adapter: integration branches, worktrees and merges.

    ``identity`` (``Name <email>``) authors the merge commits.
    """

    def __init__(self, *, identity: str = DEFAULT_IDENTITY, max_listed_files: int = 2000):
        self._identity = identity.encode()
        self._max_listed_files = max_listed_files

    # --- missions ---------------------------------------------------------------

    def prepare_repository(
        self, repository: str, base_branch: str, integration_branch: str
    ) -> RepositoryOutcome:
        """Check the repository and base branch; create the integration branch if missing.

        The integration branch starts at the base branch's head. When it exists already
        (a redelivery) it is left alone and the base reported is where it forked.
        """
        with open_repository(repository) as repo:
            base_head = _head(repo, base_branch, "base branch")
            _commit(repo, base_head)
            integration_ref = _branch_ref(integration_branch)
            if repo.refs.add_if_new(
                integration_ref,
                base_head,
                committer=self._identity,
                message=f"aether: integration branch from {base_branch}".encode(),
            ):
                base_sha = base_head
                log.info("integration branch created", extra={"branch": integration_branch})
            else:
                bases = find_merge_base(repo, [repo.refs[integration_ref], base_head])
                base_sha = bases[0] if bases else base_head
            files, count = self._list_files(repo, base_sha)
            return RepositoryOutcome(
                path=os.path.realpath(repo.path),
                base_branch=base_branch,
                base_sha=base_sha.decode(),
                integration_branch=integration_branch,
                files=files,
                file_count=count,
                files_truncated=count > len(files),
            )

    def _list_files(self, repo: Repo, commit_sha: ObjectID) -> tuple[tuple[RepoFile, ...], int]:
        store = repo.object_store
        files: list[RepoFile] = []
        count = 0
        for entry in iter_tree_contents(store, _commit(repo, commit_sha).tree):
            if entry.path is None or S_ISGITLINK(entry.mode):
                continue
            count += 1
            if len(files) < self._max_listed_files:
                _, data = store.get_raw(entry.sha)
                files.append(RepoFile(path=entry.path.decode(errors="replace"), size=len(data)))
        return tuple(files), count

    # --- workspaces -------------------------------------------------------------

    def prepare_workspace(
        self, repository_path: str, integration_branch: str, branch: str, worktree_path: str
    ) -> WorkspaceOutcome:
        """Create the task branch at the integration head, and a worktree checked out on it.

        An existing branch or worktree (a redelivery) is reused as it is; the base then
        reported is the branch's head, which nobody has committed to before the
        workspace was announced.
        """
        with open_repository(repository_path) as repo:
            branch_ref = _branch_ref(branch)
            head = _head(repo, integration_branch, "integration branch")
            if not repo.refs.add_if_new(
                branch_ref,
                head,
                committer=self._identity,
                message=f"aether: task branch from {integration_branch}".encode(),
            ):
                head = repo.refs[branch_ref]
            os.makedirs(os.path.dirname(worktree_path), exist_ok=True)
            created = worktrees.add_worktree(repo, worktree_path, branch_ref)
            return WorkspaceOutcome(
                branch=branch, worktree_path=worktree_path, base_sha=head.decode(), created=created
            )

    def remove_worktree(self, repository_path: str, worktree_path: str) -> bool:
        """Remove one worktree and its administrative directory; keeps the branch."""
        with open_repository(repository_path) as repo:
            return worktrees.remove_worktree(repo, worktree_path)

    def remove_worktrees_under(self, repository_path: str, directory: str) -> list[str]:
        """Remove every worktree of the repository inside ``directory``."""
        try:
            repo = open_repository(repository_path)
        except RepositoryError:
            # The repository is gone; what is left of its worktrees is just files.
            if os.path.isdir(directory):
                shutil.rmtree(directory, ignore_errors=True)
            return []
        with repo:
            return worktrees.remove_worktrees_under(repo, directory)

    # --- merges -----------------------------------------------------------------

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
    ) -> MergeOutcome:
        """Merge a task's commit into the integration branch, once.

        Already merged (a merge commit with this task's trailers since ``since_sha``, or
        the commit is already in the branch) → ``already_merged`` and nothing written.
        Otherwise a fast-forward when possible, else a merge commit from a three-way tree
        merge. The branch moves by compare-and-swap; a conflict leaves it untouched.
        """
        with open_repository(repository_path) as repo:
            ref = _branch_ref(integration_branch)
            head = _head(repo, integration_branch, "integration branch")
            commit = ObjectID(commit_sha.encode())
            if not _SHA.fullmatch(commit_sha) or commit not in repo.object_store:
                return MergeOutcome(
                    kind="conflict",
                    sha=head.decode(),
                    detail=f"commit {commit_sha} is not in the repository",
                )
            _commit(repo, commit)
            previous = self._find_task_merge(repo, head, since_sha, mission_id, task_id, attempt)
            if previous is not None:
                parent = previous.parents[0]
                files = changed_paths(repo.object_store, _commit(repo, parent).tree, previous.tree)
                return MergeOutcome(
                    kind="already_merged", sha=previous.id.decode(), files=_paths(files)
                )
            if can_fast_forward(repo, commit, head):
                return MergeOutcome(kind="already_merged", sha=commit.decode(), fast_forward=True)
            fast_forward = can_fast_forward(repo, head, commit)
            if fast_forward:
                new_head = commit
            else:
                merged = self._merge_commit(repo, head, commit, mission_id, task_id, attempt, now)
                if isinstance(merged, MergeOutcome):
                    return merged
                new_head = merged
            message = f"aether: merge task {task_id} (attempt {attempt})".encode()
            if not repo.refs.set_if_equals(
                ref, head, new_head, committer=self._identity, message=message
            ):
                raise RefMoved(f"{integration_branch} moved while merging task {task_id}")
            files = changed_paths(
                repo.object_store, _commit(repo, head).tree, _commit(repo, new_head).tree
            )
            return MergeOutcome(
                kind="fast_forward" if fast_forward else "merged",
                sha=new_head.decode(),
                files=_paths(files),
                fast_forward=fast_forward,
            )

    def _merge_commit(
        self,
        repo: Repo,
        head: ObjectID,
        commit: ObjectID,
        mission_id: str,
        task_id: str,
        attempt: int,
        now: datetime,
    ) -> ObjectID | MergeOutcome:
        bases = find_merge_base(repo, [head, commit])
        base_tree = _commit(repo, bases[0]).tree if bases else None
        ours, theirs = _commit(repo, head), _commit(repo, commit)
        result = merge_trees(repo.object_store, base_tree, ours.tree, theirs.tree)
        if result.tree is None:
            return MergeOutcome(
                kind="conflict",
                sha=head.decode(),
                files=result.conflicts,
                detail=f"both the integration branch and the task changed {len(result.conflicts)}"
                " file(s) differently",
            )
        merge = Commit()
        merge.tree = result.tree
        merge.parents = [head, commit]
        merge.author = merge.committer = self._identity
        merge.author_time = merge.commit_time = int(now.timestamp())
        merge.author_timezone = merge.commit_timezone = 0
        merge.encoding = b"UTF-8"
        merge.message = (
            f"Merge task {task_id} (attempt {attempt})\n\n"
            f"Aether-Mission: {mission_id}\n"
            f"Aether-Task: {task_id}\n"
            f"Aether-Attempt: {attempt}\n"
        ).encode()
        repo.object_store.add_object(merge)
        return merge.id

    def _find_task_merge(
        self,
        repo: Repo,
        head: ObjectID,
        since_sha: str,
        mission_id: str,
        task_id: str,
        attempt: int,
    ) -> Commit | None:
        """The merge commit this task attempt already produced, if the branch has one."""
        since = ObjectID(since_sha.encode())
        exclude = [since] if since in repo.object_store else []
        wanted = {"aether-task": task_id, "aether-attempt": str(attempt)}
        for entry in repo.get_walker(include=[head], exclude=exclude):
            commit = entry.commit
            if len(commit.parents) < 2:
                continue
            _, trailers = parse_trailers(commit.message)
            found = {t.key.lower(): t.value.strip() for t in trailers}
            if found.get("aether-mission", mission_id) != mission_id:
                continue
            if all(found.get(key) == value for key, value in wanted.items()):
                return commit
        return None
