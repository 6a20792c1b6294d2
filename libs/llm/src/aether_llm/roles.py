"""Agent roles a repository defines: Claude Code's subagent templates in
``.claude/agents/*.md``, a YAML front matter (``name``, ``description``, optional
``tools`` and ``model``) above the role's system prompt.

Only that flat subset of YAML is read (``key: value``, a list inline as ``a, b`` or
``[a, b]`` or as ``- item`` lines); the text is the repository's, so hostile: a template
that does not fit is an ``InvalidRole`` with the reason, never an exception of the parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

ROLES_DIR = ".claude/agents"
MAX_ROLE_CHARS = 20_000
MODEL_ALIASES = {"haiku": "small", "sonnet": "standard", "opus": "complex"}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_KEY = re.compile(r"([A-Za-z_][\w-]*)\s*:\s*(.*)")
_BLOCKS = frozenset({">", ">-", ">+", "|", "|-", "|+"})


class InvalidRole(ValueError):
    """A role template that cannot be used, and why."""


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    prompt: str
    tools: tuple[str, ...] | None = None
    model: str | None = None


def is_role_path(path: str) -> bool:
    """Whether a repository path is a role template (directly in ``.claude/agents``)."""
    pure = PurePosixPath(path)
    return str(pure.parent) == ROLES_DIR and pure.suffix == ".md"


def front_matter(text: str) -> tuple[dict[str, str | list[str]], str]:
    """The ``key: value`` fields (and ``- item`` lists) between a file's two ``---``
    lines, and the text below them; ``InvalidRole`` when there are none or one is not
    understood (a small subset of YAML, the one Claude Code's templates use)."""
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise InvalidRole("no front matter (the file must start with a '---' line)")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise InvalidRole("the front matter is not closed with a '---' line") from None
    fields: dict[str, str | list[str]] = {}
    current: str | None = None
    # A value written over several lines: a block (``>`` folded, ``|`` kept) or a plain
    # value whose indented lines continue it.
    block: str | None = None
    for line in lines[1:end]:
        stripped = line.strip()
        if current is not None and line[:1].isspace() and stripped and block is not None:
            held = fields.get(current, "")
            if isinstance(held, str):
                joint = "\n" if block.startswith("|") else " "
                fields[current] = f"{held}{joint}{stripped}" if held else stripped
                continue
        if not stripped or stripped.startswith("#"):
            continue
        block = None
        if stripped.startswith("- ") and current is not None:
            value = fields.setdefault(current, [])
            if not isinstance(value, list):
                raise InvalidRole(f"{current!r} mixes a value and a list")
            value.append(_unquote(stripped[2:]))
            continue
        match = _KEY.fullmatch(stripped)
        if match is None or line[0].isspace():
            raise InvalidRole(f"front matter line not understood: {stripped[:60]!r}")
        current = match.group(1)
        raw = match.group(2).strip()
        if raw in _BLOCKS:
            fields[current], block = "", raw
        elif raw:
            fields[current], block = _unquote(raw), ">"
    return fields, "\n".join(lines[end + 1 :]).strip()


def named(fields: dict[str, str | list[str]]) -> tuple[str, str]:
    """The ``name`` and ``description`` fields, or ``InvalidRole``."""
    name = fields.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRole("'name' must be lowercase letters, digits and '-'")
    description = fields.get("description")
    if not isinstance(description, str) or not description:
        raise InvalidRole("'description' is required")
    return name, description


def parse_role(text: str) -> Role:
    """The role a template defines, or ``InvalidRole``."""
    if len(text) > MAX_ROLE_CHARS:
        raise InvalidRole(f"longer than {MAX_ROLE_CHARS} characters")
    fields, prompt = front_matter(text)
    name, description = named(fields)
    if not prompt:
        raise InvalidRole("the role has no prompt below its front matter")
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRole("'model' must be one value")
    return Role(name, description, prompt, _tools(fields.get("tools")), model or None)


def model_for_role(role_model: str | None, task_model: str, tiers: dict[str, str]) -> str:
    """The model a role runs on: its alias's tier model (``haiku``, ``sonnet``, ``opus``),
    its own model id, or the task's (no model, or ``inherit``)."""
    if role_model is None or role_model == "inherit":
        return task_model
    tier = MODEL_ALIASES.get(role_model)
    if tier is not None:
        return tiers.get(tier, task_model)
    return role_model


def _tools(raw: str | list[str] | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.strip()
        if raw.startswith("[") and raw.endswith("]"):
            raw = raw[1:-1]
        raw = [_unquote(part) for part in raw.split(",")]
    return tuple(part.strip() for part in raw if part.strip())


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
