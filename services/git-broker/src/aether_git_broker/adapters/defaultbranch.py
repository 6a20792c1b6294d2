"""A repository's default branch: what a mission requested without a base branch starts from.

A local repository's default is the branch its ``HEAD`` names; a remote's is the branch its
``HEAD`` symbolic ref names, as the server advertises it. Either way the branch must exist
(a repository with no commits has a ``HEAD`` naming a branch that does not), and its name
must be one git accepts: a remote is not trusted to advertise a sane one.
"""

from __future__ import annotations

from dulwich.refs import Ref

from aether_git_broker.adapters.remote import (
    _NETWORK_ERRORS,
    NO_SSH,
    RemoteError,
    _failure,
    transport,
)
from aether_git_broker.adapters.repository import RepositoryError, open_repository
from aether_git_broker.adapters.ssh import SshAccess
from aether_git_broker.naming import ref_name_problem
from aether_git_broker.sources import RemoteSource

_HEADS = b"refs/heads/"


class NoDefaultBranch(RemoteError):
    """The remote answered, but names no default branch that exists."""


_SYMREF = b"ref: "


def _branch_named(target: bytes | None) -> str | None:
    if target is None or not target.startswith(_HEADS):
        return None
    name = target[len(_HEADS) :].decode("utf-8", "replace")
    return name if ref_name_problem(name) is None else None


def local_default_branch(repository: str) -> str:
    """The branch ``HEAD`` names in the local ``repository``; ``RepositoryError`` says
    why there is none (a detached ``HEAD``, a branch with no commits yet)."""
    with open_repository(repository) as repo:
        target = repo.refs.read_ref(Ref(b"HEAD"))
        where = repo.path
        if target is None or not target.startswith(_SYMREF):
            raise RepositoryError(
                f"{where} has a detached HEAD, so it has no default branch: name a base branch"
            )
        name = _branch_named(target[len(_SYMREF) :].strip())
        if name is None:
            raise RepositoryError(
                f"the HEAD of {where} names no valid branch, so it has no default branch: "
                "name a base branch"
            )
        if Ref(_HEADS + name.encode()) not in repo.refs:
            raise RepositoryError(
                f"the default branch {name!r} (HEAD) of {where} does not exist: "
                "the repository has no commits on it"
            )
    return name


def remote_default_branch(source: RemoteSource, timeout: float, ssh: SshAccess = NO_SSH) -> str:
    """The branch the remote's ``HEAD`` names; ``RemoteError`` says why there is none."""
    try:
        client, path = transport(source.url, timeout, ssh)
        advertised = client.get_refs(path.encode())
    except _NETWORK_ERRORS as error:
        raise _failure("fetch from", source.display, error, source.url, ssh) from None
    name = _branch_named(advertised.symrefs.get(Ref(b"HEAD")))
    if name is None:
        raise NoDefaultBranch(
            f"{source.display} does not say which branch is its default (no HEAD naming a "
            "branch): name a base branch"
        )
    if advertised.refs.get(Ref(_HEADS + name.encode())) is None:
        raise NoDefaultBranch(
            f"the default branch {name!r} (HEAD) of {source.display} does not exist"
        )
    return name
