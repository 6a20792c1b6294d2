"""Folding events into the scheduler's state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentHeartbeat,
    AgentProgress,
    AgentStarted,
    BranchMerged,
    BudgetExceeded,
    BudgetRaised,
    BudgetWarning,
    Event,
    MergeConflicted,
    MissionRequested,
    PlanApproved,
    PlanFailed,
    PlanProduced,
    RepositoryPrepared,
    StepFailed,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    TaskTimedOut,
    UsageRecorded,
    WaveCompleted,
    WaveStarted,
    WorkspaceFailed,
    WorkspaceReady,
    advance,
    bounded,
    known_cost,
    step_event_id,
    step_ids,
    tag_of,
)
from aether_scheduler.domain.model import (
    CONTEXT_BYTES,
    DETAIL_BYTES,
    DONE,
    SUMMARY_BYTES,
    TRACKED,
    MissionState,
    State,
    TaskState,
    changed,
)
from aether_scheduler.domain.rules import waves_of


def evolve(state: State, event: Event) -> State:
    """Fold one event into the state (pure).

    Every change copies what changes and no more: the mission's record and, for a task's
    event, that task's; the other tasks and missions are shared with the state before."""
    if isinstance(event, MissionRequested):
        if event.mission_id in state.missions:
            return state
        created = MissionState(request=event, budget_usd=event.budget_usd)
        return changed(
            state,
            missions={**state.missions, event.mission_id: created},
            live={**state.live, event.mission_id: None},
        )
    mission = state.missions.get(event.mission_id)
    if mission is None:
        return state
    if isinstance(event, UsageRecorded):
        if _counted(mission, event):
            return state
        state = _global_spend(state, event)
    updated = _mission(mission, event)
    progress = advance(mission.progress, event)
    if progress is not mission.progress:
        updated = changed(updated, progress=progress)
        if progress.terminal and not mission.progress.terminal:
            updated = changed(updated, ended_at=_aware(event.occurred_at))
    if updated is mission:
        return state
    missions = {**state.missions, event.mission_id: updated}
    if updated.terminal and event.mission_id in state.live:
        live = {mid: None for mid in state.live if mid != event.mission_id}
        return changed(state, missions=missions, live=live)
    return changed(state, missions=missions)


def _aware(at: datetime) -> datetime:
    """``at``, read as UTC when it names no zone (what every service writes)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _counted(m: MissionState, event: UsageRecorded) -> bool:
    """Whether ``event`` was counted already, for its task's current attempt (see
    ``TaskState.usage_ids``)."""
    task = m.tasks.get(event.task_id) if event.task_id is not None else None
    return task is not None and task.attempt == event.attempt and event.event_id in task.usage_ids


def _global_spend(state: State, event: UsageRecorded) -> State:
    cost = known_cost(event.usage)
    if not cost:
        return state
    day = event.occurred_at.strftime("%Y-%m-%d")
    month = event.occurred_at.strftime("%Y-%m")
    return changed(
        state,
        daily_spent={**state.daily_spent, day: state.daily_spent.get(day, 0.0) + cost},
        monthly_spent={**state.monthly_spent, month: state.monthly_spent.get(month, 0.0) + cost},
    )


def _task(m: MissionState, task_id: str, **changes: Any) -> MissionState:
    task = m.tasks.get(task_id)
    if task is None:
        return m
    moved = changed(task, **changes)
    tasks = {**m.tasks, task_id: moved}
    if moved.status == task.status:
        return changed(m, tasks=tasks)
    return changed(m, tasks=tasks, **_reindexed(m, tasks, task, moved))


def _deps_done(tasks: dict[str, TaskState], task: TaskState) -> bool:
    return all(tasks[d].status in DONE for d in task.spec.depends_on if d in tasks)


def _startable(tasks: dict[str, TaskState], task: TaskState) -> bool:
    return task.status == "pending" and _deps_done(tasks, task)


def _reindexed(
    m: MissionState, tasks: dict[str, TaskState], old: TaskState, new: TaskState
) -> dict[str, Any]:
    """The mission's task indexes after one task moved from ``old``'s status to ``new``'s:
    only that task and its dependents are looked at."""
    task_id = new.spec.id
    out: dict[str, Any] = {}
    if old.status in TRACKED or new.status in TRACKED:
        tracked = dict(m.tracked)
        if old.status in TRACKED:
            tracked[old.status] = tracked.get(old.status, frozenset()) - {task_id}
        if new.status in TRACKED:
            tracked[new.status] = tracked.get(new.status, frozenset()) | {task_id}
        out["tracked"] = tracked
    done = (new.status in DONE) - (old.status in DONE)
    if done:
        out["undone"] = m.undone - done
        out["undone_in_wave"] = {
            **m.undone_in_wave,
            new.wave: m.undone_in_wave.get(new.wave, 0) - done,
        }
    startable = set(m.startable)
    for tid in (task_id, *(m.dependents.get(task_id, ()) if done else ())):
        if _startable(tasks, tasks[tid]):
            startable.add(tid)
        else:
            startable.discard(tid)
    out["startable"] = frozenset(startable)
    return out


def _approved(m: MissionState, version: int, plan: PlanProduced) -> MissionState:
    """The mission's tasks once ``plan`` is approved, all pending, with their indexes."""
    waves = waves_of(plan.tasks)
    tasks = {t.id: TaskState(spec=t, wave=waves[t.id], order=i) for i, t in enumerate(plan.tasks)}
    dependents: dict[str, list[str]] = {}
    for task in tasks.values():
        for dep in dict.fromkeys(task.spec.depends_on):
            if dep in tasks and dep != task.spec.id:
                dependents.setdefault(dep, []).append(task.spec.id)
    by_rank = sorted(tasks.values(), key=lambda t: (-t.spec.priority, t.order))
    wave_tasks: dict[int, list[str]] = {}
    for task in by_rank:
        wave_tasks.setdefault(task.wave, []).append(task.spec.id)
    undone_in_wave = {wave: len(ids) for wave, ids in wave_tasks.items()}
    return changed(
        m,
        approved_version=version,
        tasks=tasks,
        tracked={},
        startable=frozenset(t.spec.id for t in tasks.values() if _startable(tasks, t)),
        dependents={tid: tuple(ids) for tid, ids in dependents.items()},
        wave_tasks={wave: tuple(ids) for wave, ids in wave_tasks.items()},
        undone=len(tasks),
        undone_in_wave=undone_in_wave,
    )


