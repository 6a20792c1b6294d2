"""A task branch's diff against its base, and a repository's default branch, asked of the
git broker's read API.

The broker holds every mission's repository (a local one itself, a remote one's clone),
so it answers for repositories the gateway cannot read: a URL, a path on another machine
or volume. The gateway holds only the broker's read token (``AETHER_GATEWAY_BROKER_TOKEN``,
which cannot push or mint push tokens) and never opens a repository itself. The broker
bounds what it sends; the gateway bounds what it reads (``MAX_ANSWER_BYTES``) and checks
the answer's shape before passing it on.
"""

from __future__ import annotations

from typing import TypeVar

import httpx
import msgspec

from aether_events.diffs import CommitDiff

# The broker's own bound (20,000 lines, 200 files) fits well inside this.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
TIMEOUT_SECONDS = 60.0
T = TypeVar("T")


class TaskDiff(CommitDiff, frozen=True, kw_only=True):
    """What a task's commit changed against the integration head it started from."""

    mission_id: str
    task_id: str


class DefaultBranchAnswer(msgspec.Struct, frozen=True, kw_only=True):
    default_branch: str


class BrokerUnavailable(Exception):
    """The broker could not answer: ``status`` is what the gateway answers (404 for a
    repository or commit the broker does not have, 400 for a reference it refuses,
    502/503/504 when the broker or the remote cannot be reached)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BrokerReader:
    """The broker's read API over HTTP (``url`` empty: not configured, every read is a
    503 saying so)."""

    def __init__(self, url: str, token: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    async def task_diff(
        self, repository: str, mission_id: str, task_id: str, base: str, head: str
    ) -> TaskDiff:
        found = await self._get(
            "/repository/diff",
            {"repository": repository, "base": base, "head": head},
            CommitDiff,
        )
        return TaskDiff(**msgspec.structs.asdict(found), mission_id=mission_id, task_id=task_id)

    async def default_branch(self, repository: str) -> str:
        found = await self._get(
            "/repository/default-branch", {"repository": repository}, DefaultBranchAnswer
        )
        return found.default_branch

    async def _get(self, path: str, params: dict[str, str], kind: type[T]) -> T:
        if not self._url:
            raise BrokerUnavailable(
                503, "the git broker's read API is not configured (AETHER_GATEWAY_BROKER_URL)"
            )
        headers = {"authorization": f"Bearer {self._token}"}
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout) as client,
                client.stream("GET", self._url + path, params=params, headers=headers) as answer,
            ):
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise BrokerUnavailable(502, "the git broker's answer is too large")
                status = answer.status_code
        except httpx.TimeoutException:
            raise BrokerUnavailable(504, "the git broker did not answer in time") from None
        except httpx.HTTPError as error:
            raise BrokerUnavailable(
                503, f"the git broker cannot be reached ({type(error).__name__})"
            ) from None
        if status == 200:
            try:
                return msgspec.json.decode(bytes(body), type=kind)
            except msgspec.DecodeError as error:
                raise BrokerUnavailable(
                    502, f"the git broker's answer is malformed: {error}"
                ) from None
        raise BrokerUnavailable(_status_for(status), _reason_of(bytes(body), status))


def _status_for(broker_status: int) -> int:
    """What the gateway answers for the broker's status: the caller's mistakes and what
    is missing pass through; the gateway's own credential being refused is the gateway's
    fault (503), not the caller's (401)."""
    if broker_status in (400, 404, 502, 503, 504):
        return broker_status
    return 503 if broker_status in (401, 403) else 502


def _reason_of(body: bytes, status: int) -> str:
    try:
        error = msgspec.json.decode(body[:4096], type=dict[str, str]).get("error", "")
    except msgspec.DecodeError:
        error = ""
    if status in (401, 403):
        return "the git broker refused the gateway's read token (AETHER_GATEWAY_BROKER_TOKEN)"
    return error[:500] or f"the git broker answered {status}"
