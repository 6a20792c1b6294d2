"""What the model may return as a plan, and how a plan is checked and repaired (pure)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection

import msgspec

from aether_events import TIERS as TIERS  # the shared tier list, re-exported
from aether_events import PlannedTask, as_tier


class SubmittedTask(msgspec.Struct, kw_only=True):
    """A task as the model submits it; lenient where models are sloppy."""

    id: str | int
    title: str = ""
    description: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    depends_on: list[str | int] = msgspec.field(default_factory=list)
    tier: str = "standard"
    acceptance_criteria: list[str] = msgspec.field(default_factory=list)
    role: str | None = None


class PlanSubmission(msgspec.Struct, kw_only=True):
    tasks: list[SubmittedTask]
    rationale: str = ""


PLAN_TOOL_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string", "description": "Why this decomposition, briefly."},
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "Short unique id, e.g. t1."},
                    "title": {"type": "string"},
                    "description": {"type": "string"},
                    "files": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Repository-relative paths this task may touch.",
                    },
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    "tier": {"type": "string", "enum": list(TIERS)},
                    "acceptance_criteria": {"type": "array", "items": {"type": "string"}},
                    "role": {
                        "type": "string",
                        "description": "Optional: one of the repository's roles (<roles>).",
                    },
                },
                "required": ["id", "title", "description", "files", "depends_on", "tier"],
            },
        },
    },
    "required": ["tasks", "rationale"],
}


_ID_JUNK = re.compile(r"[^A-Za-z0-9._-]+")


class InvalidPlan(Exception):
    """The plan cannot be repaired; ``errors`` say exactly why."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _normal_path(path: str) -> str | None:
    """A clean repository-relative path, or None when it points outside the repository."""
    path = path.strip().replace("\\", "/")
    if not path or path.startswith("/") or ":" in path.split("/")[0]:
        return None
    clean = posixpath.normpath(path)
    if clean == "." or clean.startswith("../") or clean == ".." or clean.split("/")[0] == ".git":
        return None
    return clean


def validate_plan(
    submission: PlanSubmission, max_tasks: int, roles: Collection[str] = ()
) -> tuple[list[PlannedTask], list[str]]:
    """Check and repair a submitted plan; a task's role must be one of ``roles`` (the
    repository's), or it is dropped.

    Returns the tasks and the repairs made (each a sentence); raises ``InvalidPlan`` with
    every error when the plan cannot be repaired.
    """
    errors: list[str] = []
    repairs: list[str] = []
    if not submission.tasks:
        raise InvalidPlan(["the plan has no tasks"])
    if len(submission.tasks) > max_tasks:
        count = len(submission.tasks)
        errors.append(f"the plan has {count} tasks; the mission allows {max_tasks}")
    ids: list[str] = []
    renamed: dict[str, str] = {}
    for index, task in enumerate(submission.tasks, start=1):
        raw_id = str(task.id).strip()
        # Ids name branches and worktrees: letters, digits, '.', '_' and '-' only.
        task_id = _ID_JUNK.sub("-", raw_id).strip("-.")[:64].replace("..", ".")
        if not task_id:
            task_id = f"t{index}"
            repairs.append(f"task {index} had no usable id; named it {task_id}")
        elif task_id != raw_id:
            repairs.append(f"task id {raw_id!r} became {task_id!r}")
        renamed[raw_id] = task_id
        if task_id in ids:
            errors.append(f"duplicate task id {task_id!r}")
        if not (task.title.strip() or task.description.strip()):
            errors.append(f"task {task_id!r} is empty (no title, no description)")
        ids.append(task_id)
    by_title = {t.title.strip().lower(): ids[i] for i, t in enumerate(submission.tasks) if t.title}
    tasks: list[PlannedTask] = []
    for task_id, task in zip(ids, submission.tasks, strict=True):
        deps: list[str] = []
        for raw in task.depends_on:
            dep = renamed.get(str(raw).strip()) or _resolve_dependency(raw, ids, by_title)
            if dep is None:
                repairs.append(f"task {task_id!r}: dropped unknown dependency {raw!r}")
            elif dep == task_id:
                repairs.append(f"task {task_id!r}: dropped a dependency on itself")
            elif dep not in deps:
                if str(raw) != dep:
                    repairs.append(f"task {task_id!r}: read dependency {raw!r} as {dep!r}")
                deps.append(dep)
        files: list[str] = []
        for raw_path in task.files:
            path = _normal_path(raw_path)
            if path is None:
                errors.append(f"task {task_id!r}: file {raw_path!r} is outside the repository")
            elif path not in files:
                files.append(path)
        tier = as_tier(task.tier) or "standard"
        if tier != task.tier:
            repairs.append(f"task {task_id!r}: unknown tier {task.tier!r} read as 'standard'")
        role = (task.role or "").strip() or None
        if role is not None and role not in roles:
            repairs.append(f"task {task_id!r}: dropped role {role!r}, which the repository lacks")
            role = None
        tasks.append(
            PlannedTask(
                id=task_id,
                title=(task.title or task.description).strip()[:200],
                description=task.description.strip() or task.title.strip(),
                files=files,
                depends_on=deps,
                tier=tier,
                acceptance_criteria=[c for c in task.acceptance_criteria if c.strip()],
                role=role,
            )
        )
    cycle = find_cycle(tasks)
    if cycle:
        errors.append("dependency cycle: " + " -> ".join(cycle))
    if errors:
        raise InvalidPlan(errors)
    return tasks, repairs


def _resolve_dependency(raw: str | int, ids: list[str], by_title: dict[str, str]) -> str | None:
    text = str(raw).strip()
    if text in ids:
        return text
    if text.lower() in by_title:
        return by_title[text.lower()]
    if text.isdigit():
        if f"t{text}" in ids:
            return f"t{text}"
        position = int(text)
        if 1 <= position <= len(ids):
            return ids[position - 1]
    return None


def find_cycle(tasks: list[PlannedTask]) -> list[str]:
    """One dependency cycle as a path of ids (first id repeated at the end), or []."""
    deps = {t.id: t.depends_on for t in tasks}
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        colour[node] = 1
        stack.append(node)
        for dep in deps.get(node, []):
            if colour.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if colour.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return []

    for task in tasks:
        if colour.get(task.id) is None:
            found = visit(task.id)
            if found:
                return found
    return []