def _resolution_context(
    m: MissionState, task_id: str, files: list[str], resolve_sha: str | None
) -> str:
    """The prompt's account of a true conflict: which files, and the merged work it met."""
    listed = bounded(", ".join(files))
    if resolve_sha is None:
        return (
            f"Your previous attempt conflicted with work merged meanwhile in: {listed}. "
            "Start from the current integration head and keep those changes."
        )
    met = [
        f"- task {t.spec.id} ({t.spec.title}): {t.summary or 'no summary'}"
        for t in m.tasks.values()
        if t.spec.id != task_id and t.status == "merged" and set(t.merged_files) & set(files)
    ]
    return (
        f"Your previous attempt (commit {resolve_sha[:12]}) conflicted with work merged "
        f"meanwhile in: {listed}. This workspace is the current integration head with that "
        "attempt merged in: where the two disagree, the files hold both versions between "
        "'<<<<<<< ours' (the merged work) and '>>>>>>> theirs' (your attempt), separated "
        "by '======='. Resolve every marked conflict so that both your task and the merged "
        "work keep their intent, remove the markers, and finish."
        + ("\nMerged work in those files:\n" + "\n".join(met) if met else "")
    )


# How the next attempt's context opens after a merge refused for something other than a
# conflict (``MergeConflicted.refusal``), followed by the broker's own account.
_REFUSED = "Your previous attempt's commit was not merged; the git broker refused it:"
_REFUSED_OPENING = {
    "verification_failed": (
        "Your previous attempt merged cleanly but the mission's verification failed on the result:"
    ),
    "conflict_markers": (
        "Your previous attempt's commit was not merged: it leaves conflict markers in "
        "files, which the git broker refuses to merge:"
    ),
    "unsafe_paths": (
        "Your previous attempt's commit was not merged: it has paths no checkout may "
        "write. Start from the current integration head and leave those paths out:"
    ),
    "too_large": (
        "Your previous attempt's commit was not merged: it holds more than the git broker "
        "merges from one task (too many files, a file too large, or directories nested too "
        "deep). Start from the current integration head and keep the change small:"
    ),
    "missing_commit": (
        "Your previous attempt's commit could not be merged: the git broker did not find "
        "it. Start from the current integration head and commit your work again:"
    ),
}
# The first line of a marker refusal's detail, from a broker before ``refusal`` was set.
_MARKERS_DETAIL = "conflict markers left in "


