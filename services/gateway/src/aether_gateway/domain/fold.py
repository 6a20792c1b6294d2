"""The read model, pure: how one event changes a mission's rows.

``fold(view, event, sequence, part)`` takes the rows the event can touch (the mission and
its tasks) and returns the rows to write. It does no I/O and reads no clock, so every rule
below is tested with plain values; the PostgreSQL adapter loads the view, calls ``fold``
and writes the ``Changes`` together with the stream position in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec.structs import replace

from aether_events import (
    SETTLED_TASK_STATUSES,
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    BranchMerged,
    BranchPushed,
    BranchPushFailed,
    BudgetExceeded,
    BudgetRaised,
    BudgetWarning,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionMessagePosted,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanClarificationRequested,
    PlanFailed,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    TaskTimedOut,
    UsageRecorded,
    WaveStarted,
    WorkspaceFailed,
    WorkspaceReady,
    add_cost,
    task_status_after,
)
from aether_gateway.domain.model import (
    BudgetAlert,
    Delivery,
    MessageKind,
    Mission,
    MissionMessage,
    Plan,
    SessionUpdate,
    Task,
    UsageEntry,
)
from aether_gateway.domain.status import next_status


class MissionView(msgspec.Struct, kw_only=True):
    """The rows an event may change: the mission (if known) and its tasks by id.

    ``tasks`` holds every task of the mission, or only those the event reads
    (``tasks_read``); then ``task_count`` says how many the mission has.
    """

    mission: Mission | None = None
    tasks: dict[str, Task] = msgspec.field(default_factory=dict)
    task_count: int | None = None


class Changes(msgspec.Struct, kw_only=True):
    """What to write for one event; empty when the event changes nothing."""

    mission: Mission | None = None
    plan: Plan | None = None
    tasks: list[Task] = msgspec.field(default_factory=list)
    removed_tasks: list[str] = msgspec.field(default_factory=list)
    usage: UsageEntry | None = None
    message: MissionMessage | None = None
    alert: BudgetAlert | None = None
    session: SessionUpdate | None = None

    @property
    def empty(self) -> bool:
        return (
            self.mission is None
            and self.plan is None
            and not self.tasks
            and not self.removed_tasks
            and self.usage is None
            and self.message is None
            and self.alert is None
            and self.session is None
        )


def fold(view: MissionView, event: Event, sequence: int = 0, part: int = 0) -> Changes:
    """The rows ``event`` (stored at ``sequence``, as its message's ``part``: see
    ``carried``) changes, given the rows it may touch."""
    if isinstance(event, MissionRequested):
        if view.mission is not None:
            return Changes()  # the mission exists; a second request for the id is ignored
        return Changes(mission=_requested(event))
    mission = view.mission
    if mission is None:
        return Changes()  # an event for a mission we never saw requested: history only
    changes = _fold_tasks(view, event)
    changes.usage = _usage_entry(event, sequence, part)
    changes.message = _message(event, sequence)
    changes.alert = _alert(event, sequence)
    changes.session = session_update(event)
    updated = _fold_mission(mission, event)
    status = next_status(updated, event)
    updated = replace(updated, status=status, updated_at=max(mission.updated_at, event.occurred_at))
    if updated != mission:
        changes.mission = updated
    return changes


def tasks_read(event: Event) -> list[str] | None:
    """The ids of the task rows ``fold`` reads for ``event``; ``None`` when it reads all
    of the mission's (a new plan). A view with only these rows (and ``task_count`` when
    one of them does not exist) folds the event exactly as the whole mission would."""
    match event:
        case PlanProduced():
            return None
        case WaveStarted():
            return list(event.task_ids)
        case UsageRecorded():
            return [event.task_id] if event.task_id else []
        case TaskReady() | WorkspaceReady():
            return [event.task.id]
        case TaskRetryRequested() | TaskSkipped():
            return [event.task_id]
    if isinstance(event, _TASK_EVENTS):
        return [event.task_id]
    return []


def _requested(event: MissionRequested) -> Mission:
    return Mission(
        id=event.mission_id,
        status="requested",
        repository=event.repository,
        base_branch=event.base_branch,
        requirement=event.requirement,
        correlation_id=event.correlation_id,
        auto_approve=event.auto_approve,
        budget_usd=event.budget_usd,
        max_concurrency=event.max_concurrency,
        max_tasks=event.max_tasks,
        model_overrides=dict(event.model_overrides),
        verify_command=event.verify_command,
        requested_by=event.requested_by,
        runtime=event.runtime,
        runtime_overrides=dict(event.runtime_overrides),
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


def _fold_mission(mission: Mission, event: Event) -> Mission:
    """Every mission column except ``status`` and ``updated_at``."""
    match event:
        case TaskReady():
            return _wave(mission, event.wave)
        case WaveStarted():
            return _wave(mission, event.wave)
        case PlanClarificationRequested():
            return replace(mission, questions=list(event.questions))
        case MissionMessagePosted():
            return replace(mission, questions=[]) if mission.questions else mission
        case MissionAnswered():
            return replace(mission, answer=event.answer, questions=[])
        case PlanProduced():
            if mission.plan_version is not None and event.version <= mission.plan_version:
                return mission
            return replace(
                mission,
                plan_version=event.version,
                model=event.model or mission.model,
                offline=mission.offline or event.offline,
                questions=[],
                error=None,
            )
        case PlanApproved():
            if mission.approved_version is not None and event.version <= mission.approved_version:
                return mission
            return replace(mission, approved_version=event.version)
        case MissionPaused():
            return replace(mission, pauses=mission.pauses + 1)
        case MissionResumed():
            return replace(mission, resumes=mission.resumes + 1)
        case BudgetRaised():
            # The scheduler warns again about the new budget if it needs to.
            return replace(
                mission, budget_usd=event.budget_usd, budget_exceeded=False, budget_warning=False
            )
        case BudgetWarning(scope="mission"):
            return replace(mission, budget_warning=True)
        case BudgetExceeded(scope="mission"):
            return replace(mission, budget_exceeded=True, budget_warning=True)
        case UsageRecorded():
            return _add_usage(mission, event)
    return _fold_outcome(mission, event)


def _fold_outcome(mission: Mission, event: Event) -> Mission:
    match event:
        case RepositoryPrepared():
            # The broker names the base it used: the repository's default when none was
            # asked, and where it will deliver the result.
            announced = mission.delivery
            if event.delivery_remote and announced is None:
                announced = Delivery(
                    status="pending",
                    remote=event.delivery_remote,
                    branch=event.integration_branch,
                    sha="",
                    at=event.occurred_at,
                )
            return replace(
                mission,
                integration_branch=event.integration_branch,
                base_sha=event.base_sha,
                base_branch=event.base_branch or mission.base_branch,
                delivery=announced,
            )
        case PlanFailed():
            return replace(mission, error=event.reason)
        case MissionCompleted():
            delivery = mission.delivery
            if delivery is not None and delivery.status == "pending":
                # What the broker is now pushing: the result, as of the completion.
                delivery = replace(
                    delivery,
                    branch=event.integration_branch,
                    sha=event.final_sha,
                    at=event.occurred_at,
                )
            return replace(
                mission,
                final_sha=event.final_sha,
                integration_branch=event.integration_branch,
                delivery=delivery,
            )
        case MissionFailed():
            return replace(mission, error=event.reason)
        case MissionCancelled():
            return replace(mission, error=event.reason or "cancelled")
        case BranchPushed() | BranchPushFailed():
            return _delivered(mission, event)
        case DeliveryRetryRequested():
            if mission.delivery is None or mission.delivery.status in ("pending", "pushed"):
                return mission
            return replace(mission, delivery=replace(mission.delivery, status="retrying"))
    return mission


def _delivered(mission: Mission, event: BranchPushed | BranchPushFailed) -> Mission:
    """The delivery the event records. A push recorded once stays: a failure recorded
    after it (the broker gave up on a completion handled again, with the remote moved
    on since) does not hide that the result was delivered."""
    if mission.delivery is not None and mission.delivery.status == "pushed":
        return mission
    status: Literal["pending", "pushed", "failed", "retrying"]
    if isinstance(event, BranchPushed):
        status, already_there, reason = "pushed", event.already_there, None
    else:
        status, already_there, reason = "failed", False, event.reason
    return replace(
        mission,
        delivery=Delivery(
            status=status,
            remote=event.remote,
            branch=event.integration_branch,
            sha=event.sha,
            at=event.occurred_at,
            already_there=already_there,
            reason=reason,
        ),
    )


def _wave(mission: Mission, wave: int) -> Mission:
    if mission.current_wave is not None and wave <= mission.current_wave:
        return mission
    return replace(mission, current_wave=wave)


def _add_usage(mission: Mission, event: UsageRecorded) -> Mission:
    usage = event.usage
    cost, complete = add_cost(mission.cost_usd, mission.cost_complete, usage)
    return replace(
        mission,
        tokens_in=mission.tokens_in + usage.input_tokens,
        tokens_out=mission.tokens_out + usage.output_tokens,
        tokens_cache_read=mission.tokens_cache_read + usage.cache_read_input_tokens,
        tokens_cache_write=mission.tokens_cache_write + usage.cache_creation_input_tokens,
        cost_usd=cost,
        cost_complete=complete,
        offline=mission.offline or event.offline,
    )


# --- append-only rows ----------------------------------------------------------------


def _usage_entry(event: Event, sequence: int, part: int) -> UsageEntry | None:
    if not isinstance(event, UsageRecorded):
        return None
    usage = event.usage
    return UsageEntry(
        seq=sequence,
        part=part,
        mission_id=event.mission_id,
        occurred_at=event.occurred_at,
        service=event.service,
        step=event.step,
        model=event.model,
        offline=event.offline,
        task_id=event.task_id,
        attempt=event.attempt,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_write_tokens=usage.cache_creation_input_tokens,
        cost_usd=usage.cost_usd,
    )


def _message(event: Event, sequence: int) -> MissionMessage | None:
    kind: MessageKind
    author: str | None
    match event:
        case PlanClarificationRequested():
            kind, text, author = "question", "\n".join(event.questions), "planner"
        case MissionMessagePosted():
            kind, text, author = "message", event.text, event.author
        case MissionAnswered():
            kind, text, author = "answer", event.answer, "planner"
        case _:
            return None
    return MissionMessage(
        seq=sequence,
        mission_id=event.mission_id,
        kind=kind,
        text=text,
        author=author,
        occurred_at=event.occurred_at,
    )


def _alert(event: Event, sequence: int) -> BudgetAlert | None:
    if not isinstance(event, BudgetWarning | BudgetExceeded):
        return None
    return BudgetAlert(
        seq=sequence,
        mission_id=event.mission_id,
        scope=event.scope,
        kind="warning" if isinstance(event, BudgetWarning) else "exceeded",
        spent_usd=event.spent_usd,
        budget_usd=event.budget_usd,
        occurred_at=event.occurred_at,
    )


def session_update(event: Event) -> SessionUpdate | None:
    """What ``event`` says about an agent session, from either stream."""
    match event:
        case AgentStarted():
            return _session(
                event,
                event.task_id,
                event.attempt,
                runner_id=event.runner_id,
                model=event.model,
                status="running",
                started_at=event.occurred_at,
            )
        case AgentCompleted():
            return _session(
                event,
                event.task_id,
                event.attempt,
                status="completed",
                finished_at=event.occurred_at,
                turns=event.turns,
                tool_calls=event.tool_calls,
            )
        case AgentFailed():
            return _session(
                event,
                event.task_id,
                event.attempt,
                status="failed",
                finished_at=event.occurred_at,
                error=event.reason,
                turns=event.turns,
                tool_calls=event.tool_calls,
            )
        case TaskTimedOut():
            return _session(
                event,
                event.task_id,
                event.attempt,
                status="timed_out",
                finished_at=event.occurred_at,
                error="no heartbeat from the agent",
            )
        case UsageRecorded(task_id=str(task_id), attempt=int(attempt)):
            return _session(
                event,
                task_id,
                attempt,
                tokens_in=event.usage.input_tokens,
                tokens_out=event.usage.output_tokens,
                cost_usd=event.usage.cost_usd,
                unknown_cost=not event.usage.cost_known,
            )
        case AgentHeartbeat():
            return _session(event, event.task_id, event.attempt, runner_id=event.runner_id)
        case AgentProgress():
            return _session(
                event,
                event.task_id,
                event.attempt,
                runner_id=event.runner_id,
                progress_at=event.occurred_at,
                turns=event.turns,
                tool_calls=event.tool_calls,
                files_changed=list(event.files_changed),
                last_action=event.last_action,
            )
    return None


def _session(event: Event, task_id: str, attempt: int, **fields: Any) -> SessionUpdate:
    return SessionUpdate(
        mission_id=event.mission_id,
        task_id=task_id,
        attempt=attempt,
        seen_at=event.occurred_at,
        **fields,
    )


# --- tasks -----------------------------------------------------------------------------


def _plan_task(mission_id: str, planned: PlannedTask, position: int, now: datetime) -> Task:
    return Task(
        mission_id=mission_id,
        task_id=planned.id,
        title=planned.title,
        description=planned.description,
        files=list(planned.files),
        depends_on=list(planned.depends_on),
        tier=planned.tier,
        position=position,
        updated_at=now,
    )


def _fold_plan(view: MissionView, event: PlanProduced) -> Changes:
    """A new plan version replaces the task list; tasks already under way are kept."""
    mission = view.mission
    assert mission is not None
    plan = Plan(
        mission_id=event.mission_id,
        version=event.version,
        tasks=list(event.tasks),
        rationale=event.rationale,
        model=event.model,
        offline=event.offline,
        repairs=list(event.repairs),
        produced_at=event.occurred_at,
    )
    changes = Changes(plan=plan)
    if mission.plan_version is not None and event.version <= mission.plan_version:
        return changes  # an older version arriving late is kept as history only
    planned_ids = {task.id for task in event.tasks}
    for position, planned in enumerate(event.tasks):
        fresh = _plan_task(event.mission_id, planned, position, event.occurred_at)
        existing = view.tasks.get(planned.id)
        if existing is not None:
            fresh = replace(
                existing,
                title=fresh.title,
                description=fresh.description,
                files=fresh.files,
                depends_on=fresh.depends_on,
                tier=fresh.tier,
                position=position,
                updated_at=event.occurred_at,
            )
        changes.tasks.append(fresh)
    changes.removed_tasks = sorted(
        task_id
        for task_id, task in view.tasks.items()
        if task_id not in planned_ids and task.status == "pending"
    )
    return changes


def _fold_tasks(view: MissionView, event: Event) -> Changes:
    if isinstance(event, PlanProduced):
        return _fold_plan(view, event)
    if isinstance(event, WaveStarted):
        return Changes(tasks=_wave_tasks(view, event))
    if isinstance(event, UsageRecorded):
        task = _task_usage(view, event)
        return Changes(tasks=[task] if task is not None else [])
    updated = _fold_task(view, event)
    return Changes(tasks=[updated] if updated is not None else [])


def _wave_tasks(view: MissionView, event: WaveStarted) -> list[Task]:
    return [
        replace(view.tasks[task_id], wave=event.wave)
        for task_id in event.task_ids
        if task_id in view.tasks and view.tasks[task_id].wave != event.wave
    ]


def _task_usage(view: MissionView, event: UsageRecorded) -> Task | None:
    """Usage adds up over every attempt of the task (a failed attempt cost money too)."""
    task = view.tasks.get(event.task_id) if event.task_id else None
    if task is None:
        return None
    cost, complete = add_cost(task.cost_usd, task.cost_complete, event.usage)
    return replace(
        task,
        tokens_in=task.tokens_in + event.usage.input_tokens,
        tokens_out=task.tokens_out + event.usage.output_tokens,
        cost_usd=cost,
        cost_complete=complete,
    )


_TASK_EVENTS = (
    AgentStarted,
    AgentCompleted,
    AgentFailed,
    BranchMerged,
    MergeConflicted,
    MergeWithheld,
    TaskRetried,
    TaskTimedOut,
    TaskEscalated,
    WorkspaceFailed,
)


def _fold_task(view: MissionView, event: Event) -> Task | None:
    """The task row after a task event, or ``None`` when nothing changes.

    Events from an attempt older than the task's current one are late news and ignored,
    and a merged task stays merged: its work is on the integration branch. A person's
    retry or skip applies to the task as it stands.
    """
    if isinstance(event, TaskRetryRequested | TaskSkipped):
        return _human_decision(view, event)
    if isinstance(event, TaskReady | WorkspaceReady):
        task_id, attempt = event.task.id, event.attempt
    elif isinstance(event, _TASK_EVENTS):
        task_id, attempt = event.task_id, event.attempt
    else:
        return None
    task = view.tasks.get(task_id)
    if task is None:
        if not isinstance(event, TaskReady | WorkspaceReady):
            return None  # news of a task the plan never listed
        count = len(view.tasks) if view.task_count is None else view.task_count
        task = _plan_task(event.mission_id, event.task, count, event.occurred_at)
    if attempt < task.attempt or task.status in SETTLED_TASK_STATUSES:
        return None
    task = replace(task, attempt=attempt, updated_at=event.occurred_at)
    return _task_step(task, event)


def _task_step(task: Task, event: Event) -> Task | None:
    # Which status: the shared rule (``aether_events.status``); what else changes: here.
    status = task_status_after(task.status, event)
    if status is None:
        return None
    match event:
        case TaskReady():
            return replace(
                task,
                status=status,
                model=event.model,
                runtime=event.runtime,
                wave=event.wave,
                finished_at=None,
                error=None,
            )
        case WorkspaceReady():
            return replace(
                task,
                status=status,
                model=event.model,
                branch=event.branch,
                base_sha=event.base_sha,
                error=None,
            )
        case AgentStarted():
            return replace(
                task,
                status=status,
                model=event.model,
                runner_id=event.runner_id,
                # "" from a runner before AgentStarted named it: the one asked for stands.
                runtime=event.runtime or task.runtime,
                started_at=task.started_at or event.occurred_at,
            )
        case AgentCompleted():
            return replace(
                task,
                status=status,
                commit_sha=event.commit_sha,
                branch=event.branch,
                summary=event.summary,
                files_changed=list(event.files_changed),
                files_outside_scope=list(event.files_outside_scope),
            )
        case AgentFailed():
            return replace(task, status=status, error=event.reason)
        case WorkspaceFailed():
            return replace(task, status=status, error=f"workspace: {event.reason}")
        case BranchMerged():
            return replace(
                task,
                status=status,
                merge_sha=event.merge_sha,
                resolution=event.resolution,
                finished_at=event.occurred_at,
                error=None,
            )
        case MergeConflicted():
            return replace(task, status=status, error=merge_refused(event))
        case MergeWithheld():
            return replace(task, status=status, error=f"not merged: {event.reason}")
        case TaskRetried():
            return replace(task, status=status, error=event.reason)
        case TaskTimedOut():
            return replace(task, status=status, error="timed out")
        case TaskEscalated():
            return replace(task, status=status, error=event.reason)
    return None


def merge_refused(event: MergeConflicted) -> str:
    """Why the git broker did not merge an attempt, as the command line and the board's
    task page tell it (``aether.render.merge_refused``, ``mergeRefused``): only a
    ``conflict`` is one; anything else (a failed verification, paths no checkout may
    write, conflict markers left, a missing commit) is "not merged:" and the first line of
    the broker's account (a verification's output follows it). A broker before v8 sent
    no ``refusal``, and files only with a conflict."""
    files = ", ".join(event.files)
    if event.refusal == "conflict" or (not event.refusal and files):
        return f"merge conflict in {files}" if files else "merge conflict"
    if event.refusal == "unsafe_paths":
        return f"not merged: paths no checkout may write: {files}"
    first = next((line.strip() for line in event.detail.splitlines() if line.strip()), "")
    return f"not merged: {first or event.refusal or 'no reason given'}"


def _human_decision(view: MissionView, event: TaskRetryRequested | TaskSkipped) -> Task | None:
    task = view.tasks.get(event.task_id)
    status = None if task is None else task_status_after(task.status, event)
    if task is None or status is None:
        return None
    if isinstance(event, TaskSkipped):
        reason = f"skipped: {event.reason}" if event.reason else "skipped"
        return replace(
            task,
            status=status,
            error=reason,
            finished_at=event.occurred_at,
            updated_at=event.occurred_at,
        )
    return replace(task, status=status, error="retry requested", updated_at=event.occurred_at)
