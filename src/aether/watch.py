"""``aether mission watch``: a live board of a mission's tasks, folded from its events.

The board is built from the event stream alone (replayed from the start, then live), so
it never counts a cost twice, and after a dropped connection it resumes from the last
event id without missing one. Agent progress arrives as telemetry and only fills in the
"latest activity" column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from aether.client import SseEvent
from aether.render import HINTS, escalated_hint, merge_refused, task_cost, wave_number
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

    # What the board shows beside the status: where the work lands, when it began, tokens.
    repository: str = ""
    base_sha: str = ""
    branch: str = ""
    final_sha: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0
    reason: str = ""
    model: str = ""
    tiers: dict[str, str] = field(default_factory=dict)
    # Where the broker said it will push the result (RepositoryPrepared), and the line
    # saying how that went once it did (BranchPushed or BranchPushFailed).
    delivery_remote: str = ""
    delivered: str = ""

    @property
    def awaiting_delivery(self) -> bool:
        """Completed, with a push announced whose end has not been seen yet."""
        return self.status == "completed" and bool(self.delivery_remote) and not self.delivered

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
        self._facts(kind, data)

    def _facts(self, kind: str, data: dict[str, Any]) -> None:
        when = _when(data.get("occurred_at"))
        if kind == "mission_requested":
            self.repository = str(data.get("repository", ""))
            self.started_at = when
        elif kind == "plan_produced":
            self.model = str(data.get("model") or "")
            self.tiers = {t["id"]: str(t.get("tier", "standard")) for t in data.get("tasks", [])}
        elif kind == "repository_prepared":
            self.base_sha = str(data.get("base_sha", ""))
            self.branch = str(data.get("integration_branch", ""))
            self.delivery_remote = str(data.get("delivery_remote") or "")
        elif kind == "branch_pushed" and not self.delivered:
            there = " (it was already there)" if data.get("already_there") else ""
            self.delivered = f"delivered to {data.get('remote', '')}{there}"
        elif kind == "branch_push_failed" and not self.delivered:
            self.delivered = f"delivery FAILED: {data.get('reason', '')}"
        elif kind == "mission_completed":
            self.final_sha = str(data.get("final_sha", ""))
            self.branch = str(data.get("integration_branch", self.branch))
        elif kind in ("mission_failed", "plan_failed", "mission_cancelled"):
            self.reason = str(data.get("reason", ""))
        elif kind == "usage_recorded":
            usage = data.get("usage") or {}
            self.tokens_in += int(usage.get("input_tokens") or 0)
            self.tokens_out += int(usage.get("output_tokens") or 0)
            self.cache_read += int(usage.get("cache_read_input_tokens") or 0)
        if kind in TERMINAL:
            self.ended_at = when

    def estimate(self) -> float:
        """What the plan's tasks are expected to cost: the scheduler's estimate per tier
        (what it reserves against the budget), nothing for the offline model."""
        if self.offline:
            return 0.0
        from aether_events.estimates import estimate_for

        estimates = tier_estimates()
        return sum(estimate_for(tier, estimates) for tier in self.tiers.values())

    @property
    def merged(self) -> int:
        return sum(1 for line in self.tasks.values() if line.status in ("merged", "skipped"))

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
            line.activity = _progress_text(data)
        elif kind in ("agent_failed", "task_escalated", "workspace_failed", "task_retried"):
            line.activity = str(data.get("reason", ""))
        elif kind == "merge_conflicted":
            line.activity = merge_refused(data)
        elif kind == "merge_withheld":
            line.activity = f"not merged: {data.get('reason', '')}"
        elif kind == "branch_merged":
            line.activity = f"merged {str(data.get('merge_sha', ''))[:10]}" + (
                " (resolution of a conflict)" if data.get("resolution") else ""
            )
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


# What the person watching can do in each state that waits on them.
def tier_estimates() -> dict[str, float]:
    """The scheduler's cost estimate per tier, with the same overrides it reads."""
    from aether_events.estimates import tier_estimates as shared

    return shared()


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _progress_text(data: dict[str, Any]) -> str:
    """An agent's latest action: the tool and its file or command, and what it changed."""
    action = str(data.get("last_action") or "working")
    files = [str(f) for f in data.get("files_changed") or []]
    text = f"turn {data.get('turns', 0)}: {action}"
    if files and files[-1] not in action:
        more = f" (+{len(files) - 1})" if len(files) > 1 else ""
        text += f"; changed {files[-1]}{more}"
    return text


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _usage(data: dict[str, Any]) -> Usage:
    try:
        return msgspec.convert(data.get("usage") or {}, type=Usage)
    except msgspec.ValidationError:
        return Usage()


