"""Fetch and push: the task branch over the git broker's smart HTTP, for a runner that does
not see the broker's worktrees directory.

The runner keeps a clone per attempt in its own scratch directory, fetches the task branch
into it from ``<url>/<mission id>`` (the attempt's own push token, from its WorkspaceReady,
as the password of Basic authentication, as the broker expects), works there as it would
in a shared worktree, and pushes its commit back as a fast-forward of the task branch.
Nothing here reads git configuration or starts a program.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

from dulwich.client import HttpGitClient, HTTPUnauthorized
from dulwich.errors import GitProtocolError, HangupException, SendPackError
from dulwich.objects import ObjectID
from dulwich.pack import UnpackedObject
from dulwich.refs import Ref
from dulwich.repo import Repo

from aether_agent_runner.adapters.git import GitDir, commit_message_trailers, reset_to

USERNAME = "agent"


class RemoteError(Exception):
    """Fetching or pushing the task branch failed; the message says why (never the token).

    ``retryable`` is false when trying again cannot help (the broker refused the token).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Broker:
    """One mission's repository on the git broker's smart HTTP server."""

    def __init__(self, url: str, token: str, mission_id: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/") + "/" + mission_id
        self._base = url.rstrip("/") + "/"
        self._path = mission_id
        self._token = token
        self._timeout = timeout

    def _client(self) -> HttpGitClient:
        return HttpGitClient(
            self._base,
            username=USERNAME,
            password=self._token,
            timeout=self._timeout,
            quiet=True,
        )

    def _failed(self, doing: str, error: Exception) -> RemoteError:
        if isinstance(error, HTTPUnauthorized):
            return RemoteError(
                f"{doing} {self.url} failed: the git broker refused the token "
                "(the attempt's push token, or AETHER_AGENT_GIT_TOKEN where the broker "
                "hands out none, is not one it minted)",
                retryable=False,
            )
        detail = str(error) or type(error).__name__
        if self._token:
            detail = detail.replace(self._token, "***")
        if isinstance(error, GitProtocolError) and "http resp 403" in detail:
            return RemoteError(
                f"{doing} {self.url} failed: the git broker refused the token for this "
                "repository (a token serves one attempt of one mission, until it ends)",
                retryable=False,
            )
        return RemoteError(f"{doing} {self.url} failed: {detail}")

    def fetch_branch(self, repo: Repo, branch: str) -> str:
        """Fetch ``branch`` into ``repo``'s object store; the sha the broker has for it."""
        ref = Ref(f"refs/heads/{branch}".encode())
        found: dict[str, ObjectID] = {}

        def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
            sha = refs.get(ref)
            if sha is None:
                return []
            found["sha"] = sha
            return [] if sha in repo.object_store else [sha]

        try:
            self._client().fetch(self._path, repo, determine_wants=wants)
        except (HTTPUnauthorized, GitProtocolError, HangupException, OSError) as error:
            raise self._failed("fetching the task branch from", error) from error
        if "sha" not in found:
            raise RemoteError(f"the git broker has no branch {branch} at {self.url}")
        return found["sha"].decode()

    def push_branch(self, repo: Repo, branch: str, sha: str) -> None:
        """Move ``branch`` on the broker to ``sha``: a fast-forward, never forced."""
        ref = Ref(f"refs/heads/{branch}".encode())
        new = ObjectID(sha.encode())

        def update(refs: dict[Ref, ObjectID]) -> dict[Ref, ObjectID]:
            return {ref: new}

        def pack(
            have: AbstractSet[ObjectID],
            want: AbstractSet[ObjectID],
            *,
            ofs_delta: bool = False,
            progress: Callable[..., None] | None = None,
        ) -> tuple[int, Iterator[UnpackedObject]]:
            return repo.generate_pack_data(
                set(have), set(want), progress=progress, ofs_delta=ofs_delta
            )

        try:
            result = self._client().send_pack(self._path, update, pack)
        except (
            HTTPUnauthorized,
            GitProtocolError,
            HangupException,
            SendPackError,
            OSError,
        ) as error:
            raise self._failed("pushing the task branch to", error) from error
        refused = (result.ref_status or {}).get(ref)
        if refused:
            raise RemoteError(f"the git broker refused the push of {branch}: {refused}")


def prepare_clone(
    broker: Broker,
    directory: Path,
    branch: str,
    base_sha: str,
    task_id: str,
    attempt: int,
) -> None:
    """Make ``directory`` a clone with ``branch`` checked out where the attempt stands.

    A new clone starts at ``base_sha``. The broker's branch is expected at ``base_sha``, or
    at this attempt's own commit (pushed before a restart), which is then checked out so it
    is reported rather than redone. An existing clone (a journal of this attempt may be
    in its ``.git``) is left as it is when the broker's branch is still at ``base_sha``.
    """
    fresh = not (directory / ".git").is_dir()
    if fresh:
        directory.mkdir(parents=True, exist_ok=True)
        Repo.init(str(directory)).close()
    git = GitDir.clone(directory, branch)
    # The git directory opened as a bare repository: the worktree takes no part.
    with Repo(str(git.common), bare=True) as repo:
        remote = broker.fetch_branch(repo, branch)
        ref = Ref(f"refs/heads/{branch}".encode())
        if remote != base_sha:
            trailers = commit_message_trailers(remote, git.store())
            ours = trailers.get("Aether-Task") == task_id and trailers.get("Aether-Attempt") == str(
                attempt
            )
            if not ours:
                raise RemoteError(
                    f"the task branch {branch} is at {remote[:12]} on the git broker, "
                    f"not at the attempt's base {base_sha[:12]}",
                    retryable=False,
                )
            start = remote
        elif fresh or ref not in repo.refs:
            start = base_sha
        else:
            repo.refs.set_symbolic_ref(Ref(b"HEAD"), ref)
            return
        repo.refs[ref] = ObjectID(start.encode())
        repo.refs.set_symbolic_ref(Ref(b"HEAD"), ref)
    reset_to(git, start)
