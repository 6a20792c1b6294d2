"""A repository's slash commands: ``.claude/commands/<name>.md`` (``a/b.md`` is ``/a:b``),
prompts in Claude Code's format that a mission's requirement may invoke.

A requirement ``/release-notes v2.1`` is the command's text with its arguments put in:
``$ARGUMENTS`` stands for all of them, ``$1`` to ``$9`` for each (split as a shell
would, quotes kept together); a command that names neither gets them appended on a line
of their own, as Claude Code does. Its front matter (``description``, ``argument-hint``,
``allowed-tools``, ``model``) is dropped. The lines Claude Code would run in a shell
before sending the prompt (``!`…```) are not run: what a repository holds never runs
outside the sandbox, and they stay in the text as written, which the plan's notes say.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from aether_llm.roles import InvalidRole, front_matter

COMMANDS_DIR = ".claude/commands"
MAX_COMMAND_CHARS = 50_000
_INVOCATION = re.compile(
    r"/([a-z0-9][a-z0-9_-]{0,63}(?::[a-z0-9][a-z0-9_-]{0,63}){0,3})(?:\s+(.*))?", re.DOTALL
)
_SHELL = re.compile(r"!`[^`\n]+`")
_PLACEHOLDER = re.compile(r"\$(ARGUMENTS|[1-9])")


@dataclass(frozen=True)
class Invocation:
    name: str
    arguments: str

    @property
    def path(self) -> str:
        """The command's file, relative to the repository's root."""
        return f"{COMMANDS_DIR}/{self.name.replace(':', '/')}.md"


@dataclass(frozen=True)
class Expanded:
    """The requirement a command makes, and what the plan's notes say about it."""

    text: str
    notes: list[str]


def invocation(requirement: str) -> Invocation | None:
    """The command a requirement invokes (it starts with ``/name``), or ``None``."""
    match = _INVOCATION.fullmatch(requirement.strip())
    if match is None:
        return None
    return Invocation(match.group(1), (match.group(2) or "").strip())


def expand(text: str, called: Invocation) -> Expanded:
    """The requirement ``called`` makes of the command file's ``text``; ``InvalidRole``
    when the file cannot be one (too long, broken front matter, nothing below it)."""
    if len(text) > MAX_COMMAND_CHARS:
        raise InvalidRole(f"longer than {MAX_COMMAND_CHARS} characters")
    body = text.strip()
    if body.startswith("---"):
        _, body = front_matter(text)
    if not body:
        raise InvalidRole("the command has no text")
    notes = [f"the requirement is the repository's command /{called.name} ({called.path})"]
    try:
        positional = shlex.split(called.arguments)
    except ValueError:
        positional = called.arguments.split()

    def filled(match: re.Match[str]) -> str:
        which = match.group(1)
        if which == "ARGUMENTS":
            return called.arguments
        index = int(which) - 1
        return positional[index] if index < len(positional) else ""

    # One pass: arguments that hold ``$1`` or ``$ARGUMENTS`` stay as they were given.
    named = _PLACEHOLDER.search(body) is not None
    expanded = _PLACEHOLDER.sub(filled, body)
    if called.arguments and not named:
        expanded += f"\n\nARGUMENTS: {called.arguments}"
    if _SHELL.search(body):
        notes.append(
            f"/{called.name}'s shell lines (!`…`) were not run; they stay in the text as written"
        )
    return Expanded(expanded, notes)
