"""Finding the role a task names among the worktree's ``.claude/agents`` templates, and
the skills its ``.claude/skills`` defines."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from aether_llm.roles import ROLES_DIR, InvalidRole, Role, parse_role
from aether_llm.skills import (
    MAX_SKILL_CHARS,
    MAX_SKILLS,
    SKILL_FILE,
    SKILLS_DIR,
    Skill,
    parse_skill,
)

log = logging.getLogger("aether.agent-runner")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RoleMissing(Exception):
    """The task names a role its worktree does not define (or defines badly)."""


def find_role(worktree: Path, name: str) -> Role:
    """The role ``name`` from the worktree's templates; a template that is a link or leads
    out of the worktree is not read."""
    root = worktree.resolve()
    directory = root / ROLES_DIR
    if directory.is_symlink() or not directory.is_dir() or root not in directory.resolve().parents:
        raise RoleMissing(f"the task names role {name!r} but the repository has no {ROLES_DIR}")
    problems = []
    for path in sorted(directory.glob("*.md")):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            role = parse_role(path.read_text(errors="replace"))
        except InvalidRole as error:
            problems.append(f"{path.name}: {error}")
            continue
        if role.name == name:
            return role
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise RoleMissing(f"the task names role {name!r}, which {ROLES_DIR} does not define{detail}")


# What each Claude Code tool a role's ``tools`` may name lets an agent do, as the built-in
# loop's tools (any runtime's commands are ``run_command``).
ROLE_TOOLS: dict[str, tuple[str, ...]] = {
    "Read": ("read_file",),
    "Glob": ("list_dir",),
    "LS": ("list_dir",),
    "Grep": ("search",),
    "Edit": ("edit_file",),
    "MultiEdit": ("edit_file",),
    "Write": ("write_file", "delete_file"),
    "Bash": ("run_command",),
}
BUILTIN_TOOLS = frozenset(name for names in ROLE_TOOLS.values() for name in names)


def role_tools(role: Role | None) -> frozenset[str] | None:
    """The tools an agent in ``role`` may call (``None``: the role names none, so every
    one); a role may also name the built-in loop's own tools."""
    if role is None or role.tools is None:
        return None
    allowed: set[str] = set()
    for tool in role.tools:
        allowed.update(ROLE_TOOLS.get(tool, ()))
        if tool in BUILTIN_TOOLS:
            allowed.add(tool)
    return frozenset(allowed)


def role_prompt(role: Role) -> str:
    """The role's instructions as they are added to an agent's system prompt."""
    return f'<role name="{role.name}">\n{role.prompt}\n</role>'


def find_skills(worktree: Path) -> tuple[list[Skill], int]:
    """The worktree's skills in name order (at most ``MAX_SKILLS``), and how many more
    there are. Each directory and file is opened by descriptor without following a link,
    so none leads out of the worktree; one that is not a skill (no SKILL.md, or one
    without a name and description) is left out and logged."""
    skills: list[Skill] = []
    more = 0
    opened: list[int] = []
    try:
        parent = os.open(worktree, _DIRECTORY)
        opened.append(parent)
        for part in SKILLS_DIR.split("/"):
            parent = os.open(part, _DIRECTORY, dir_fd=parent)
            opened.append(parent)
        names = sorted(os.listdir(parent))
    except OSError:
        names = []
    try:
        for name in names:
            path = f"{SKILLS_DIR}/{name}/{SKILL_FILE}"
            try:
                text = _read_skill(parent, name)
                if text is None:
                    continue
                skill = parse_skill(text, path)
            except (OSError, InvalidRole) as error:
                log.info("not a skill", extra={"path": path, "error": str(error)})
                continue
            if len(skills) >= MAX_SKILLS:
                more += 1
            else:
                skills.append(skill)
    finally:
        for fd in reversed(opened):
            os.close(fd)
    return skills, more


def _read_skill(skills_fd: int, name: str) -> str | None:
    """The SKILL.md of directory ``name`` (None when ``name`` is not a directory or has
    none), read by descriptor without following links; ``OSError`` when it is a link."""
    try:
        directory = os.open(name, _DIRECTORY, dir_fd=skills_fd)
    except NotADirectoryError:
        return None
    try:
        try:
            fd = os.open(SKILL_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
        except FileNotFoundError:
            return None
        with contextlib.closing(os.fdopen(fd, "rb")) as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise OSError(f"{SKILL_FILE} is not a regular file")
            data = file.read(MAX_SKILL_CHARS * 4 + 1)
    finally:
        os.close(directory)
    return data.decode("utf-8", errors="replace")
