"""Checking a local repository before a mission is submitted on it, so a mistake is told
at once in the terminal rather than found later in ``show``.

dulwich is imported when a repository is checked (about 25 ms), not by every command.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dulwich.repo import Repo


class RepositoryProblem(Exception):
    """The repository cannot be the base of a mission; the message says why and what to do."""


@dataclass
class Checked:
    """A repository fit for a mission: its path, the base branch and its head, and the
    changes a mission would not see (they are not committed)."""

    path: Path
    base: str
    head: str
    uncommitted: list[str] = field(default_factory=list)


def current_branch(repo: Repo) -> str | None:
    """The branch HEAD points at, or None when HEAD is detached."""
    from dulwich.refs import Ref

    chain, _ = repo.refs.follow(Ref(b"HEAD"))
    target = chain[-1] if len(chain) > 1 else None
    if target is None or not target.startswith(b"refs/heads/"):
        return None
    return target.removeprefix(b"refs/heads/").decode()


def _text(path: str | bytes) -> str:
    return path.decode(errors="replace") if isinstance(path, bytes) else path


def _branches(repo: Repo) -> list[str]:
    from dulwich.refs import Ref

    return sorted(ref.decode() for ref in repo.refs.keys(base=Ref(b"refs/heads/")))


# The branches a mission leaves (``aether/m-…``, and its tasks' under it): not the
# user's own, and after a few missions more numerous than them.
MISSION_BRANCHES = "aether/"
SHOWN_BRANCHES = 10


def branch_list(branches: list[str]) -> str:
    """The repository's own branches to name in a message, the first ``SHOWN_BRANCHES``,
    with how many more there are and the mission branches counted, not listed."""
    own = [b for b in branches if not b.startswith(MISSION_BRANCHES)]
    missions = len(branches) - len(own)
    text = ", ".join(own[:SHOWN_BRANCHES]) or "no branch of its own"
    if len(own) > SHOWN_BRANCHES:
        text += f" and {len(own) - SHOWN_BRANCHES} more"
    if missions:
        text += (
            f"; and {missions} mission branch{'es' if missions != 1 else ''} {MISSION_BRANCHES}…"
        )
    return text


def _enclosing_repository(path: Path) -> Path | None:
    """The top directory of the git repository ``path`` is inside, if any."""
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        with Repo.discover(str(path)) as repo:
            return Path(repo.path).resolve()
    except NotGitRepository:
        return None


def check_repository(path: Path, base: str | None = None) -> Checked:
    """Check ``path`` is a repository with the base branch (default: its current branch)
    and list what is not committed."""
    from dulwich.errors import NotGitRepository
    from dulwich.refs import Ref
    from dulwich.repo import Repo

    if not path.exists():
        raise RepositoryProblem(f"{path} does not exist")
    try:
        repo = Repo(str(path))
    except NotGitRepository:
        top = _enclosing_repository(path)
        if top is not None:
            # `git init` here, as the plain message says, would nest a second repository.
            raise RepositoryProblem(
                f"{path} is not the top directory of a git repository: it is inside {top} "
                f"(give --repo {shlex.quote(str(top))} for that one)"
            ) from None
        raise RepositoryProblem(
            f"{path} is not a git repository (run `git init` and commit there first)"
        ) from None
    with repo:
        branches = _branches(repo)
        if not branches:
            raise RepositoryProblem(f"{path} has no commits yet: commit something first")
        given = base is not None
        if base is None:
            base = current_branch(repo)
            if base is None:
                raise RepositoryProblem(
                    f"{path} has a detached HEAD: pass --base with one of {branch_list(branches)}"
                )
        ref = Ref(f"refs/heads/{base}".encode())
        if ref not in repo.refs and not given:
            # HEAD names a branch with no commit (a bare repository pushed another branch
            # than its HEAD's, an orphan checkout): no --base was given to be wrong.
            raise RepositoryProblem(
                f"{path}'s HEAD is on branch {base!r}, which has no commit yet: pass --base "
                f"with one of {branch_list(branches)}"
            )
        if ref not in repo.refs:
            raise RepositoryProblem(
                f"{path} has no branch {base!r} (it has: {branch_list(branches)})"
            )
        head = repo.refs[ref].decode()
        uncommitted: list[str] = []
        if not repo.bare and current_branch(repo) == base:
            from dulwich import porcelain  # here: 0.1-0.2 s to import, for this alone

            status = porcelain.status(repo)
            for kind in ("add", "modify", "delete"):
                uncommitted += [f"{kind[0].upper()} {_text(p)}" for p in status.staged[kind]]
            uncommitted += [f"M {_text(p)}" for p in status.unstaged]
            uncommitted += [f"? {_text(p)}" for p in status.untracked]
        return Checked(path, base, head, sorted(set(uncommitted)))
