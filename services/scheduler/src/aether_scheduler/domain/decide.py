"""Deciding what happens next, pure.

``decide`` answers an event; ``tick`` answers the passing of time (retry backoffs,
heartbeat timeouts); ``catch_up`` answers a start, with everything the whole state says is
owed. All three run the same rules over the whole mission until nothing more
follows, folding each decision into a working copy of the state so later rules see it.
Decisions are level-triggered (what should exist and does not), and their ids are
derived from the step, so deciding twice publishes nothing new.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from aether_events import (
    BudgetExceeded,
    BudgetWarning,
    Event,
    MissionCompleted,
    MissionFailed,
    PlanApproved,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskTimedOut,
    WaveCompleted,
    WaveStarted,
    bounded,
    caused_by,
    step_ids,
)
from aether_scheduler.domain.evolve import evolve
from aether_scheduler.domain.model import (
    CONTEXT_BYTES,
    IN_FLIGHT,
    UNMERGED_WORK,
    Config,
    MissionState,
    State,
    TaskState,
)
from aether_scheduler.domain.rules import backoff_seconds, estimate_for, scopes_overlap

_SETTLE_LIMIT = 10_000


def decide(state: State, event: Event, now: datetime, config: Config) -> list[Event]:
    """Everything that should happen now in the mission ``event`` belongs to."""
    mission = state.missions.get(event.mission_id)
    if mission is None or mission.terminal:
        return []
    return _settle(state, event.mission_id, event, now, config)


def tick(state: State, now: datetime, config: Config) -> list[Event]:
    """What the passing of time makes happen: due retries, overdue heartbeats."""
    out: list[Event] = []
    missions = state.missions
    for mission_id in list(state.live):
        mission = missions[mission_id]
        if mission.terminal or mission.approved_version is None:
            continue
        if not any(_timer_due(t, now, config) for t in _timed(mission)):
            continue
        decided = _settle(state, mission_id, None, now, config)
        for event in decided:
            state = evolve(state, event)
        out.extend(decided)
    return out


def catch_up(state: State, now: datetime, config: Config) -> list[Event]:
    """Everything owed in every live mission, decided from the whole state.

    Run once when the scheduler starts: events folded while replaying (a plan to approve
    automatically, a merge that readies a dependent) are never delivered again when the
    consumer is new or was created after them, so waiting for a delivery would leave their
    missions stuck. Deciding twice is harmless: the ids repeat.
    """
    out: list[Event] = []
    missions = state.missions
    for mission_id in list(state.live):
        if missions[mission_id].terminal:
            continue
        decided = _settle(state, mission_id, None, now, config)
        for event in decided:
            state = evolve(state, event)
        out.extend(decided)
    return out


def next_timer(state: State, config: Config) -> datetime | None:
    """When ``tick`` next has something to do (for the shell's sleep)."""
    times = [
        when
        for mission_id in state.live
        if (when := mission_timer(state, mission_id, config)) is not None
    ]
    return min(times, default=None)


def mission_timer(state: State, mission_id: str, config: Config) -> datetime | None:
    """When ``tick`` next has something to do in one mission (None: nothing timed)."""
    mission = state.missions.get(mission_id)
    if mission is None or mission.terminal:
        return None
    times = [when for task in _timed(mission) if (when := _timer_at(task, config)) is not None]
    return min(times, default=None)


def _timed(m: MissionState) -> list[TaskState]:
    """The tasks that may have a timer running: in flight, or waiting to be retried."""
    return [m.tasks[t] for t in m.with_status(*IN_FLIGHT, "retry_wait")]


def _timer_at(task: TaskState, config: Config) -> datetime | None:
    if task.status in IN_FLIGHT and task.last_seen is not None:
        return task.last_seen + timedelta(seconds=config.heartbeat_timeout_seconds)
    if task.status == "retry_wait" and task.retry_event is not None:
        return task.not_before
    return None


def _timer_due(task: TaskState, now: datetime, config: Config) -> bool:
    when = _timer_at(task, config)
    return when is not None and when <= now


def _settle(
    state: State, mission_id: str, cause: Event | None, now: datetime, config: Config
) -> list[Event]:
    out: list[Event] = []
    for _ in range(_SETTLE_LIMIT):
        batch = _next(state, state.missions[mission_id], cause, now, config)
        if not batch:
            return out
        for event in batch:
            state = evolve(state, event)
            out.append(event)
    raise AssertionError(f"decisions for {mission_id} did not settle")


def _next(
    state: State, m: MissionState, cause: Event | None, now: datetime, config: Config
) -> list[Event]:
    """The first rule that has something to say, in order of precedence."""
    if m.terminal:
        return []
    why = cause or m.request
    if m.plan_failure is not None:
        reason = f"planning failed: {m.plan_failure}"
        return [MissionFailed(**caused_by(why, now, step_ids.mission_failed()), reason=reason)]
    if m.approved_version is None:
        if m.request.auto_approve and m.plans:
            version = max(m.plans)
            why = cause or m.plans[version]
            step = step_ids.plan_approved(version)
            return [PlanApproved(**caused_by(why, now, step), version=version, automatic=True)]
        return []
    for rule in (_budget_alerts, _timeouts, _failures, _waves, _starts, _ending):
        decided = rule(state, m, why, now, config)
        if decided:
            return decided
    return []


# --- budgets -------------------------------------------------------------------------


def _budget_alerts(
    state: State, m: MissionState, why: Event, now: datetime, config: Config
) -> list[Event]:
    budget = m.budget_usd
    if budget is None:
        return []
    if m.spent_usd >= budget and m.exceeded_at_budget != budget:
        step = step_ids.budget_exceeded("mission", budget)
        return [
            BudgetExceeded(**caused_by(why, now, step), spent_usd=m.spent_usd, budget_usd=budget)
        ]
    if m.spent_usd >= config.warn_fraction * budget and m.warned_at_budget != budget:
        step = step_ids.budget_warning("mission", budget)
        return [
            BudgetWarning(**caused_by(why, now, step), spent_usd=m.spent_usd, budget_usd=budget)
        ]
    return []


def _global_block(state: State, now: datetime, config: Config) -> tuple[str, float, float] | None:
    """The global budget that is used up today, as (scope, spent, budget), if any."""
    day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
    daily = state.daily_spent.get(day, 0.0)
    if config.daily_budget_usd is not None and daily >= config.daily_budget_usd:
        return f"daily:{day}", daily, config.daily_budget_usd
    monthly = state.monthly_spent.get(month, 0.0)
    if config.monthly_budget_usd is not None and monthly >= config.monthly_budget_usd:
        return f"monthly:{month}", monthly, config.monthly_budget_usd
    return None


# --- liveness and retries ------------------------------------------------------------


def _timeouts(
    state: State, m: MissionState, why: Event, now: datetime, config: Config
) -> list[Event]:
    out: list[Event] = []
    for task in _ordered(m, m.with_status(*IN_FLIGHT)):
        if _timer_due(task, now, config):
            cause = task.ready_event or why
            step = step_ids.task_timed_out(task.spec.id, task.attempt)
            out.append(
                TaskTimedOut(
                    **caused_by(cause, now, step),
                    task_id=task.spec.id,
                    attempt=task.attempt,
                    last_heartbeat_at=task.last_seen,
                )
            )
    return out


def _failures(
    state: State, m: MissionState, why: Event, now: datetime, config: Config
) -> list[Event]:
    out: list[Event] = []
    for task in _ordered(m, m.with_status("retry_wait")):
        if task.retry_event is not None:
            continue
        task_id, attempt = task.spec.id, task.attempt
        # A conflict or a failed verification counts as an attempt like any failure: the
        # task is escalated after AETHER_MAX_ATTEMPTS attempts since the last person's retry.
        if task.attempt - task.attempts_base >= config.max_attempts:
            reason = f"failed {attempt - task.attempts_base} times; last: {task.last_failure}"
            step = step_ids.task_escalated(task_id, attempt)
            out.append(
                TaskEscalated(
                    **caused_by(why, now, step), task_id=task_id, attempt=attempt, reason=reason
                )
            )
            continue
        delay = (
            0.0
            if task.immediate_retry
            else backoff_seconds(m.request.mission_id, task_id, attempt + 1, config)
        )
        step = step_ids.task_retried(task_id, attempt + 1)
        out.append(
            TaskRetried(
                **caused_by(why, now, step),
                task_id=task_id,
                attempt=attempt + 1,
                reason=task.last_failure,
                not_before=now + timedelta(seconds=delay),
            )
        )
    return out


# --- starting tasks ------------------------------------------------------------------


def _ordered(m: MissionState, task_ids: Iterable[str]) -> list[TaskState]:
    """The tasks ``task_ids`` in the order they are started: priority, wave, plan order."""
    tasks = m.tasks
    return sorted((tasks[t] for t in task_ids), key=lambda t: (-t.spec.priority, t.wave, t.order))


def _candidates(m: MissionState, now: datetime) -> list[tuple[TaskState, int]]:
    """Tasks that could start now if there were room, with the attempt they would be:
    pending ones whose dependencies are done, and retries whose time has come."""
    out: list[tuple[TaskState, int]] = []
    for task in _ordered(m, m.startable | m.with_status("retry_wait")):
        if task.status == "pending":
            out.append((task, 1))
        elif (
            task.retry_event is not None and task.not_before is not None and task.not_before <= now
        ):
            out.append((task, task.retry_event.attempt))
    return out


def _in_flight_everywhere(state: State) -> int:
    return sum(
        len(mission.with_status(*IN_FLIGHT))
        for mission_id in state.live
        if not (mission := state.missions[mission_id]).terminal
    )


def _starts(
    state: State, m: MissionState, why: Event, now: datetime, config: Config
) -> list[Event]:
    candidates = _candidates(m, now)
    if not candidates or m.paused:
        return []
    blocked = _global_block(state, now, config)
    if blocked is not None:
        scope, spent, budget = blocked
        if scope in m.global_exceeded:
            return []
        step = step_ids.budget_exceeded(scope)
        return [
            BudgetExceeded(
                **caused_by(why, now, step), spent_usd=spent, budget_usd=budget, scope=scope
            )
        ]
    running = len(m.with_status(*IN_FLIGHT))
    room = min(
        m.request.max_concurrency - running,
        config.global_concurrency - _in_flight_everywhere(state),
    )
    committed = m.spent_usd + m.reserved_usd
    claimed = [m.tasks[t].claims for t in m.with_status(*UNMERGED_WORK)]
    out: list[Event] = []
    waves = set(m.waves_started)
    budget_stopped = False
    for task, attempt in candidates:
        if room <= 0:
            break
        if not m.request.allow_file_overlap and any(
            scopes_overlap(task.claims, files) for files in claimed
        ):
            continue
        estimate = estimate_for(task.spec.tier, config)
        if m.budget_usd is not None and committed + estimate > m.budget_usd + 1e-9:
            budget_stopped = True
            continue
        cause = task.retry_event if attempt > 1 and task.retry_event is not None else why
        if task.wave not in waves:
            waves.add(task.wave)
            wave_ids = list(m.wave_tasks.get(task.wave, ()))
            out.append(
                WaveStarted(
                    **caused_by(cause, now, step_ids.wave_started(task.wave)),
                    wave=task.wave,
                    task_ids=wave_ids,
                )
            )
        out.append(_ready(m, task, attempt, cause, now, config, estimate, committed))
        committed += estimate
        claimed.append(task.claims)
        room -= 1
    stuck = not out and budget_stopped and running == 0
    if stuck and m.budget_usd is not None and m.exceeded_at_budget != m.budget_usd:
        # Nothing runs and the next task does not fit: the budget is as good as spent.
        return [
            BudgetExceeded(
                **caused_by(why, now, step_ids.budget_exceeded("mission", m.budget_usd)),
                spent_usd=m.spent_usd,
                budget_usd=m.budget_usd,
            )
        ]
    return out


def _ready(
    m: MissionState,
    task: TaskState,
    attempt: int,
    cause: Event,
    now: datetime,
    config: Config,
    estimate: float,
    committed: float,
) -> TaskReady:
    tier = task.spec.tier
    model = m.request.model_overrides.get(tier) or config.tier_models[tier]
    # The agent may spend what the budget has left, and no more.
    cap = None if m.budget_usd is None else max(0.0, m.budget_usd - committed)
    context = task.context or (
        f"Previous attempt failed: {task.last_failure}" if task.last_failure else ""
    )
    return TaskReady(
        **caused_by(cause, now, step_ids.task_ready(task.spec.id, attempt)),
        task=task.spec,
        attempt=attempt,
        model=model,
        requirement=_requirement(m),
        wave=task.wave,
        max_cost_usd=cap,
        context=context if attempt > 1 else "",
        estimated_cost_usd=estimate,
        runtime=m.request.runtime_overrides.get(tier) or m.request.runtime,
        resolve_sha=task.resolve_sha if attempt > 1 else None,
    )


def _requirement(m: MissionState) -> str:
    """What the agents are told the mission is: the approved plan's requirement when it
    was made from a repository command, else the mission's as submitted."""
    plan = None if m.approved_version is None else m.plans.get(m.approved_version)
    return (plan.requirement if plan is not None else None) or m.request.requirement


# --- waves and the end ------------------------------------------------------------------


def _waves(state: State, m: MissionState, why: Event, now: datetime, config: Config) -> list[Event]:
    out: list[Event] = []
    for wave in sorted(m.waves_started - m.waves_completed):
        if not m.undone_in_wave.get(wave, 0):
            out.append(
                WaveCompleted(**caused_by(why, now, step_ids.wave_completed(wave)), wave=wave)
            )
    return out


def _ending(
    state: State, m: MissionState, why: Event, now: datetime, config: Config
) -> list[Event]:
    if not m.undone:
        return [_completed(m, why, now)]
    if m.with_status(*_LIVE) or _live_tasks(m):
        return []
    failed = sorted(m.with_status("failed"))
    blocked = sorted(t.spec.id for t in m.tasks.values() if t.status == "pending")
    reasons = "; ".join(f"{tid}: {m.tasks[tid].last_failure}" for tid in failed)
    reason = f"task(s) {', '.join(failed)} failed and cannot be retried ({reasons})"
    if blocked:
        reason += f"; blocked for good: {', '.join(blocked)}"
    # Each failure was cut where it was folded; a mission of many tasks has many.
    reason = bounded(reason, CONTEXT_BYTES)
    return [MissionFailed(**caused_by(why, now, step_ids.mission_failed()), reason=reason)]


_LIVE = ("ready", "running", "completed", "retry_wait", "escalated")


def _live_tasks(m: MissionState) -> set[str]:
    """Tasks that are running, waiting on time or a person, or could still run one day."""
    live = set(m.with_status(*_LIVE))
    dead = set(m.with_status("failed"))
    pending = [t for t in m.tasks.values() if t.status == "pending"]
    changed = True
    while changed:  # a pending task is dead once any dependency is dead
        changed = False
        for task in pending:
            if task.spec.id not in dead and any(d in dead for d in task.spec.depends_on):
                dead.add(task.spec.id)
                changed = True
    live |= {t.spec.id for t in pending if t.spec.id not in dead}
    return live


def _completed(m: MissionState, cause: Event, now: datetime) -> MissionCompleted:
    return MissionCompleted(
        **caused_by(cause, now, step_ids.mission_completed()),
        final_sha=m.integration_head or m.base_sha or "",
        integration_branch=m.integration_branch or "",
        tasks_merged=sum(1 for t in m.tasks.values() if t.status == "merged"),
        usage=m.usage,
        duration_seconds=max(0.0, (now - m.request.occurred_at).total_seconds()),
    )
