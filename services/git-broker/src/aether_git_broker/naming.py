"""Names of branches and worktrees, and git's rules for ref names.

Task ids come from an LLM, so every name built from one is checked against the rules of
``git check-ref-format`` before it reaches a repository or the file system.

The integration branch is ``<prefix>/<mission_id>``. Task branches cannot live beneath it
(``<prefix>/<mission_id>/<task>/a<n>``): git stores refs as paths, so a ref cannot be both
a branch and a directory of branches. They get their own namespace instead:
``<prefix>-tasks/<mission_id>/<task_id>/a<attempt>``.
"""

from __future__ import annotations

import os.path
import re
from dataclasses import dataclass

# Longer ids would make unwieldy branch names and risk file-name limits in worktree paths.
MAX_COMPONENT_LENGTH = 100

_FORBIDDEN_CHARACTERS = frozenset(" ~^:?*[\\")
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9._-]")


class InvalidName(ValueError):
    """A name that git (or the worktree directory) cannot take, with the reason."""


def ref_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid branch name, or ``None`` when it is.

    Follows ``git check-ref-format --branch``: no ``..``, ``@{``, control characters,
    space, ``~^:?*[\\``; no component starting with ``.`` or ending with ``.lock``; no
    leading ``-``; no empty component, trailing ``/`` or ``.``; not ``@``.
    """
    if not name:
        return "it is empty"
    if name == "@":
        return "it is '@'"
    if name.startswith("-"):
        return "it starts with '-'"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    for char in name:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return "it contains a control character"
        if char in _FORBIDDEN_CHARACTERS:
            return "it contains a space" if char == " " else f"it contains {char!r}"
    if name.endswith("."):
        return "it ends with '.'"
    for component in name.split("/"):
        if not component:
            return "it has an empty path component (a leading, trailing or double '/')"
        if component.startswith("."):
            return "a component starts with '.'"
        if component.endswith(".lock"):
            return "a component ends with '.lock'"
    return None


def check_ref_name(name: str) -> str:
    """Return ``name`` if it is a valid branch name, else raise ``InvalidName``."""
    problem = ref_name_problem(name)
    if problem is not None:
        raise InvalidName(f"{name!r} is not a valid git branch name: {problem}")
    return name


def component_problem(value: str) -> str | None:
    """Why ``value`` cannot be one component of a branch name and a directory name.

    Stricter than git: mission and task ids also name directories that people and
    agents type into shells, so they are letters, digits, ``.``, ``_`` and ``-`` only.
    """
    if "/" in value:
        return "it contains '/'"
    if len(value) > MAX_COMPONENT_LENGTH:
        return f"it is longer than {MAX_COMPONENT_LENGTH} characters"
    problem = ref_name_problem(value)
    if problem is not None:
        return problem
    odd = _NOT_PLAIN.search(value)
    if odd is not None:
        return f"it contains {odd.group()!r} (only letters, digits, '.', '_' and '-' are allowed)"
    return None


@dataclass(frozen=True)
class Naming:
    """Where a mission's branches and worktrees go."""

    branch_prefix: str
    worktrees_dir: str

    def __post_init__(self) -> None:
        check_ref_name(self.branch_prefix)
        if not os.path.isabs(self.worktrees_dir):
            raise InvalidName(f"worktrees directory {self.worktrees_dir!r} is not absolute")

    def integration_branch(self, mission_id: str) -> str:
        return check_ref_name(f"{self.branch_prefix}/{mission_id}")

    def task_branch(self, mission_id: str, task_id: str, attempt: int) -> str:
        return check_ref_name(f"{self.branch_prefix}-tasks/{mission_id}/{task_id}/a{attempt}")

    def task_branches(self, mission_id: str) -> str:
        """The namespace of a mission's task branches, ending in '/'."""
        return check_ref_name(f"{self.branch_prefix}-tasks/{mission_id}") + "/"

    def mission_worktrees(self, mission_id: str) -> str:
        return os.path.join(self.worktrees_dir, mission_id)

    def verify_path(self, mission_id: str, task_id: str, attempt: int) -> str:
        """A scratch worktree for verifying one merge; ``.verify`` names no mission."""
        return os.path.join(self.worktrees_dir, ".verify", f"{mission_id}-{task_id}-a{attempt}")

    def worktree_path(self, mission_id: str, task_id: str, attempt: int) -> str:
        # The digits after the last "-a" are the attempt, so distinct (task, attempt)
        # pairs never share a directory.
        return os.path.join(self.mission_worktrees(mission_id), f"{task_id}-a{attempt}")