def _fit(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render(board: Board, width: int = 100, now: datetime | None = None, notice: str = "") -> str:
    """The board as text: a header, what the watcher can do now, one line per task."""
    budget = f" of ${board.budget:.2f}" if board.budget is not None else ""
    offline = "  [OFFLINE model]" if board.offline else ""
    plan = f"  plan v{board.plan_version}" if board.plan_version is not None else ""
    lines = [
        _clip(
            f"{board.mission_id}  {board.status.replace('_', ' ')}{plan}  "
            f"cost {task_cost(board.cost, board.cost_complete)}{budget}{offline}",
            width,
        ),
        _clip(_summary(board, now), width),
    ]
    state = board.status.replace("_", " ")
    hint = waiting_hint(board)
    if hint:
        lines.append(_fit(hint, width))
    if state == "awaiting approval" and board.tiers:
        model = "offline model, free" if board.offline else f"real model {board.model}"
        budget_note = f" of the ${board.budget:.2f} budget" if board.budget is not None else ""
        lines.append(
            _clip(f"  estimated cost ≈ ${board.estimate():.2f}{budget_note} ({model})", width)
        )
    if notice:
        lines.append(_fit(f"! {notice}", width))
    lines.append("")
    fixed = 48  # the columns before the title, and the gap after it
    longest = max((len(_title(line)) for line in board.tasks.values()), default=5)
    title_width = max(12, min(longest, width - fixed - 30))
    lines.append(
        f"  {'task':<10} {'status':<12} {'try':>3} {'wave':>4} {'cost':>9}  "
        f"{'title':<{title_width}}  latest activity"
    )
    for line in board.tasks.values():
        wave = "-" if line.wave is None else str(wave_number(line.wave))
        title = _fit(_title(line), title_width)
        row = (
            f"  {_fit(line.id, 10):<10} {line.status:<12} {line.attempt:>3} {wave:>4} "
            f"{task_cost(line.cost, line.cost_complete):>9}  {title:<{title_width}}  "
        )
        lines.append(row + _fit(line.activity, max(10, width - len(row))))
    if not board.tasks:
        lines.append("  (no plan yet)")
    for note in board.notes[-5:]:
        lines.append(f"  ! {_fit(note, width - 4)}")
    for wait in waiting_for_a_person(board):
        lines.append(f"  > {_fit(wait, width - 4)}")
    return "\n".join(lines)


def waiting_hint(board: Board) -> str:
    """What the watcher can do now about the mission's state ("» awaiting approval — …"),
    or "" when there is nothing to do."""
    # Statuses may be spelt "awaiting_approval" (the shared status rules) or with spaces.
    state = board.status.replace("_", " ")
    hint = HINTS.get(state)
    return f"» {state} — {hint.format(id=board.mission_id)}" if hint else ""


def waiting_for_a_person(board: Board) -> list[str]:
    """The tasks that wait for a person (``aether_events.status``'s rule); what the
    mission itself waits for is the hint under the header (``HINTS``)."""
    m = board.mission_id
    waits: list[str] = []
    if not board.progress.terminal:
        waits += [
            escalated_hint(m, line.id)
            for line in board.tasks.values()
            if line.status in NEEDS_PERSON_TASK_STATUSES
        ]
    return waits


def _title(line: TaskLine) -> str:
    after = f" (after {', '.join(line.depends_on)})" if line.depends_on else ""
    return " ".join((line.title + after).split())


def _summary(board: Board, now: datetime | None) -> str:
    """Elapsed time, tasks merged, tokens and the share of input read from the cache."""
    parts = []
    if board.started_at is not None:
        end = board.ended_at or now or datetime.now(UTC)
        parts.append(f"elapsed {_duration((end - board.started_at).total_seconds())}")
    if board.tasks:
        parts.append(f"merged {board.merged}/{len(board.tasks)}")
    if board.tokens_in or board.tokens_out:
        read = board.tokens_in + board.cache_read
        cached = f" ({board.cache_read * 100 // read}% from cache)" if board.cache_read else ""
        parts.append(
            f"tokens in {board.tokens_in + board.cache_read}{cached} out {board.tokens_out}"
        )
    return "  ".join(parts)
