"""``aether mission watch``: a live board of a mission's tasks, folded from its events.

The board is built from the event stream alone (replayed from the start, then live), so
it never counts a cost twice, and after a dropped connection it resumes from the last
event id without missing one. Agent progress arrives as telemetry and only fills in the
"latest activity" column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from aether.client import SseEvent
from aether.render import money
from aether_events import (
    NEEDS_PERSON_TASK_STATUSES,
    SETTLED_TASK_STATUSES,
    TERMINAL_TYPES,
    TYPES_BY_TAG,
    Event,
    MissionProgress,
    MissionStatus,
    TaskStatus,
    Usage,
    add_cost,
    advance,
    is_terminal,
    tag_of,
    task_status_after,
)

# The tags of the events that end a mission (the shared rule: ``aether_events.status``).
TERMINAL = frozenset(tag_of(cls) for cls in TERMINAL_TYPES)


@dataclass
class TaskLine:
    id: str
    title: str
    depends_on: list[str] = field(default_factory=list)
    status: TaskStatus = "pending"
    attempt: int = 0
    wave: int | None = None
    cost: float | None = None
    cost_complete: bool = True
    activity: str = ""


@dataclass
class Board:
    mission_id: str
    progress: MissionProgress = field(default_factory=MissionProgress)
    plan_version: int | None = None
    offline: bool = False
    budget: float | None = None
    cost: float | None = None
    cost_complete: bool = True
    tasks: dict[str, TaskLine] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last_id: str | None = None
    finished: bool = False

    @property
    def status(self) -> MissionStatus:
        """The mission's status, by the same rules as the gateway and the scheduler."""
        return self.progress.status

    def apply(self, event: SseEvent) -> None:
        """Fold one event into the board."""
        if event.id is not None:
            self.last_id = event.id
        kind, data = event.event, event.data
        typed = _typed(kind, data)
        if typed is not None:
            self.progress = advance(self.progress, typed)
            self.finished = self.finished or is_terminal(typed)
        self._mission(kind, data)
        self._task(kind, data, typed)

    def _mission(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "mission_requested":
            self.budget = data.get("budget_usd")
        elif kind == "plan_produced":
            self._plan(data)
        elif kind == "usage_recorded":
            self.offline = self.offline or bool(data.get("offline"))
            self.cost, self.cost_complete = add_cost(self.cost, self.cost_complete, _usage(data))
        elif kind == "budget_raised":
            self.budget = data.get("budget_usd")
        elif kind in ("budget_warning", "budget_exceeded"):
            self.notes.append(f"{kind.replace('_', ' ')}: ${data['spent_usd']:.2f}")
        elif kind == "plan_clarification_requested":
            self.notes.extend(f"planner asks: {q}" for q in data.get("questions", []))

    def _plan(self, data: dict[str, Any]) -> None:
        self.plan_version = data.get("version")
        self.offline = self.offline or bool(data.get("offline"))
        fresh: dict[str, TaskLine] = {}
        for task in data.get("tasks", []):
            line = self.tasks.get(task["id"]) or TaskLine(id=task["id"], title=task["title"])
            line.title = task["title"]
            line.depends_on = list(task.get("depends_on", []))
            fresh[task["id"]] = line
        for task_id, line in self.tasks.items():
            if task_id not in fresh and line.status != "pending":
                fresh[task_id] = line
        self.tasks = fresh

    def _task(self, kind: str, data: dict[str, Any], typed: Event | None) -> None:
        task_id = data.get("task_id") or (data.get("task") or {}).get("id")
        if not task_id:
            return
        line = self.tasks.get(task_id)
        if line is None:
            title = (data.get("task") or {}).get("title", task_id)
            line = self.tasks[task_id] = TaskLine(id=task_id, title=title)
        attempt = data.get("attempt")
        if isinstance(attempt, int) and attempt < line.attempt and kind != "usage_recorded":
            return  # late news of an earlier attempt
        if line.status in SETTLED_TASK_STATUSES and kind != "usage_recorded":
            return  # merged or skipped: nothing moves it (its cost may still arrive)
        if isinstance(attempt, int) and kind != "usage_recorded":
            line.attempt = attempt
        status = None if typed is None else task_status_after(line.status, typed)
        if status is not None:
            line.status = status
        if kind == "task_ready":
            if isinstance(data.get("wave"), int):
                line.wave = data["wave"]
            line.activity = f"attempt {attempt} on {data.get('model')}"
        elif kind == "agent_started":
            line.activity = f"agent on {data.get('runner_id')}"
        elif kind == "agent_progress":
            action = data.get("last_action") or "working"
            line.activity = f"turn {data.get('turns', 0)}: {action}"
        elif kind in ("agent_failed", "task_escalated", "workspace_failed", "task_retried"):
            line.activity = str(data.get("reason", ""))
        elif kind == "merge_conflicted":
            line.activity = "conflict in " + ", ".join(data.get("files", []))
        elif kind == "branch_merged":
            line.activity = f"merged {str(data.get('merge_sha', ''))[:10]}"
        elif kind == "usage_recorded":
            line.cost, line.cost_complete = add_cost(line.cost, line.cost_complete, _usage(data))


def _typed(kind: str, data: dict[str, Any]) -> Event | None:
    """The event an SSE message carries, or ``None`` for one this version does not know
    (or that does not decode: the board then shows what it can without it)."""
    cls = TYPES_BY_TAG.get(kind)
    if cls is None:
        return None
    try:
        return msgspec.convert(data, type=cls)
    except msgspec.ValidationError:
        return None


def _usage(data: dict[str, Any]) -> Usage:
    try:
        return msgspec.convert(data.get("usage") or {}, type=Usage)
    except msgspec.ValidationError:
        return Usage()


def _money(value: float | None, complete: bool = True) -> str:
    """A cost as everywhere in the CLI, or ``-`` before anything was spent."""
    return "-" if value is None and complete else money(value, complete)


def _fit(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def render(board: Board, width: int = 100) -> str:
    """The board as text, one line per task."""
    budget = f" of ${board.budget:.2f}" if board.budget is not None else ""
    offline = "  [OFFLINE model]" if board.offline else ""
    plan = f"  plan v{board.plan_version}" if board.plan_version is not None else ""
    lines = [
        f"{board.mission_id}  {board.status.replace('_', ' ')}{plan}  "
        f"cost {_money(board.cost, board.cost_complete)}{budget}{offline}",
        "",
    ]
    title_width = max(12, min(40, width - 70))
    lines.append(
        f"  {'task':<10} {'status':<12} {'try':>3} {'wave':>4} {'cost':>9}  "
        f"{'title':<{title_width}}  latest activity"
    )
    for line in board.tasks.values():
        wave = "-" if line.wave is None else str(line.wave)
        after = f" (after {', '.join(line.depends_on)})" if line.depends_on else ""
        title = _fit(line.title + after, title_width)
        row = (
            f"  {_fit(line.id, 10):<10} {line.status:<12} {line.attempt:>3} {wave:>4} "
            f"{_money(line.cost, line.cost_complete):>9}  {title:<{title_width}}  "
        )
        lines.append(row + _fit(line.activity, max(10, width - len(row))))
    if not board.tasks:
        lines.append("  (no plan yet)")
    for note in board.notes[-5:]:
        lines.append(f"  ! {_fit(note, width - 4)}")
    for wait in waiting_for_a_person(board):
        lines.append(f"  > {_fit(wait, width - 4)}")
    return "\n".join(lines)


_ASKS = {
    "awaiting_input": "the planner asks (above): answer with `aether mission message {m} TEXT`",
    "awaiting_approval": "the plan waits for approval: `aether mission approve {m}`",
}


def waiting_for_a_person(board: Board) -> list[str]:
    """What the mission waits for a person to do (``aether_events.status``'s rule)."""
    m = board.mission_id
    waits = [_ASKS[board.status].format(m=m)] if board.progress.needs_person else []
    if not board.progress.terminal:
        waits += [
            f"task {line.id} is escalated: `aether mission retry {m} {line.id}` "
            f"(or `skip {m} {line.id}`)"
            for line in board.tasks.values()
            if line.status in NEEDS_PERSON_TASK_STATUSES
        ]
    return waits
