"""``aether mission watch``: a live board of a mission's tasks, folded from its events.

The board is built from the event stream alone (replayed from the start, then live), so
it never counts a cost twice, and after a dropped connection it resumes from the last
event id without missing one. Agent progress arrives as telemetry and only fills in the
"latest activity" column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aether.client import SseEvent

TERMINAL = {"mission_completed", "mission_failed", "mission_cancelled", "mission_answered"}

_TASK_STATUS = {
    "task_ready": "ready",
    "workspace_ready": "running",
    "agent_started": "running",
    "agent_completed": "completed",
    "agent_failed": "failed",
    "workspace_failed": "failed",
    "branch_merged": "merged",
    "merge_conflicted": "conflicted",
    "task_retried": "retrying",
    "task_timed_out": "timed out",
    "task_escalated": "escalated",
    "task_retry_requested": "retrying",
    "task_skipped": "skipped",
}
_MISSION_STATUS = {
    "mission_requested": "requested",
    "repository_prepared": "preparing",
    "plan_clarification_requested": "awaiting input",
    "plan_produced": "awaiting approval",
    "plan_revision_requested": "preparing",
    "plan_failed": "plan failed",
    "plan_approved": "running",
    "mission_paused": "paused",
    "mission_completed": "completed",
    "mission_answered": "answered",
    "mission_failed": "failed",
    "mission_cancelled": "cancelled",
}


@dataclass
class TaskLine:
    id: str
    title: str
    depends_on: list[str] = field(default_factory=list)
    status: str = "pending"
    attempt: int = 0
    wave: int | None = None
    cost: float | None = None
    activity: str = ""


@dataclass
class Board:
    mission_id: str
    status: str = "requested"
    plan_version: int | None = None
    offline: bool = False
    budget: float | None = None
    cost: float | None = None
    tasks: dict[str, TaskLine] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last_id: str | None = None
    finished: bool = False
    _paused_from: str = "running"
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

    def apply(self, event: SseEvent) -> None:
        """Fold one event into the board."""
        if event.id is not None:
            self.last_id = event.id
        kind, data = event.event, event.data
        self._mission(kind, data)
        self._task(kind, data)
        self._facts(kind, data)
        if kind in TERMINAL:
            self.finished = True

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
        return sum(tier_estimates().get(tier, 0.0) for tier in self.tiers.values())

    @property
    def merged(self) -> int:
        return sum(1 for line in self.tasks.values() if line.status in ("merged", "skipped"))

    def _mission(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "mission_requested":
            self.budget = data.get("budget_usd")
        elif kind == "plan_produced":
            self._plan(data)
        elif kind == "usage_recorded":
            cost = (data.get("usage") or {}).get("cost_usd")
            self.offline = self.offline or bool(data.get("offline"))
            if cost is not None:
                self.cost = (self.cost or 0.0) + cost
        elif kind == "budget_raised":
            self.budget = data.get("budget_usd")
        elif kind in ("budget_warning", "budget_exceeded"):
            self.notes.append(f"{kind.replace('_', ' ')}: ${data['spent_usd']:.2f}")
        elif kind == "plan_clarification_requested":
            self.notes.extend(f"planner asks: {q}" for q in data.get("questions", []))
        if kind == "mission_resumed" and self.status == "paused":
            self.status = self._paused_from
        elif kind in _MISSION_STATUS and self.status not in _FINAL:
            if kind == "mission_paused":
                self._paused_from = self.status
            if kind == "plan_produced" and self.status == "running":
                return  # a revised plan while running does not stop the work
            self.status = _MISSION_STATUS[kind]

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

    def _task(self, kind: str, data: dict[str, Any]) -> None:
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
        if isinstance(attempt, int) and kind != "usage_recorded":
            line.attempt = attempt
        if kind in _TASK_STATUS and line.status not in ("merged", "skipped"):
            line.status = _TASK_STATUS[kind]
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
            line.activity = "conflict in " + ", ".join(data.get("files", []))
        elif kind == "branch_merged":
            line.activity = f"merged {str(data.get('merge_sha', ''))[:10]}"
        elif kind == "usage_recorded":
            cost = (data.get("usage") or {}).get("cost_usd")
            if cost is not None:
                line.cost = (line.cost or 0.0) + cost


_FINAL = {"completed", "answered", "failed", "cancelled"}

# What the person watching can do in each state that waits on them.
HINTS = {
    "awaiting approval": (
        "approve with `aether mission approve {id}`, or ask for changes with "
        '`aether mission message {id} "…"`'
    ),
    "awaiting input": 'the planner has questions: answer with `aether mission message {id} "…"`',
    "paused": "resume with `aether mission resume {id}`",
    "plan failed": "see why with `aether mission show {id}`",
    "failed": "see why with `aether mission show {id}`",
}


def tier_estimates() -> dict[str, float]:
    """The scheduler's cost estimate per tier, with the same overrides it reads."""
    from aether_scheduler.config import DEFAULT_ESTIMATES

    return {
        tier: float(os.environ.get(f"AETHER_ESTIMATE_USD_{tier.upper()}") or default)
        for tier, default in DEFAULT_ESTIMATES.items()
    }


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


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


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
            f"{board.mission_id}  {board.status}{plan}  cost {_money(board.cost)}{budget}{offline}",
            width,
        ),
        _clip(_summary(board, now), width),
    ]
    # Statuses may be spelt "awaiting_approval" (the shared status rules) or with spaces.
    state = board.status.replace("_", " ")
    hint = HINTS.get(state)
    if hint:
        lines.append(_fit(f"» {state} — {hint.format(id=board.mission_id)}", width))
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
        wave = "-" if line.wave is None else str(line.wave)
        title = _fit(_title(line), title_width)
        row = (
            f"  {_fit(line.id, 10):<10} {line.status:<12} {line.attempt:>3} {wave:>4} "
            f"{_money(line.cost):>9}  {title:<{title_width}}  "
        )
        lines.append(row + _fit(line.activity, max(10, width - len(row))))
    if not board.tasks:
        lines.append("  (no plan yet)")
    for note in board.notes[-5:]:
        lines.append(f"  ! {_fit(note, width - 4)}")
    return "\n".join(lines)


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
