"""Commands, pure: given the mission as the read model shows it, the event a person's
request becomes, or why it is refused.

Every event a command publishes has an id named by the step it takes (this plan
version's approval, the pause after the n-th resume, this task's retry after attempt n),
so a request repeated before the first is folded, or sent by two people at once, is
stored once: the stream drops the second copy by its ``Nats-Msg-Id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

from aether_events import RETRYABLE_TASK_STATUSES as RETRYABLE_TASK_STATUSES
from aether_events import (
    BudgetRaised,
    DeliveryRetryRequested,
    MissionCancelled,
    MissionMessagePosted,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanRevisionRequested,
    TaskRetryRequested,
    TaskSkipped,
    Tier,
    mission_id_for,
    step_event_id,
    step_ids,
)
from aether_gateway.domain.model import TERMINAL_STATUSES, Mission, Task


class Refusal(Exception):
    """A command that cannot be carried out as asked; ``kind`` says why in HTTP terms."""

    def __init__(self, kind: Literal["not_found", "conflict"], message: str, **detail: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail or None


class MissionRequest(Protocol):
    """What a person asks for when requesting a mission (the API's request body)."""

    @property
    def repository(self) -> str: ...
    @property
    def requirement(self) -> str: ...
    @property
    def base_branch(self) -> str: ...
    @property
    def budget_usd(self) -> float | None: ...
    @property
    def auto_approve(self) -> bool: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def max_tasks(self) -> int: ...
    @property
    def allow_file_overlap(self) -> bool: ...
    @property
    def model_overrides(self) -> Mapping[Tier, str]: ...
    @property
    def verify_command(self) -> str | None: ...
    @property
    def runtime(self) -> str | None: ...
    @property
    def runtime_overrides(self) -> Mapping[Tier, str]: ...


def request_mission(
    request: MissionRequest,
    *,
    caller_id: str,
    caller_name: str | None,
    idempotency_key: str | None,
    now: datetime,
    fresh_ids: tuple[str, str],
    default_budget_usd: float | None = None,
) -> MissionRequested:
    """The event that starts a mission.

    With an idempotency key the mission id is derived from the key and the caller, and
    the event id from the mission's first step, so two copies of the request (even racing
    each other) are one mission. Without one, ``fresh_ids`` (a new mission id and a new
    event id) are used. A request without a budget gets ``default_budget_usd``.
    """
    if idempotency_key:
        mission_id = mission_id_for(caller_id, idempotency_key)
        event_id = step_event_id(mission_id, step_ids.mission_requested())
    else:
        mission_id, event_id = fresh_ids
    return MissionRequested(
        event_id=event_id,
        mission_id=mission_id,
        occurred_at=now,
        correlation_id=event_id,
        repository=request.repository.strip(),
        requirement=request.requirement,
        base_branch=request.base_branch,
        budget_usd=default_budget_usd if request.budget_usd is None else request.budget_usd,
        auto_approve=request.auto_approve,
        max_concurrency=request.max_concurrency,
        max_tasks=request.max_tasks,
        allow_file_overlap=request.allow_file_overlap,
        model_overrides={str(tier): model for tier, model in request.model_overrides.items()},
        verify_command=request.verify_command,
        requested_by=caller_name,
        runtime=request.runtime,
        runtime_overrides={str(t): name for t, name in request.runtime_overrides.items()},
    )


def runtimes_asked(request: MissionRequest) -> list[str]:
    """The agent runtimes a mission request names (its tasks' and its tiers'), sorted."""
    named = (request.runtime, *request.runtime_overrides.values())
    return sorted({name for name in named if name})


def runtimes_missing(asked: list[str], runners: list[list[str]]) -> list[str]:
    """Which of ``asked`` no runner has (``runners``: each live runner's runtimes). With
    no runner at all nothing is missing: none has announced itself yet (a start-up, or
    every runner down), and a mission asked for then is kept, not refused."""
    if not runners:
        return []
    have = {name for names in runners for name in names}
    return [name for name in asked if name not in have]


def _meta(mission: Mission, event_id: str, now: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "mission_id": mission.id,
        "occurred_at": now,
        "correlation_id": mission.correlation_id,
        "causation_id": None,
    }


def _refuse_finished(mission: Mission) -> None:
    if mission.status in TERMINAL_STATUSES:
        raise Refusal("conflict", f"the mission is {mission.status}", status=mission.status)


def approve(mission: Mission, version: int | None, now: datetime, by: str | None) -> PlanApproved:
    """Approve the latest plan (``version`` must be it when given), once per version."""
    _refuse_finished(mission)
    latest = mission.plan_version
    if latest is None:
        raise Refusal("conflict", "the mission has no plan to approve yet", status=mission.status)
    version = latest if version is None else version
    if version != latest:
        raise Refusal(
            "conflict",
            f"plan version {version} is not the latest (the latest is {latest})",
            version=version,
            latest_version=latest,
        )
    if mission.approved_version is not None and mission.approved_version >= version:
        raise Refusal("conflict", f"plan version {version} is already approved", version=version)
    return PlanApproved(
        **_meta(mission, step_event_id(mission.id, step_ids.plan_approved(version)), now),
        version=version,
        approved_by=by,
        automatic=False,
    )


def post_message(
    mission: Mission, text: str, now: datetime, by: str | None, event_id: str
) -> tuple[MissionMessagePosted, PlanRevisionRequested | None]:
    """A message to the mission; while a plan awaits approval it is also that plan's
    feedback, and asks for a revision of it (once per plan version)."""
    _refuse_finished(mission)
    message = MissionMessagePosted(**_meta(mission, event_id, now), text=text, author=by)
    if mission.status != "awaiting_approval" or mission.plan_version is None:
        return message, None
    version = mission.plan_version
    revision = PlanRevisionRequested(
        **{
            **_meta(
                mission, step_event_id(mission.id, step_ids.plan_revision_requested(version)), now
            ),
            "causation_id": message.event_id,
        },
        feedback=text,
        base_version=version,
        requested_by=by,
    )
    return message, revision


def pause(mission: Mission, reason: str, now: datetime, by: str | None) -> MissionPaused:
    _refuse_finished(mission)
    if mission.status == "paused":
        raise Refusal("conflict", "the mission is already paused", status=mission.status)
    event_id = step_event_id(mission.id, step_ids.mission_paused(mission.resumes))
    return MissionPaused(**_meta(mission, event_id, now), reason=reason, requested_by=by)


def resume(mission: Mission, now: datetime, by: str | None) -> MissionResumed:
    _refuse_finished(mission)
    if mission.status != "paused":
        raise Refusal("conflict", "the mission is not paused", status=mission.status)
    event_id = step_event_id(mission.id, step_ids.mission_resumed(mission.pauses))
    return MissionResumed(**_meta(mission, event_id, now), requested_by=by)


def cancel(mission: Mission, reason: str, now: datetime, by: str | None) -> MissionCancelled:
    _refuse_finished(mission)
    event_id = step_event_id(mission.id, step_ids.mission_cancelled())
    return MissionCancelled(**_meta(mission, event_id, now), reason=reason, requested_by=by)


def _escalated_task(mission: Mission, task: Task | None, task_id: str, verb: str) -> Task:
    _refuse_finished(mission)
    if task is None:
        raise Refusal("not_found", f"task {task_id!r} not found in mission {mission.id!r}")
    if task.status not in RETRYABLE_TASK_STATUSES:
        raise Refusal(
            "conflict",
            f"task {task_id!r} is {task.status}; only an escalated or failed task can be {verb}",
            status=task.status,
        )
    return task


def retry_task(
    mission: Mission, task: Task | None, task_id: str, now: datetime, by: str | None
) -> TaskRetryRequested:
    """Run an escalated (or failed) task again, once per attempt it stopped at."""
    found = _escalated_task(mission, task, task_id, "retried")
    event_id = step_event_id(mission.id, step_ids.task_retry_requested(task_id, found.attempt))
    return TaskRetryRequested(**_meta(mission, event_id, now), task_id=task_id, requested_by=by)


def skip_task(
    mission: Mission, task: Task | None, task_id: str, reason: str, now: datetime, by: str | None
) -> TaskSkipped:
    """Give up on an escalated (or failed) task so its dependents may go on."""
    _escalated_task(mission, task, task_id, "skipped")
    event_id = step_event_id(mission.id, step_ids.task_skipped(task_id))
    return TaskSkipped(
        **_meta(mission, event_id, now), task_id=task_id, reason=reason, requested_by=by
    )


def raise_budget(
    mission: Mission, budget_usd: float, now: datetime, by: str | None
) -> BudgetRaised:
    """A higher budget (or a first one), once per amount."""
    _refuse_finished(mission)
    if mission.budget_usd is not None and budget_usd <= mission.budget_usd:
        raise Refusal(
            "conflict",
            f"the new budget must be more than the current one (${mission.budget_usd:.2f})",
            budget_usd=mission.budget_usd,
        )
    event_id = step_event_id(mission.id, step_ids.budget_raised(budget_usd))
    return BudgetRaised(**_meta(mission, event_id, now), budget_usd=budget_usd, requested_by=by)


def retry_delivery(mission: Mission, now: datetime, by: str | None) -> DeliveryRetryRequested:
    """Have the git broker push a completed mission's result again after it gave up,
    once per failure (a repeated command, or one sent while the retry runs, is one)."""
    delivery = mission.delivery
    if mission.status != "completed":
        raise Refusal(
            "conflict",
            f"the mission is {mission.status}; only a completed mission's result is delivered",
            status=mission.status,
        )
    if delivery is None:
        raise Refusal(
            "conflict",
            "no delivery was tried: the git broker pushes a result only with"
            " AETHER_PUSH_REMOTE set, once the mission completed",
            status=mission.status,
        )
    if delivery.status == "pushed":
        raise Refusal(
            "conflict",
            f"the result was delivered to {delivery.remote} already",
            delivery=delivery.status,
        )
    if delivery.status == "pending":
        raise Refusal(
            "conflict",
            f"the git broker has not reported its push to {delivery.remote} yet",
            delivery=delivery.status,
        )
    event_id = step_event_id(mission.id, step_ids.delivery_retry_requested(delivery.at.isoformat()))
    return DeliveryRetryRequested(**_meta(mission, event_id, now), requested_by=by)
