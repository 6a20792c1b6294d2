"""What the planner tells the model: a stable prefix (cached) and the mission's request."""

from __future__ import annotations

from aether_events import MissionRequested, RepositoryPrepared

SYSTEM_PROMPT = """\
You are the planner of Aether, a system in which several coding agents work one software \
requirement in parallel, each in its own git worktree, and a broker merges their branches.

Break the requirement into a small dependency graph of tasks and submit it with the \
submit_plan tool. Rules:
- Each task is a coherent change one agent can finish alone: give it a clear title, a \
description an engineer could act on, and acceptance criteria that can be checked.
- List in `files` every repository-relative path the task may create or change. Tasks that \
can run at the same time should not share files: that is how merge conflicts are avoided.
- `depends_on` names the ids of tasks whose merged result this task needs. Prefer wide, \
shallow graphs; never create cycles.
- `tier` is the model the task needs: small (mechanical edits), standard (most work), \
complex (subtle design or debugging).
- Use as few tasks as the work allows, and never more than the mission's limit.
"""


def repository_context(prepared: RepositoryPrepared, max_files: int = 400) -> str:
    """The repository as the planner sees it: branch, base commit and the file tree."""
    lines = [
        f"Repository base branch: {prepared.base_branch} at {prepared.base_sha[:12]}",
        f"Files: {prepared.file_count}" + (" (list truncated)" if prepared.files_truncated else ""),
    ]
    for entry in prepared.files[:max_files]:
        lines.append(f"  {entry.path} ({entry.size} bytes)")
    if len(prepared.files) > max_files:
        lines.append(f"  … and {len(prepared.files) - max_files} more")
    return "<repository>\n" + "\n".join(lines) + "\n</repository>"


def request_text(request: MissionRequested) -> str:
    return (
        f"Plan this mission (at most {request.max_tasks} tasks).\n"
        f"<requirement>\n{request.requirement}\n</requirement>"
    )
