"""Git's smart HTTP protocol for agent runners on other machines, served by dulwich.

An agent runner that does not share the broker's worktree directory clones
``http://<broker>:<port>/<mission id>``, works on its task branch and pushes it back. The
server is dulwich's WSGI application with four restrictions around it:

- every request carries a token of one task attempt (``Authorization: Bearer <token>``,
  or Basic with the token as the password, which is what ``git`` sends from
  ``https://x:<token>@…``); otherwise 401. The broker mints it for the attempt when it
  prepares the attempt's workspace and hands it over in ``WorkspaceReady``: an HMAC of
  the mission, task and attempt under the broker's secret, so it is the same after a
  restart and cannot be forged or widened;
- the token opens only its own mission's repository, and only while its attempt is live
  (its workspace announced, no AgentCompleted, AgentFailed or TaskTimedOut yet, the
  mission not finished); otherwise 403;
- only the smart protocol's four requests are served (no dumb file access, which would
  hand out any object by its path);
- the repository shows only the integration branch and the attempt's own task branch;
- a push may only move that task branch forward (no other branch, no new branches, no
  deletions, no rewriting), and the repository's hooks are not run;
- a push is bounded: its pack as sent (``max_push_bytes``, git's ``receive.maxInputSize``)
  and each object in it as inflated (``max_object_bytes``: an object's header, or a
  delta's, declares its length before any of it is inflated, so a few hundred bytes
  that would inflate to gigabytes are refused unread). A push past either is refused
  with git's ``unpack`` error and its temporary pack file removed: nothing is kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import dulwich.object_store
import dulwich.pack
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.object_store import DiskObjectStore, PackInputTooLarge
from dulwich.objects import ObjectID
from dulwich.pack import PackData, PackIndexer, PackStreamCopier
from dulwich.protocol import CAPABILITY_DELETE_REFS, Protocol
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import Backend, BackendRepo, ReceivePackHandler, UploadPackHandler
from dulwich.web import GunzipFilter, HTTPGitApplication, LimitedInputFilter

from aether_git_broker import metrics
from aether_git_broker.adapters.history import Commits, is_ancestor
from aether_git_broker.adapters.objects import delta_target_size

log = logging.getLogger("aether.git_broker.http")

_ZERO = b"0" * 40
_ALLOWED = re.compile(r"^/[^/]+(?:/info/refs|/git-upload-pack|/git-receive-pack)$")
_SERVICES = ("git-upload-pack", "git-receive-pack")

WSGIEnvironment = dict[str, Any]
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Served:
    """What the server may show of one mission's repository to one attempt."""

    path: str
    integration_branch: str
    task_branch: str  # the attempt's own branch, the only one it may push

    def visible(self, ref: bytes) -> bool:
        return ref == b"refs/heads/" + self.integration_branch.encode() or self.pushable(ref)

    def pushable(self, ref: bytes) -> bool:
        return ref == b"refs/heads/" + self.task_branch.encode()


@dataclass(frozen=True)
class Attempt:
    """Whom a push token was minted for."""

    mission_id: str
    task_id: str
    attempt: int


# The repository an attempt may see, while the attempt is live; None otherwise.
Lookup = Callable[[Attempt], Served | None]


