"""A repository's skills as an agent's prompt names them: the front matter's name and
description, checked as Claude Code checks them."""

from __future__ import annotations

import pytest

from aether_llm.roles import InvalidRole
from aether_llm.skills import MAX_DESCRIPTION_CHARS, Skill, parse_skill, skills_section

PATH = ".claude/skills/release-notes/SKILL.md"


def test_a_skill_is_its_name_description_and_file() -> None:
    text = """---
name: release-notes
description: >-
  Writes the release notes
allowed-tools: Read, Write
---
Read CHANGES.md, then write docs/release.md.
"""
    assert parse_skill(text, PATH) == Skill("release-notes", "Writes the release notes", PATH)
    # A plain value continued on indented lines, and one with its spaces doubled.
    plain = text.replace(">-\n  Writes the release notes", "Writes the\n  release\tnotes")
    assert parse_skill(plain, PATH) == Skill("release-notes", "Writes the release notes", PATH)
    kept = text.replace(">-", "|")
    assert parse_skill(kept, PATH).description == "Writes the release notes"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("no front matter\n", "no front matter"),
        ("---\nname: Release Notes\ndescription: d\n---\nbody\n", "'name'"),
        ("---\nname: notes\n---\nbody\n", "'description' is required"),
        ("---\nname: notes\ndescription: d\n---\n", "no instructions"),
        (
            f"---\nname: notes\ndescription: {'x' * (MAX_DESCRIPTION_CHARS + 1)}\n---\nb\n",
            "longer than",
        ),
    ],
    ids=["no front matter", "bad name", "no description", "no body", "long description"],
)
def test_what_is_not_a_skill_says_why(text: str, why: str) -> None:
    with pytest.raises(InvalidRole, match=why):
        parse_skill(text, PATH)


def test_the_prompts_section_names_each_skill_and_what_was_left_out() -> None:
    assert skills_section([]) == ""
    section = skills_section([Skill("notes", "Writes notes", PATH)], left_out=2)
    assert section.startswith("<skills>\n") and section.endswith("\n</skills>")
    assert f"- notes ({PATH}): Writes notes" in section
    assert "… and 2 more under .claude/skills" in section
