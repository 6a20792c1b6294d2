"""The broker's read API: what the gateway and the planner need to know about
repositories they never open themselves (a remote URL, a path on the broker's machine or
volume).

Three requests on the broker's own HTTP port, all ``GET`` and JSON:

- ``/repository/diff?repository=<ref>&base=<sha>&head=<sha>``: what ``head`` changed
  against ``base`` in the broker's copy of the repository (a local repository itself, a
  remote one's clone), bounded (see ``adapters.diff``);
- ``/repository/default-branch?repository=<ref>``: the branch a mission without a base
  branch would start from (a local ``HEAD``, a remote's advertised ``HEAD``).

Each request carries the read token (``Authorization: Bearer <token>``), which the broker
compares in constant time with ``AETHER_GIT_READ_TOKEN``. It grants reading only: it is
not the secret push tokens are minted with, and nothing here writes, fetches into a
clone or runs what a repository holds. A repository reference is read by the same rules
as a mission's (``sources.parse_repository``, inside the configured roots), so the token
shows nothing a mission could not make the broker read. Answers: 400 for a reference,
commit id or path that is not usable, 401 without the token, 404 for a repository or commit the
broker does not have, 502 when a remote cannot be reached, 503 when the API is off
(no token configured); each with ``{"error": <reason>}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec

from aether_events.diffs import CommitDiff, RepositoryFiles
from aether_git_broker import metrics
from aether_git_broker.adapters.defaultbranch import (
    NoDefaultBranch,
    local_default_branch,
    remote_default_branch,
)
from aether_git_broker.adapters.diff import DiffError, commit_diff, is_sha
from aether_git_broker.adapters.files import MAX_PATHS, InvalidPath, checked_path, read_texts
from aether_git_broker.adapters.remote import RemoteError, Remotes
from aether_git_broker.adapters.repository import RepositoryError, open_repository
from aether_git_broker.sources import (
    InvalidRepository,
    LocalSource,
    RemoteSource,
    parse_repository,
    redact,
)
from aether_runtime.health import ASGIApp, Receive, Scope, Send

log = logging.getLogger("aether.git_broker.read")

DIFF_PATH = "/repository/diff"
DEFAULT_BRANCH_PATH = "/repository/default-branch"
FILES_PATH = "/repository/files"
# Reads run in threads beside the broker's one writer; a few at a time at most.
MAX_CONCURRENT_READS = 4


class DefaultBranch(msgspec.Struct, frozen=True, kw_only=True):
    repository: str
    default_branch: str


class ReadFailed(Exception):
    """A request the API answers with ``status`` and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ReadApi:
    """The three routes, sharing the token check and a bound on concurrent reads."""

    def __init__(self, token: str, roots: tuple[str, ...], remotes: Remotes) -> None:
        self._token = token.encode()
        self._roots = roots
        self._remotes = remotes
        self._reads = asyncio.Semaphore(MAX_CONCURRENT_READS)

    def routes(self) -> dict[str, ASGIApp]:
        return {
            DIFF_PATH: self._route("diff", self._diff),
            DEFAULT_BRANCH_PATH: self._route("default-branch", self._default_branch),
            FILES_PATH: self._route("files", self._files),
        }

    # --- the requests ----------------------------------------------------------------

    def _source(self, query: Query) -> LocalSource | RemoteSource:
        text = query.one("repository")
        try:
            return parse_repository(text, self._roots)
        except InvalidRepository as error:
            raise ReadFailed(400, str(error)) from None

    def _path(self, source: LocalSource | RemoteSource) -> str:
        """Where the broker holds the repository (a remote's clone, made when a mission
        on it was prepared)."""
        if isinstance(source, LocalSource):
            return source.path
        path = self._remotes.clone_path(source)
        if not os.path.isdir(path):
            raise ReadFailed(
                404, f"the broker holds no clone of {source.display} (no mission prepared it)"
            )
        return path

    def _diff(self, query: Query) -> CommitDiff:
        source = self._source(query)
        base, head = query.one("base"), query.one("head")
        for name, value in (("base", base), ("head", head)):
            if not is_sha(value):
                raise ReadFailed(400, f"{name} must be a commit id (40 hexadecimal digits)")
        try:
            with open_repository(self._path(source)) as repo:
                return commit_diff(repo, base, head)
        except (RepositoryError, DiffError) as error:
            raise ReadFailed(404, redact(str(error))) from None

    def _files(self, query: Query) -> RepositoryFiles:
        source = self._source(query)
        commit = query.one("commit")
        if not is_sha(commit):
            raise ReadFailed(400, "commit must be a commit id (40 hexadecimal digits)")
        paths = query.many("path")
        if not paths:
            raise ReadFailed(400, "name at least one file (path=…)")
        if len(paths) > MAX_PATHS:
            raise ReadFailed(400, f"at most {MAX_PATHS} paths a request ({len(paths)} given)")
        try:
            checked = [checked_path(path) for path in paths]
        except InvalidPath as error:
            raise ReadFailed(400, str(error)) from None
        try:
            with open_repository(self._path(source)) as repo:
                return read_texts(repo, commit, checked)
        except (RepositoryError, DiffError) as error:
            raise ReadFailed(404, redact(str(error))) from None

    def _default_branch(self, query: Query) -> DefaultBranch:
        source = self._source(query)
        try:
            if isinstance(source, LocalSource):
                branch = local_default_branch(source.path)
            else:
                branch = remote_default_branch(source, self._remotes.timeout, self._remotes.ssh)
        except RepositoryError as error:
            raise ReadFailed(404, redact(str(error))) from None
        except NoDefaultBranch as error:
            raise ReadFailed(404, str(error)) from None
        except RemoteError as error:
            raise ReadFailed(502, str(error)) from None
        return DefaultBranch(repository=query.one("repository"), default_branch=branch)

    # --- HTTP ------------------------------------------------------------------------

    def _route(self, name: str, read: Callable[[Query], Any]) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            status, body = await self._answer(scope, read)
            metrics.GIT_READ_REQUESTS.labels(name, str(status)).inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return app

    async def _answer(self, scope: Scope, read: Callable[[Query], Any]) -> tuple[int, bytes]:
        try:
            if scope.get("method") != "GET":
                raise ReadFailed(405, "only GET is served here")
            self._authorise(scope)
            query = Query.of(scope)
            async with self._reads:
                answer = await asyncio.to_thread(read, query)
        except ReadFailed as failed:
            return failed.status, msgspec.json.encode({"error": failed.reason})
        except Exception:  # a bug or a broken repository: say so, keep serving
            log.exception("a read request failed")
            return 500, msgspec.json.encode({"error": "the broker could not read the repository"})
        return 200, msgspec.json.encode(answer)

    def _authorise(self, scope: Scope) -> None:
        if not self._token:
            raise ReadFailed(503, "the broker's read API is off (AETHER_GIT_READ_TOKEN is unset)")
        given = b""
        for key, value in scope.get("headers") or []:
            if key.lower() == b"authorization":
                scheme, _, rest = bytes(value).partition(b" ")
                if scheme.lower() == b"bearer":
                    given = rest.strip()
        if not hmac.compare_digest(given, self._token):
            raise ReadFailed(401, "a valid read token is needed")


class Query:
    """A request's query: ``path`` may be given many times, any other key once."""

    REPEATABLE = frozenset({"path"})

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    @classmethod
    def of(cls, scope: Scope) -> Query:
        raw = bytes(scope.get("query_string") or b"")
        if len(raw) > 131_072:
            raise ReadFailed(400, "the query is too long")
        try:
            parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ReadFailed(400, "the query is not UTF-8") from None
        for key, values in parsed.items():
            if len(values) != 1 and key not in cls.REPEATABLE:
                raise ReadFailed(400, f"{key} is given more than once")
        return cls(parsed)

    def one(self, key: str) -> str:
        """The value of ``key`` (empty when it is not given)."""
        values = self._values.get(key, [""])
        return values[0]

    def many(self, key: str) -> list[str]:
        """Every value of a repeatable ``key``, in the order given."""
        return list(self._values.get(key, []))