class PushTokens:
    """Tokens per task attempt: ``<claims>.<mac>``, the claims (mission, task, attempt)
    in base64url JSON and the mac an HMAC-SHA256 of them under the broker's secret."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("minting push tokens needs a secret")
        self._key = hashlib.sha256(b"aether push token\0" + secret.encode()).digest()

    def _mac(self, claims: bytes) -> str:
        return hmac.new(self._key, claims, hashlib.sha256).hexdigest()

    def mint(self, mission_id: str, task_id: str, attempt: int) -> str:
        claims = json.dumps([mission_id, task_id, attempt], separators=(",", ":")).encode()
        encoded = base64.urlsafe_b64encode(claims).decode().rstrip("=")
        return f"{encoded}.{self._mac(encoded.encode())}"

    def verify(self, token: str) -> Attempt | None:
        encoded, dot, mac = token.partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(encoded.encode()).encode()):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            mission_id, task_id, attempt = claims
        except (ValueError, TypeError, binascii.Error):
            return None
        if not (isinstance(mission_id, str) and isinstance(task_id, str)):
            return None
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            return None
        return Attempt(mission_id, task_id, attempt)


# The most one object of the pack this thread is receiving may inflate to (unset: no
# receive under way here). dulwich reads a pack's objects in functions of its own, so the
# bound is put on the two places every object's length is declared, and holds only in
# the thread of a push (the broker's own fetches and merges are left as they are).
_receiving = threading.local()
_decode_object_header = dulwich.pack._decode_object_header
_apply_delta = dulwich.pack.apply_delta


def _object_too_large(size: int) -> None:
    limit: int | None = getattr(_receiving, "max_object_bytes", None)
    if limit is not None and size > limit:
        raise PackInputTooLarge(
            f"an object of {size:,} bytes, more than the {limit:,} one pushed object may hold"
        )


def _bounded_header(raw: list[int]) -> tuple[int, int]:
    type_num, size = _decode_object_header(raw)
    _object_too_large(size)
    return type_num, size


def _bounded_delta(base: bytes | list[bytes], delta: bytes | list[bytes]) -> list[bytes]:
    if getattr(_receiving, "max_object_bytes", None) is not None:
        head = delta if isinstance(delta, bytes) else _first_bytes(delta, 20)
        _object_too_large(_delta_target_size(head))
    applied: list[bytes] = _apply_delta(base, delta)
    return applied


def _first_bytes(chunks: Iterable[bytes], length: int) -> bytes:
    taken: list[bytes] = []
    for chunk in chunks:
        taken.append(chunk[:length])
        length -= len(taken[-1])
        if length <= 0:
            break
    return b"".join(taken)


def _delta_target_size(delta: bytes) -> int:
    """The target length a delta declares (its second number; git's delta format)."""
    try:
        return delta_target_size(delta)
    except ValueError:
        raise PackInputTooLarge("a delta whose header ends too soon") from None


dulwich.pack._decode_object_header = _bounded_header
dulwich.pack.apply_delta = _bounded_delta  # type: ignore[assignment]


def _add_thin_pack_or_nothing(
    store: DiskObjectStore,
    read_all: Callable[[int], bytes],
    read_some: Callable[[int], bytes] | None,
    progress: Callable[..., None] | None = None,
    *,
    max_input_size: int | None = None,
) -> Any:
    """dulwich's ``add_thin_pack``, except that a pack it refuses (too large, broken)
    leaves no temporary file behind: dulwich's own leaves it for a later ``gc``, so
    every refused push would keep up to its whole size on the broker's disk."""
    if max_input_size:
        read_all, read_some = dulwich.object_store._bound_read_callables(
            read_all, read_some, max_input_size
        )
    fd, path = tempfile.mkstemp(dir=store.path, prefix="tmp_pack_")
    try:
        with os.fdopen(fd, "w+b") as file:
            os.chmod(path, 0o444)
            indexer = PackIndexer(
                file, store.object_format.hash_func, resolve_ext_ref=store.get_raw
            )
            copier = PackStreamCopier(
                store.object_format.hash_func,
                read_all,
                read_some,
                file,
                delta_iter=indexer,  # type: ignore[arg-type]
            )
            copier.verify(progress=progress)
            file.flush()
            file.seek(0)
            with PackData(path, file=file, object_format=store.object_format) as data:
                indexer.set_pack_data(data)
                entries, ext_refs = store._index_pack(indexer, len(copier), progress=progress)
            return store._complete_pack(file, path, entries, ext_refs, progress=progress)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        raise


class ScopedRepo(Repo):
    """A repository that shows only one mission's branches, and takes a pushed pack
    whole or not at all."""

    def __init__(self, served: Served) -> None:
        super().__init__(served.path)
        self.served = served
        store = self.object_store
        if isinstance(store, DiskObjectStore):
            store.add_thin_pack = functools.partial(_add_thin_pack_or_nothing, store)  # type: ignore[method-assign]

    def get_refs(self) -> dict[Ref, ObjectID]:
        return {ref: sha for ref, sha in super().get_refs().items() if self.served.visible(ref)}


class MissionBackend(Backend):
    """``/<mission id>`` → that mission's repository, as the request's attempt may see it
    (the application has checked the attempt and the mission before)."""

    def __init__(
        self, max_push_bytes: int | None = None, max_object_bytes: int | None = None
    ) -> None:
        self._opened = threading.local()
        self.max_push_bytes = max_push_bytes
        self.max_object_bytes = max_object_bytes

    def open_repository(self, path: str | bytes) -> BackendRepo:
        served: Served | None = getattr(self._opened, "served", None)
        if served is None:
            raise NotGitRepository("no repository for this request")
        repo = ScopedRepo(served)
        self.opened().append(repo)
        return repo

    def serve(self, served: Served) -> None:
        """What this thread's request may see (one request per thread)."""
        self._opened.served = served

    def opened(self) -> list[Repo]:
        if not hasattr(self._opened, "repos"):
            self._opened.repos = []
        repos: list[Repo] = self._opened.repos
        return repos


def _answering_protocol_errors(proto: Protocol, handle: Callable[[], None]) -> None:
    """Run ``handle``; a request it cannot serve (a want of an object that is not
    advertised, a malformed pkt-line) is answered with git's ``ERR`` line, as
    ``git http-backend`` does, instead of failing the HTTP request with a 500."""
    try:
        handle()
    except HangupException:
        log.info("git client hung up")
    except (GitProtocolError, ValueError) as error:
        log.info("refused a smart HTTP request", extra={"reason": str(error)})
        proto.write_pkt_line(b"ERR " + str(error).encode("utf-8", "replace")[:500])


class ScopedUploadPack(UploadPackHandler):
    """upload-pack that answers what it cannot serve with a protocol error."""

    def handle(self) -> None:
        _answering_protocol_errors(self.proto, super().handle)


class TaskBranchReceivePack(ReceivePackHandler):
    """receive-pack that only moves an existing task branch forward, without hooks, and
    takes a pack only within the backend's bounds."""

    def handle(self) -> None:
        backend = self.backend
        assert isinstance(backend, MissionBackend)
        _receiving.max_object_bytes = backend.max_object_bytes
        try:
            _answering_protocol_errors(self.proto, super().handle)
        finally:
            _receiving.max_object_bytes = None

    def _receive_max_input_size(self) -> int | None:
        backend = self.backend
        assert isinstance(backend, MissionBackend)
        return backend.max_push_bytes

    def capabilities(self) -> Iterable[bytes]:
        return [c for c in super().capabilities() if c != CAPABILITY_DELETE_REFS]

    def _on_pre_receive(self, client_refs: Any) -> None:
        return None

    def _on_post_receive(self, client_refs: Any) -> None:
        return None

    def _on_update(self, ref_name: Ref, old_sha: ObjectID, new_sha: ObjectID) -> bytes | None:
        repo = self.repo
        assert isinstance(repo, ScopedRepo)
        if not repo.served.pushable(ref_name):
            return b"only this mission's task branches can be pushed"
        if new_sha == _ZERO:
            return b"branches cannot be deleted here"
        if old_sha == _ZERO:
            return b"the task branch must exist (the broker creates it)"
        if not is_ancestor(Commits(repo.object_store), old_sha, new_sha):
            return b"only fast-forward pushes are accepted"
        return None


HANDLERS: dict[bytes, Any] = {
    b"git-upload-pack": ScopedUploadPack,
    b"git-receive-pack": TaskBranchReceivePack,
}


def token_of(header: str) -> str:
    """The token an ``Authorization`` header carries (Bearer, or Basic with the token as
    the password or, with an empty password, as the user name); empty if none."""
    scheme, _, value = header.strip().partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            user, _, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return ""
        given = password or user
    return given


def _respond(
    start_response: StartResponse, status: str, text: str, *headers: tuple[str, str]
) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), *headers])
    return [text.encode()]


