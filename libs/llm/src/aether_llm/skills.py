"""A repository's skills: ``.claude/skills/<name>/SKILL.md``, instructions for a kind of
work, in Claude Code's format (front matter with ``name`` and ``description``, the
instructions below it).

An agent is shown each skill's name and description, and where its file is; it reads the
file when its task calls for the skill (as Claude Code loads a skill's body only when it
uses it). What a skill's directory holds besides (scripts, references) is the
repository's like any other file: read with the file tools, run only through
``run_command`` under its policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from aether_llm.roles import InvalidRole, front_matter, named

SKILLS_DIR = ".claude/skills"
SKILL_FILE = "SKILL.md"
# What is read of a SKILL.md for its front matter, and what a description may hold.
MAX_SKILL_CHARS = 100_000
MAX_DESCRIPTION_CHARS = 1024
# How many skills an agent is shown (by name, in order): the rest are named as left out.
MAX_SKILLS = 50


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    # The SKILL.md, relative to the repository's root.
    path: str


def is_skill_path(path: str) -> bool:
    """Whether a repository path is a skill's file (``.claude/skills/<name>/SKILL.md``)."""
    pure = PurePosixPath(path)
    return str(pure.parent.parent) == SKILLS_DIR and pure.name == SKILL_FILE


def parse_skill(text: str, path: str) -> Skill:
    """The skill a SKILL.md at ``path`` defines, or ``InvalidRole`` saying why not."""
    if len(text) > MAX_SKILL_CHARS:
        raise InvalidRole(f"longer than {MAX_SKILL_CHARS} characters")
    fields, body = front_matter(text)
    name, description = named(fields)
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRole(f"'description' is longer than {MAX_DESCRIPTION_CHARS} characters")
    if not body:
        raise InvalidRole("the skill has no instructions below its front matter")
    return Skill(name, " ".join(description.split()), path)


def skills_section(skills: list[Skill], left_out: int = 0) -> str:
    """The part of an agent's prompt that names the skills ("" for none)."""
    if not skills:
        return ""
    lines = [
        "The repository defines skills: instructions for kinds of work. When the task "
        "calls for one, read its file first and follow it.",
        *(f"- {skill.name} ({skill.path}): {skill.description}" for skill in skills),
    ]
    if left_out:
        lines.append(f"- … and {left_out} more under {SKILLS_DIR}")
    return "<skills>\n" + "\n".join(lines) + "\n</skills>"