def _refusal(event: MergeConflicted) -> str:
    """Why the broker did not merge: its ``refusal``, or, from a broker that did not say,
    what the event shows (files: a conflict; else markers or a failed verification, told
    apart by the detail's first words)."""
    if event.refusal:
        return event.refusal
    if event.files:
        return "conflict"
    if event.detail.startswith(_MARKERS_DETAIL):
        return "conflict_markers"
    return "verification_failed"


def _current(m: MissionState, task_id: str, attempt: int, *statuses: str) -> bool:
    task = m.tasks.get(task_id)
    return task is not None and task.attempt == attempt and task.status in statuses


# A task's liveness clock runs once a runner has taken its attempt: from the attempt's
# AgentStarted, or a heartbeat of its runner before that (a long preparation beats too).
# A ready attempt waiting for its workspace, or for a free runner while every lane works
# on other attempts (missions wider than the runners), has none: it would otherwise time
# out and be retried, again and again, behind the attempts it waits for.
# It is not left without a guard: a runner that dies holding its WorkspaceReady stops
# keeping the delivery alive and the bus hands it to another, and a git broker that dies
# preparing it handles its TaskReady again at its restart. What neither covers, a runner
# that gave up on the WorkspaceReady for good (``StepFailed``), starts the clock.
_WORKSPACE_READY = tag_of(WorkspaceReady)
_RUNNER = "agent-runner"


def _workspace_step_failed(m: MissionState, event: StepFailed) -> MissionState:
    """A runner's failed step on a ready attempt's WorkspaceReady starts that attempt's
    clock: it times out and is retried, as one whose runner went silent.

    Only a clock not running yet: each runner keys its records with its own secret
    (decision 0032), so two runners recording one failed step store two records, and the
    later one must not put the timeout off (nor a failure delay one a heartbeat started)."""
    if event.service != _RUNNER or event.failed_event_type != _WORKSPACE_READY:
        return m
    for task_id in m.with_status("ready"):
        task = m.tasks[task_id]
        step = step_ids.workspace_ready(task_id, task.attempt)
        if step_event_id(event.mission_id, step) == event.failed_event_id:
            if task.last_seen is not None:
                return m
            return _seen(m, task_id, task.attempt, event.occurred_at)
    return m


def _seen(m: MissionState, task_id: str, attempt: int, at: datetime) -> MissionState:
    task = m.tasks.get(task_id)
    if task is None or not _current(m, task_id, attempt, "ready", "running"):
        return m
    if task.last_seen is not None and task.last_seen >= at:
        return m  # telemetry may arrive late or be replayed: time only moves forward
    return _task(m, task_id, last_seen=at)


