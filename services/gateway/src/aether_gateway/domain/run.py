"""Folding a run of events in memory: what a catch-up writes for many events at once.

``fold`` changes one mission's rows for one event; folding a run of stored events one
at a time reads each event's rows from the database and writes them back, so a rebuild
of a long history costs several round trips per event. ``fold_run`` instead takes the
rows of every mission the run touches, folds each event into them in stream order
(each event sees the rows as the events before it left them, exactly as the one-event
path would have read them back) and returns the rows as they stand at the end of the
run: one write per row, whatever the number of events that changed it.
"""

from __future__ import annotations

import msgspec

from aether_events import Event
from aether_gateway.domain.fold import Changes, MissionView, fold, tasks_read
from aether_gateway.domain.model import (
    BudgetAlert,
    Mission,
    MissionMessage,
    Plan,
    SessionUpdate,
    Task,
    UsageEntry,
)


class RunWrites(msgspec.Struct, kw_only=True):
    """The rows a run of events leaves changed, in the order they are to be written.

    ``missions``, ``plans`` and ``tasks`` are the rows' final values (missions first:
    the other rows refer to them); ``removed_tasks`` are the (mission, task) rows gone at
    the end of the run; the append-only rows and the session merges are in stream order
    (a session merge adds up, so each one is written, in order).
    """

    missions: list[Mission] = msgspec.field(default_factory=list)
    plans: list[Plan] = msgspec.field(default_factory=list)
    removed_tasks: list[tuple[str, str]] = msgspec.field(default_factory=list)
    tasks: list[Task] = msgspec.field(default_factory=list)
    usage: list[UsageEntry] = msgspec.field(default_factory=list)
    messages: list[MissionMessage] = msgspec.field(default_factory=list)
    alerts: list[BudgetAlert] = msgspec.field(default_factory=list)
    sessions: list[SessionUpdate] = msgspec.field(default_factory=list)


def advanced(view: MissionView, changes: Changes) -> MissionView:
    """The view as it stands once ``changes`` are written: ``view`` holds every task of
    the mission, or those the run's events read with the mission's ``task_count`` (see
    ``tasks_read``); so does the result, its count kept."""
    if changes.empty:
        return view
    tasks = view.tasks
    count = view.task_count
    if changes.removed_tasks or changes.tasks:
        tasks = dict(tasks)
        for task_id in changes.removed_tasks:
            if tasks.pop(task_id, None) is not None and count is not None:
                count -= 1
        for task in changes.tasks:
            if task.task_id not in tasks and count is not None:
                count += 1
            tasks[task.task_id] = task
    mission = changes.mission if changes.mission is not None else view.mission
    return MissionView(mission=mission, tasks=tasks, task_count=count)


def tasks_needed(events: list[Event]) -> dict[str, list[str] | None]:
    """Per mission, the task rows ``fold_run`` needs for ``events``: those any of its
    events reads (``tasks_read``), or ``None`` for every task of the mission."""
    needed: dict[str, set[str] | None] = {}
    for event in events:
        read = tasks_read(event)
        mission_id = event.mission_id
        if read is None:
            needed[mission_id] = None
            continue
        known = needed.setdefault(mission_id, set())
        if known is not None:
            known.update(read)
    return {m: None if ids is None else sorted(ids) for m, ids in needed.items()}


def fold_run(views: dict[str, MissionView], events: list[tuple[Event, int, int]]) -> RunWrites:
    """The rows to write for ``events`` (each with its stream sequence and its part of
    its message, see ``carried``; in stream order), given ``views``: for every mission
    the events name, its mission row and its task rows as stored before the run, all of
    them or those ``tasks_needed`` names with the mission's task count when one of those
    does not exist (a mission not stored yet may be left out)."""
    start = dict(views)
    current = dict(views)
    plans: dict[tuple[str, int], Plan] = {}
    removed: dict[str, set[str]] = {}
    touched: dict[str, set[str]] = {}
    writes = RunWrites()
    for event, sequence, part in events:
        mission_id = event.mission_id
        view = current.get(mission_id) or MissionView()
        changes = fold(view, event, sequence, part)
        if changes.empty:
            continue
        current[mission_id] = advanced(view, changes)
        if changes.plan is not None:
            plans[(changes.plan.mission_id, changes.plan.version)] = changes.plan
        if changes.removed_tasks:
            removed.setdefault(mission_id, set()).update(changes.removed_tasks)
        if changes.tasks:
            touched.setdefault(mission_id, set()).update(t.task_id for t in changes.tasks)
        if changes.usage is not None:
            writes.usage.append(changes.usage)
        if changes.message is not None:
            writes.messages.append(changes.message)
        if changes.alert is not None:
            writes.alerts.append(changes.alert)
        if changes.session is not None:
            writes.sessions.append(changes.session)
    for mission_id, view in current.items():
        before = start.get(mission_id)
        if view.mission is not None and (before is None or before.mission != view.mission):
            writes.missions.append(view.mission)
    writes.plans = list(plans.values())
    for mission_id, task_ids in removed.items():
        gone = task_ids - current[mission_id].tasks.keys()
        writes.removed_tasks.extend((mission_id, task_id) for task_id in sorted(gone))
    for mission_id, task_ids in touched.items():
        tasks = current[mission_id].tasks
        writes.tasks.extend(tasks[task_id] for task_id in sorted(task_ids) if task_id in tasks)
    return writes
