"""Finding the role a task names among the worktree's ``.claude/agents`` templates."""

from __future__ import annotations

from pathlib import Path

from aether_llm.roles import ROLES_DIR, InvalidRole, Role, parse_role


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


def role_prompt(role: Role) -> str:
    """The role's instructions as they are added to an agent's system prompt."""
    return f'<role name="{role.name}">\n{role.prompt}\n</role>'
