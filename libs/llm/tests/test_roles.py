"""Role templates from a repository's .claude/agents: what is read, what is refused."""

from __future__ import annotations

import pytest

from aether_llm.roles import InvalidRole, Role, is_role_path, model_for_role, parse_role

REVIEWER = """---
name: reviewer
description: Reviews a change for bugs and missing tests
tools: Read, Grep, Glob
model: opus
---

You review code. Point out bugs first, style last.
"""


def test_a_claude_code_subagent_template_is_read() -> None:
    assert parse_role(REVIEWER) == Role(
        name="reviewer",
        description="Reviews a change for bugs and missing tests",
        prompt="You review code. Point out bugs first, style last.",
        tools=("Read", "Grep", "Glob"),
        model="opus",
    )


def test_tools_as_a_yaml_list_and_quoted_values() -> None:
    text = (
        "---\nname: \"docs\"\ndescription: 'Writes docs'\n"
        "tools:\n  - Read\n  - Edit\n---\nBe brief.\n"
    )
    role = parse_role(text)
    assert (role.name, role.description, role.tools, role.model) == (
        "docs",
        "Writes docs",
        ("Read", "Edit"),
        None,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name: x\n", "no front matter"),
        ("---\nname: x\ndescription: d\n", "not closed"),
        ("---\nname: X Y\ndescription: d\n---\nhi\n", "'name'"),
        ("---\nname: x\n---\nhi\n", "'description' is required"),
        ("---\nname: x\ndescription: d\n---\n\n", "no prompt"),
        ("---\nname: x\ndescription: d\n!!python/object: y\n---\nhi\n", "not understood"),
        ("---\n" + "name: x\n" * 5000 + "---\n", "longer than"),
    ],
)
def test_a_template_that_does_not_fit_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidRole, match=reason):
        parse_role(text)


def test_role_paths_and_models() -> None:
    assert is_role_path(".claude/agents/reviewer.md")
    assert not is_role_path(".claude/agents/sub/reviewer.md")
    assert not is_role_path("docs/.claude/agents/reviewer.md")
    tiers = {"small": "h", "standard": "s", "complex": "o"}
    assert model_for_role("opus", "task", tiers) == "o"
    assert model_for_role("inherit", "task", tiers) == "task"
    assert model_for_role(None, "task", tiers) == "task"
    assert model_for_role("claude-x-1", "task", tiers) == "claude-x-1"


def test_a_description_over_several_lines_is_read_whole() -> None:
    folded = "---\nname: x\ndescription: >-\n  Reviews\n  changes\ntools:\n  - Read\n---\nhi\n"
    role = parse_role(folded)
    assert (role.description, role.tools) == ("Reviews changes", ("Read",))
    kept = parse_role(folded.replace(">-", "|"))
    assert kept.description == "Reviews\nchanges"