class _Closing:
    """A response body that closes the repositories its request opened when done."""

    def __init__(self, body: Iterable[bytes], repos: list[Repo]) -> None:
        self._body = body
        self._repos = repos

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        while self._repos:
            self._repos.pop().close()


class GitHttpApp:
    """The WSGI application: authentication and routing around dulwich's."""

    def __init__(
        self,
        lookup: Lookup,
        tokens: PushTokens,
        *,
        max_push_bytes: int | None = None,
        max_object_bytes: int | None = None,
    ) -> None:
        self._lookup = lookup
        self._tokens = tokens
        self._backend = MissionBackend(max_push_bytes, max_object_bytes)
        self._git = LimitedInputFilter(
            GunzipFilter(HTTPGitApplication(self._backend, handlers=HANDLERS))
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        service = _service_of(environ, path)
        attempt = self._tokens.verify(token_of(environ.get("HTTP_AUTHORIZATION", "")))
        if attempt is None:
            metrics.GIT_HTTP_REQUESTS.labels(service, "401").inc()
            return _respond(
                start_response,
                "401 Unauthorized",
                "a token is needed\n",
                ("WWW-Authenticate", 'Basic realm="aether"'),
            )
        if service == "other":
            metrics.GIT_HTTP_REQUESTS.labels(service, "404").inc()
            return _respond(start_response, "404 Not Found", "not a smart HTTP request\n")
        mission = path.strip("/").split("/", 1)[0].removesuffix(".git")
        served = self._lookup(attempt) if mission == attempt.mission_id else None
        if served is None:
            metrics.GIT_HTTP_REQUESTS.labels(service, "403").inc()
            log.info(
                "refused a push token",
                extra={
                    "mission_id": mission,
                    "task_id": attempt.task_id,
                    "attempt": attempt.attempt,
                },
            )
            return _respond(
                start_response,
                "403 Forbidden",
                "this token is for another mission, or its attempt has ended\n",
            )
        self._backend.serve(served)
        metrics.GIT_HTTP_REQUESTS.labels(service, "ok").inc()
        repos = self._backend.opened()
        return _Closing(self._git(environ, start_response), repos)


def _service_of(environ: WSGIEnvironment, path: str) -> str:
    if not _ALLOWED.match(path):
        return "other"
    if path.endswith("/info/refs"):
        query = environ.get("QUERY_STRING", "")
        wanted = dict(part.partition("=")[::2] for part in query.split("&") if part)
        service = wanted.get("service", "")
        return service if service in _SERVICES else "other"
    return path.rsplit("/", 1)[1]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("git http: " + format, *args)


class GitHttpServer:
    """The smart HTTP server on its own port, in a thread of its own."""

    def __init__(self, app: GitHttpApp, host: str, port: int) -> None:
        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        # A short poll: ``stop`` waits for the serving loop to notice (half a second by
        # default, on every broker stop).
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="git-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("serving repositories over smart HTTP", extra={"port": self.port})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
