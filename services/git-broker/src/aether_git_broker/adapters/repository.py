"""An open repository and the small helpers every repository operation shares."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dulwich.errors import NotGitRepository
from dulwich.objects import Commit, ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether_git_broker.adapters.history import Commits, NotACommit
from aether_git_broker.adapters.treemerge import Trees

DEFAULT_IDENTITY = "Aether <aether@localhost>"

SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class RepositoryError(Exception):
    """A repository the broker cannot use as asked; the message is for people."""


class RefMoved(RuntimeError):
    """The integration branch changed under a merge; merging again will see the new head."""


@dataclass
class Handle:
    """An open repository with its caches of parsed trees and commits."""

    repo: Repo
    trees: Trees
    commits: Commits

    def commit(self, sha: ObjectID) -> Commit:
        try:
            return self.commits.get(sha)
        except NotACommit as error:
            raise RepositoryError(str(error)) from None

    @property
    def path(self) -> str:
        return os.path.realpath(self.repo.path)


# Given the open repository and the commit the integration branch would move to: None
# when it may move, else why not (for people: the command and its output).
Verifier = Callable[[Handle, ObjectID], "str | None"]


def local_path(repository: str) -> str:
    """The absolute path a local repository reference points at."""
    path = repository.removeprefix("file://")
    return os.path.realpath(os.path.expanduser(path))


def branch_ref(branch: str) -> Ref:
    return Ref(b"refs/heads/" + branch.encode())


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


def head_of(repo: Repo, branch: str, what: str) -> ObjectID:
    try:
        return repo.refs[branch_ref(branch)]
    except KeyError:
        raise RepositoryError(f"{what} {branch!r} does not exist in {repo.path}") from None


def sorted_paths(changes: Iterable[bytes]) -> tuple[str, ...]:
    return tuple(sorted(path.decode(errors="replace") for path in changes))
