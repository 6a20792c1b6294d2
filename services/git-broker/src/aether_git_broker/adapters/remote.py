"""Talking to other repositories: cloning a mission's remote repository, pushing results.

Everything goes through dulwich's clients: HTTP(S) and the git protocol in process, SSH
through the ``ssh`` program (never ``git``), run only as ``adapters.ssh`` runs it: the
operator's key and known hosts, host keys checked strictly, no user configuration. A
remote repository is kept as a bare clone under the broker's data directory, created
under a temporary name and renamed into place, so a clone cut short by a crash is
started again rather than used. Later missions on the same URL fetch only their base
branch into it.

A push first looks at the remote branch: already at the result → nothing to do (this is
what makes delivery happen once across restarts); behind it → pushed; anywhere else →
refused, since someone else moved it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dulwich.client import (
    GitClient,
    SSHGitClient,
    SubprocessGitClient,
    default_urllib3_manager,
)
from dulwich.client import get_transport_and_path as dulwich_transport
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether_git_broker.adapters import locks
from aether_git_broker.adapters.history import Commits, is_ancestor
from aether_git_broker.adapters.ssh import FixedSshVendor, SshAccess, explain, is_ssh
from aether_git_broker.sources import (
    InvalidRepository,
    LocalSource,
    RemoteSource,
    parse_repository,
    redact,
)

log = logging.getLogger("aether.git_broker.remote")

_ZERO = ObjectID(b"0" * 40)


class RemoteError(Exception):
    """A remote the broker could not use; the message is for people (no credentials)."""


NO_SSH = SshAccess()


def transport(url: str, timeout: float, ssh: SshAccess = NO_SSH) -> tuple[GitClient, str]:
    """A dulwich client for ``url``, with a timeout on HTTP; never one that runs git, and
    for SSH one whose ``ssh`` is run only as ``ssh`` says (refused without its settings)."""
    pool: Any = None
    if url.startswith(("http://", "https://")):
        pool = default_urllib3_manager(None, timeout=timeout)
    if is_ssh(url):
        problem = ssh.problem()
        if problem is not None:
            raise RemoteError(f"cannot reach {redact(url)} over SSH: {problem}")
    client, path = dulwich_transport(url, pool_manager=pool)
    if isinstance(client, SubprocessGitClient):  # pragma: no cover - not chosen for these URLs
        raise RemoteError(f"{redact(url)} would need the git program")
    if isinstance(client, SSHGitClient):
        # Whatever dulwich would take from configuration (core.sshCommand, GIT_SSH) is
        # left out: the vendor builds the whole command line itself.
        client.ssh_vendor = FixedSshVendor(dataclasses.replace(ssh, timeout=timeout))
        client.key_filename = None
        client.ssh_command = None  # type: ignore[assignment]
    elif is_ssh(url):  # pragma: no cover - dulwich chose another client for an SSH URL
        raise RemoteError(f"{redact(url)} is not an SSH remote dulwich can reach")
    return client, path


def _failure(
    what: str, display: str, error: BaseException, url: str = "", ssh: SshAccess = NO_SSH
) -> RemoteError:
    # urllib3 wraps the cause (refused, unresolvable, timed out) in a retry error.
    cause: BaseException = error
    while isinstance(getattr(cause, "reason", None), BaseException):
        cause = cause.reason  # type: ignore[attr-defined]
    reason = redact(str(cause)).strip() or type(cause).__name__
    if url and is_ssh(url):
        reason = explain(reason, url, ssh)
    if len(reason) > 300:
        reason = reason[:300] + "…"
    return RemoteError(f"could not {what} {display}: {reason}")


_NETWORK_ERRORS = (OSError, GitProtocolError, HangupException, NotGitRepository, ValueError)


class Remotes:
    """Clones of remote repositories under ``data_dir``, and pushes."""

    def __init__(self, data_dir: str, *, timeout: float = 300.0, ssh: SshAccess = NO_SSH) -> None:
        self.data_dir = data_dir
        self.timeout = timeout
        self.ssh = ssh

    def clone_path(self, source: RemoteSource) -> str:
        return os.path.join(self.data_dir, "repositories", source.directory)

    def clear_locks(self) -> list[str]:
        """Remove every lock file in the clones (only the broker writes them; call it
        before it does)."""
        root = os.path.join(self.data_dir, "repositories")
        if not os.path.isdir(root):
            return []
        removed: list[str] = []
        for directory, subdirectories, _ in os.walk(root):
            if "HEAD" in os.listdir(directory) and "objects" in subdirectories:
                removed += locks.clear_locks(directory)
                subdirectories.clear()  # a bare clone: nothing to look for beneath
        return removed

    def fetch(self, source: RemoteSource, branch: str) -> tuple[str, bool]:
        """Bring ``branch`` of the remote into the local clone (made if missing); returns
        the clone's path and whether it was made now. ``RemoteError`` says why when the
        remote cannot be read."""
        target = self.clone_path(source)
        if os.path.isdir(target):
            with Repo(target) as repo:
                self._fetch_branch(repo, source, branch)
            return target, False
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with Repo.init_bare(partial, mkdir=True) as repo:
            config = repo.get_config()
            config.set((b"remote", b"origin"), b"url", source.display.encode())
            config.write_to_path()
            self._fetch_branch(repo, source, branch)
        os.rename(partial, target)
        log.info("repository cloned", extra={"url": source.display, "path": target})
        return target, True

    def _fetch_branch(self, repo: Repo, source: RemoteSource, branch: str) -> None:
        ref = Ref(b"refs/heads/" + branch.encode())
        wanted: list[ObjectID] = []

        def determine_wants(
            refs: Mapping[Ref, ObjectID], depth: int | None = None
        ) -> list[ObjectID]:
            sha = refs.get(ref)
            if sha is None:
                return []
            wanted.append(sha)
            return [sha] if sha not in repo.object_store else []

        try:
            client, path = transport(source.url, self.timeout, self.ssh)
            result = client.fetch(path, repo, determine_wants=determine_wants)
        except _NETWORK_ERRORS as error:
            raise _failure("fetch from", source.display, error, source.url, self.ssh) from None
        sha = result.refs.get(ref)
        if sha is None or not wanted:
            raise RemoteError(f"base branch {branch!r} does not exist in {source.display}")
        # The remote's view of the branch wins: this clone holds nothing of its own there.
        repo.refs[ref] = sha

    # --- delivery ---------------------------------------------------------------

    def push(self, repository_path: str, target: str, branch: str, sha: str) -> PushOutcome:
        """Make ``branch`` on ``target`` (a URL, a path or a remote's name) point at ``sha``.

        Raises ``RemoteError`` when the remote cannot be reached or refuses the push.
        """
        with Repo(repository_path) as repo:
            url = self.resolve(repo, target)
            display = redact(url)
            ref = Ref(b"refs/heads/" + branch.encode())
            new = ObjectID(sha.encode())
            commits = Commits(repo.object_store)
            seen: dict[str, ObjectID | None] = {}

            def update_refs(refs: dict[Ref, ObjectID]) -> dict[Ref, ObjectID]:
                current = refs.get(ref)
                seen["current"] = current
                if current == new:
                    return {}
                if current is None or current == _ZERO:
                    return {ref: new}
                if current not in repo.object_store or not is_ancestor(commits, current, new):
                    return {}  # someone else moved it: left alone, reported below
                return {ref: new}

            def generate_pack_data(
                have: Any, want: Any, *, ofs_delta: bool = False, progress: Any = None
            ) -> tuple[int, Iterator[Any]]:
                return repo.generate_pack_data(
                    set(have), set(want), progress=progress, ofs_delta=ofs_delta
                )

            try:
                client, path = transport(url, self.timeout, self.ssh)
                result = client.send_pack(path.encode(), update_refs, generate_pack_data)
            except _NETWORK_ERRORS as error:
                raise _failure("push to", display, error, url, self.ssh) from None
            current = seen.get("current")
            if current == new:
                return PushOutcome(kind="already_pushed", remote=display)
            if current is not None and current != _ZERO and (result.refs or {}).get(ref) != new:
                raise RemoteError(
                    f"{branch} on {display} is at {current.decode()[:12]}, which is not an "
                    f"ancestor of {sha[:12]}; someone else moved it, so it was left alone"
                )
            refused = (result.ref_status or {}).get(ref)
            if refused is not None:
                raise RemoteError(f"{display} refused {branch}: {refused}")
            return PushOutcome(kind="pushed", remote=display)

    def resolve(self, repo: Repo, target: str) -> str:
        """The URL (or path) a push target names: itself, or a remote of ``repo``."""
        if "://" in target or target.startswith("/") or "@" in target:
            url = target
        else:
            try:
                url = repo.get_config().get((b"remote", target.encode()), b"url").decode()
            except KeyError:
                raise RemoteError(f"the repository has no remote named {target!r}") from None
        try:
            source = parse_repository(url)
        except InvalidRepository as error:
            raise RemoteError(f"cannot push: {error}") from None
        return source.path if isinstance(source, LocalSource) else source.url


@dataclass(frozen=True)
class PushOutcome:
    kind: Literal["pushed", "already_pushed"]
    remote: str


PushFunction = Callable[[str, str, str, str], PushOutcome]
