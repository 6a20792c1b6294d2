"""What the agent is told: the standing instructions and the task at hand."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from aether_agent_runner.adapters.search import SKIPPED_DIRECTORIES
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.roles import find_skills
from aether_events import WorkspaceReady
from aether_llm.skills import skills_section

if TYPE_CHECKING:
    from anthropic.types import TextBlockParam

MAX_MAP_ENTRIES = 300

SYSTEM_PROMPT = """\
You are a coding agent of Aether. You work one task of a larger mission inside a git \
worktree of the repository; other agents work the other tasks in parallel, each in its own \
copy, and their work is merged with yours afterwards.

How to work:
- Change what the task needs and nothing else; prefer the files the task lists and touch \
others only when the task cannot be done without them.
- Look before you change: list_dir, search and read_file. Change existing files with \
edit_file (exact text replacement, small and precise); use write_file for new files or \
complete rewrites, delete_file to remove one.
- Paths are relative to the repository root. The .git directory and anything outside the \
repository are out of reach.
- If run_command is offered, use it to run the repository's tests or linters on your \
change. It runs one program without a shell.
- Do not commit, branch or push: your changes are committed and merged for you.
- When the task is done and its acceptance criteria hold, call finish with a short summary \
of what you changed and why. If the task cannot be done, call finish and say why.
"""

SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
]


def repository_view(root: Path, listing: tuple[list[str], int] | None = None) -> tuple[str, str]:
    """What the opening message shows of the worktree: its map, and its skills.

    ``listing``: the map's paths and how many more there are, when the caller knows the
    worktree holds exactly a tree and nothing else (``adapters.git.tree_listing``, read
    from the tree's objects, most of them known from the last task's); else the
    worktree is walked."""
    skills, more = find_skills(root)
    files = map_text(*listing) if listing is not None else repository_map(root)
    return files, skills_section(skills, more)


def map_text(paths: list[str], more: int) -> str:
    """The map's text: one path per line, then how many more files there are."""
    if more:
        paths = [*paths, f"[… and {more} more files]"]
    return "\n".join(paths) or "(no files yet)"


def repository_map(root: Path, limit: int = MAX_MAP_ENTRIES) -> str:
    """The worktree's files, one path per line, dependency and cache directories left out."""
    paths: list[str] = []
    more = 0
    top = os.fspath(root)
    # fwalk opens each directory by descriptor without following symlinks: a directory
    # swapped for a link to elsewhere is not entered, not even to list its names.
    for directory, subdirectories, names, _ in os.fwalk(top, follow_symlinks=False):
        subdirectories[:] = sorted(
            d for d in subdirectories if d.lower() != ".git" and d not in SKIPPED_DIRECTORIES
        )
        # fwalk names each directory below ``top`` as os.path.join(its parent, its name):
        # the path relative to the root is what follows ``top`` (string work, not a
        # PurePath built and compared per file).
        inside = directory[len(top) :].lstrip("/")
        prefix = inside + "/" if inside else ""
        for name in sorted(names):
            if name.lower() == ".git":
                continue
            if len(paths) >= limit:
                more += 1
                continue
            paths.append(prefix + name)
    return map_text(paths, more)


def task_prompt(ready: WorkspaceReady, files: str, limits: Limits, skills: str = "") -> str:
    """The opening message: mission, task (as JSON), context, repository map, the
    repository's skills (``aether_llm.skills.skills_section``), limits."""
    task = ready.task
    spec = json.dumps(
        {
            "id": task.id,
            "title": task.title,
            "description": task.description,
            "files": task.files,
            "acceptance_criteria": task.acceptance_criteria,
        },
        indent=2,
    )
    parts = [
        f"<mission>\n{ready.requirement}\n</mission>",
        f"<task>\n{spec}\n</task>",
    ]
    if ready.context:
        parts.append(f"<context>\n{ready.context}\n</context>")
    parts.append(f"<repository>\n{files}\n</repository>")
    if skills:
        parts.append(skills)
    budget = f"at most {limits.max_turns} model turns"
    if limits.max_cost_usd is not None:
        budget += f" and ${limits.max_cost_usd:.2f}"
    parts.append(f"You have {budget} for this task; work efficiently.")
    return "\n\n".join(parts)


# What a resumed session (Claude Code's, an ACP agent's) is told as it goes on.
CONTINUE = """\
The runner working this task was restarted while you were at it. Carry on from where the \
conversation stops: the working directory holds every change you made so far. When the \
task is done, reply with a short summary of what you changed and why."""
