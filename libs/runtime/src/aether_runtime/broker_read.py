"""A client of the git broker's read API: what a service knows of repositories it never
opens itself (task diffs and default branches for the gateway, files at a commit for the
planner).

The broker holds every mission's repository (a local one itself, a remote one's clone)
and answers ``GET`` requests carrying its read token, which grants reading only. This
client bounds what it reads (``MAX_ANSWER_BYTES``), checks the answer's shape, and turns
every failure into ``BrokerReadFailed`` with a status that says whose it is: the broker's
own 400/404/502/503 pass through, a token it refused is 401, an answer too large or
malformed 502, a broker that cannot be reached 503, one that did not answer in time 504.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import httpx
import msgspec

from aether_events.diffs import RepositoryFiles
from aether_runtime import tls

# The broker's own bounds (a diff's 20,000 lines; 64 files of 20,000 bytes) fit well
# inside this.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
TIMEOUT_SECONDS = 60.0
FILES_PATH = "/repository/files"
# The broker's bound on the paths of one request, and a bound on a request's query that
# every HTTP server takes (the paths of a larger request are asked in several).
MAX_PATHS_A_REQUEST = 64
MAX_QUERY_CHARS = 6_000
T = TypeVar("T")
Params = list[tuple[str, str]]


class BrokerReadFailed(Exception):
    """The broker did not answer what was asked: ``status`` as above, ``reason`` its
    words (or ours when it could not say); ``answered`` is false when no answer came (the
    broker could not be reached or took too long: worth asking again)."""

    def __init__(self, status: int, reason: str, *, answered: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.answered = answered


class BrokerRead:
    """The read API at ``url`` with ``token``; ``settings`` names the caller's two settings
    (URL, token) in what a failure says. An empty ``url`` is a read API not configured:
    every read fails with 503 saying so."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        settings: tuple[str, str],
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._settings = settings
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        """One client for every request, with the process's one TLS context (``tls``):
        loading a trust store costs tens of milliseconds of CPU, more than a read. It
        keeps no connection between requests, so it holds nothing open that would need
        closing."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_keepalive_connections=0),
                verify=tls.shared(),
            )
        return self._client

    @property
    def configured(self) -> bool:
        return bool(self._url)

    async def files(self, repository: str, commit: str, paths: Sequence[str]) -> RepositoryFiles:
        """The text of ``paths`` at ``commit`` of the mission repository ``repository``
        (its reference as the mission gave it), asked in as few requests as fit."""
        files: dict[str, str] = {}
        truncated: list[str] = []
        omitted: dict[str, str] = {}
        for batch in _batches(list(dict.fromkeys(paths))):
            params = [("repository", repository), ("commit", commit)]
            params += [("path", path) for path in batch]
            found = await self.get(FILES_PATH, params, RepositoryFiles)
            files.update(found.files)
            truncated += found.truncated
            omitted.update(found.omitted)
        return RepositoryFiles(commit_sha=commit, files=files, truncated=truncated, omitted=omitted)

    async def get(self, path: str, params: Params, kind: type[T]) -> T:
        """``GET path?params`` decoded as ``kind``, or ``BrokerReadFailed``."""
        url_setting, token_setting = self._settings
        if not self._url:
            raise BrokerReadFailed(
                503, f"the git broker's read API is not configured ({url_setting})"
            )
        headers = {"authorization": f"Bearer {self._token}"}
        url = self._url + path
        try:
            async with self._http().stream(
                "GET", url, params=list(params), headers=headers
            ) as answer:
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise BrokerReadFailed(502, "the git broker's answer is too large")
                status = answer.status_code
        except httpx.TimeoutException:
            raise BrokerReadFailed(
                504, "the git broker did not answer in time", answered=False
            ) from None
        except httpx.HTTPError as error:
            raise BrokerReadFailed(
                503, f"the git broker cannot be reached ({type(error).__name__})", answered=False
            ) from None
        if status == 200:
            try:
                return msgspec.json.decode(bytes(body), type=kind)
            except msgspec.DecodeError as error:
                raise BrokerReadFailed(
                    502, f"the git broker's answer is malformed: {error}"
                ) from None
        if status in (401, 403):
            raise BrokerReadFailed(401, f"the git broker refused the read token ({token_setting})")
        raise BrokerReadFailed(status, _reason_of(bytes(body), status))


def _batches(paths: list[str]) -> list[list[str]]:
    """``paths`` in requests of at most ``MAX_PATHS_A_REQUEST`` paths and about
    ``MAX_QUERY_CHARS`` characters each (a path is always sent, however long)."""
    batches: list[list[str]] = []
    batch: list[str] = []
    size = 0
    for path in paths:
        cost = len(path) * 3 + 6  # percent-encoded at worst, and "&path="
        if batch and (len(batch) == MAX_PATHS_A_REQUEST or size + cost > MAX_QUERY_CHARS):
            batches.append(batch)
            batch, size = [], 0
        batch.append(path)
        size += cost
    if batch:
        batches.append(batch)
    return batches


def _reason_of(body: bytes, status: int) -> str:
    try:
        error = msgspec.json.decode(body[:4096], type=dict[str, str]).get("error", "")
    except msgspec.DecodeError:
        error = ""
    return error[:500] or f"the git broker answered {status}"