def _mission(m: MissionState, event: Event) -> MissionState:
    match event:
        case RepositoryPrepared():
            return changed(
                m,
                base_sha=event.base_sha,
                integration_branch=event.integration_branch,
                integration_head=m.integration_head or event.base_sha,
            )
        case PlanProduced():
            return changed(m, plans={**m.plans, event.version: event})
        case PlanFailed():
            return changed(m, plan_failure=bounded(event.reason))
        case PlanApproved():
            plan = m.plans.get(event.version)
            if plan is None or m.approved_version is not None:
                return m
            return _approved(m, event.version, plan)
        case TaskReady():
            task = m.tasks.get(event.task.id)
            if task is None or event.attempt <= task.attempt:
                return m
            return _task(
                m,
                event.task.id,
                status="ready",
                attempt=event.attempt,
                # No liveness clock yet: the attempt waits for its workspace and then for
                # a free runner as long as that takes (see ``_workspace_step_failed``).
                last_seen=None,
                reserved_usd=event.estimated_cost_usd or 0.0,
                attempt_spent_usd=0.0,
                usage_ids=frozenset(),
                ready_event=event,
                retry_event=None,
                immediate_retry=False,
                not_before=None,
                first_ready_at=task.first_ready_at or event.occurred_at,
            )
        case StepFailed():
            return _workspace_step_failed(m, event)
        case AgentStarted():
            if _current(m, event.task_id, event.attempt, "ready"):
                return _task(m, event.task_id, status="running", last_seen=event.occurred_at)
            return m
        case AgentHeartbeat() | AgentProgress():
            return _seen(m, event.task_id, event.attempt, event.occurred_at)
        case AgentCompleted():
            if _current(m, event.task_id, event.attempt, "ready", "running"):
                drift = m.tasks[event.task_id].drift
                if event.files_outside_scope:
                    drift = tuple(sorted({*drift, *event.files_outside_scope}))
                return _task(
                    m,
                    event.task_id,
                    status="completed",
                    reserved_usd=0.0,
                    drift=drift,
                    last_commit=event.commit_sha,
                    summary=bounded(event.summary, SUMMARY_BYTES),
                )
            return m
        case BranchMerged():
            if not _current(m, event.task_id, event.attempt, "ready", "running", "completed"):
                return m
            m = changed(m, integration_head=event.merge_sha)
            return _task(
                m,
                event.task_id,
                status="merged",
                merge_sha=event.merge_sha,
                reserved_usd=0.0,
                merged_at=event.occurred_at,
                merged_files=tuple(event.files_changed),
                resolve_sha=None,
            )
        case AgentFailed() | WorkspaceFailed():
            if not _current(m, event.task_id, event.attempt, "ready", "running"):
                return m
            status = "retry_wait" if event.retryable else "failed"
            return _task(
                m,
                event.task_id,
                status=status,
                last_failure=bounded(event.reason),
                immediate_retry=False,
                reserved_usd=0.0,
            )
        case MergeConflicted():
            if not _current(m, event.task_id, event.attempt, "ready", "running", "completed"):
                return m
            resolve_sha = None
            refusal = _refusal(event)
            if refusal == "conflict":
                files = bounded(", ".join(event.files))
                reason = f"merge conflict in {files}"
                resolve_sha = m.tasks[event.task_id].last_commit
                context = _resolution_context(m, event.task_id, event.files, resolve_sha)
                if event.detail:
                    context += f"\n{bounded(event.detail, DETAIL_BYTES)}"
            else:
                reason = bounded((event.detail.splitlines() or ["the merge was refused"])[0])
                opening = _REFUSED_OPENING.get(refusal, _REFUSED)
                context = f"{opening}\n{bounded(event.detail, DETAIL_BYTES)}"
            return _task(
                m,
                event.task_id,
                status="retry_wait",
                last_failure=reason,
                context=bounded(context, CONTEXT_BYTES),
                immediate_retry=True,
                reserved_usd=0.0,
                resolve_sha=resolve_sha,
            )
        case TaskTimedOut():
            if not _current(m, event.task_id, event.attempt, "ready", "running"):
                return m
            return _task(
                m,
                event.task_id,
                status="retry_wait",
                last_failure="no heartbeat from the agent",
                immediate_retry=False,
                reserved_usd=0.0,
            )
        case TaskRetried():
            task = m.tasks.get(event.task_id)
            if task is None or task.status != "retry_wait" or event.attempt != task.attempt + 1:
                return m
            return _task(m, event.task_id, not_before=event.not_before, retry_event=event)

        case TaskEscalated():
            if _current(m, event.task_id, event.attempt, "retry_wait", "failed"):
                return _task(m, event.task_id, status="escalated")
            return m
        case TaskRetryRequested():
            task = m.tasks.get(event.task_id)
            if task is None or task.status not in ("escalated", "failed"):
                return m
            return _task(
                m,
                event.task_id,
                status="retry_wait",
                attempts_base=task.attempt,
                immediate_retry=True,
                retry_event=None,
            )
        case TaskSkipped():
            task = m.tasks.get(event.task_id)
            if task is None or task.status in ("merged", "skipped"):
                return m
            return _task(m, event.task_id, status="skipped", reserved_usd=0.0)
        case UsageRecorded():
            m = changed(m, usage=m.usage.plus(event.usage))
            if event.task_id is not None and event.attempt is not None:
                task = m.tasks.get(event.task_id)
                if task is not None and task.attempt == event.attempt:
                    spent = task.attempt_spent_usd + known_cost(event.usage)
                    ready = task.ready_event
                    estimate = (ready.estimated_cost_usd if ready else None) or 0.0
                    reserved = max(0.0, estimate - spent) if task.reserved_usd else 0.0
                    return _task(
                        m,
                        event.task_id,
                        attempt_spent_usd=spent,
                        reserved_usd=reserved,
                        usage_ids=task.usage_ids | {event.event_id},
                    )
            return m
        case BudgetWarning():
            return changed(m, warned_at_budget=event.budget_usd) if event.scope == "mission" else m
        case BudgetExceeded():
            if event.scope == "mission":
                return changed(m, exceeded_at_budget=event.budget_usd)
            return changed(m, global_exceeded=m.global_exceeded | {event.scope})
        case BudgetRaised():
            return changed(m, budget_usd=event.budget_usd)
        case WaveStarted():
            return changed(m, waves_started=m.waves_started | {event.wave})
        case WaveCompleted():
            return changed(m, waves_completed=m.waves_completed | {event.wave})
    # Pauses, resumes and the mission's end are ``progress`` (folded in ``evolve``).
    return m
