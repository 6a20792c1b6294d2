"""A task branch's diff against its base, a mission's integration branch's against the
mission's base, and a repository's default branch, asked of the git broker's read API.

The broker holds every mission's repository (a local one itself, a remote one's clone),
so it answers for repositories the gateway cannot read: a URL, a path on another machine
or volume. The gateway holds only the broker's read token (``AETHER_GATEWAY_BROKER_TOKEN``,
which cannot push or mint push tokens) and never opens a repository itself. The broker
bounds what it sends; the runtime's client (``aether_runtime.broker_read``) bounds what
is read and checks the answer's shape before it is passed on.
"""

from __future__ import annotations

import msgspec

from aether_events.diffs import CommitDiff
from aether_runtime.broker_read import BrokerRead, BrokerReadFailed

SETTINGS = ("AETHER_GATEWAY_BROKER_URL", "AETHER_GATEWAY_BROKER_TOKEN")


class TaskDiff(CommitDiff, frozen=True, kw_only=True):
    """What a task's commit changed against the integration head it started from."""

    mission_id: str
    task_id: str


class MissionDiff(CommitDiff, frozen=True, kw_only=True):
    """What a mission's integration branch changed against its base: every task merged
    so far (the result, once the mission completed)."""

    mission_id: str
    integration_branch: str


class DefaultBranchAnswer(msgspec.Struct, frozen=True, kw_only=True):
    default_branch: str


# When a 503 of the broker's is worth asking about again, in seconds: a broker out of
# reach (restarting, say) soon; a read API not configured, switched off or refusing the
# gateway's token not before an operator has changed a setting.
BROKER_RETRY_SECONDS = 5
SETTING_RETRY_SECONDS = 60


class BrokerUnavailable(Exception):
    """The broker could not answer: ``status`` is what the gateway answers (404 for a
    repository or commit the broker does not have, 400 for a reference it refuses,
    502/503/504 when the broker or the remote cannot be reached); ``retry_after`` when
    to ask again (a 503's)."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class BrokerReader:
    """The broker's read API over HTTP (``url`` empty: not configured, every read is a
    503 saying so)."""

    def __init__(self, url: str, token: str) -> None:
        self._read = BrokerRead(url, token, settings=SETTINGS)

    async def task_diff(
        self, repository: str, mission_id: str, task_id: str, base: str, head: str
    ) -> TaskDiff:
        params = [("repository", repository), ("base", base), ("head", head)]
        try:
            found = await self._read.get("/repository/diff", params, CommitDiff)
        except BrokerReadFailed as failed:
            raise _unavailable(failed) from None
        return TaskDiff(**msgspec.structs.asdict(found), mission_id=mission_id, task_id=task_id)

    async def mission_diff(
        self, repository: str, mission_id: str, branch: str, base: str, head: str
    ) -> MissionDiff:
        params = [("repository", repository), ("base", base), ("head", head)]
        try:
            found = await self._read.get("/repository/diff", params, CommitDiff)
        except BrokerReadFailed as failed:
            raise _unavailable(failed) from None
        return MissionDiff(
            **msgspec.structs.asdict(found), mission_id=mission_id, integration_branch=branch
        )

    async def default_branch(self, repository: str) -> str:
        params = [("repository", repository)]
        try:
            found = await self._read.get("/repository/default-branch", params, DefaultBranchAnswer)
        except BrokerReadFailed as failed:
            raise _unavailable(failed) from None
        return found.default_branch


def _unavailable(failed: BrokerReadFailed) -> BrokerUnavailable:
    """What the gateway answers for the broker's failure: the caller's mistakes and what
    is missing pass through; the gateway's own credential being refused is the gateway's
    fault (503), not the caller's (401)."""
    if failed.status == 503:
        # Unanswered: the broker is away; answered: it or the gateway is not set up.
        wait = SETTING_RETRY_SECONDS if failed.answered else BROKER_RETRY_SECONDS
        return BrokerUnavailable(503, failed.reason, wait)
    if failed.status in (400, 404, 502, 504):
        return BrokerUnavailable(failed.status, failed.reason)
    if failed.status == 401:
        return BrokerUnavailable(503, failed.reason, SETTING_RETRY_SECONDS)
    return BrokerUnavailable(502, failed.reason)
