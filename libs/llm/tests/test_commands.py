"""A mission's requirement that invokes a repository command: which command, and the
requirement its text makes with the arguments put in."""

from __future__ import annotations

import pytest

from aether_llm.commands import Invocation, expand, invocation
from aether_llm.roles import InvalidRole


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("/release-notes", Invocation("release-notes", "")),
        ("  /release-notes v2.1 --draft\n", Invocation("release-notes", "v2.1 --draft")),
        (
            "/frontend:component Button\nwith two sizes",
            Invocation("frontend:component", "Button\nwith two sizes"),
        ),
        ("Fix /etc/hosts parsing", None),
        ("/Release", None),
        ("/../secrets", None),
        ("/a:b:c:d:e", None),
    ],
)
def test_a_requirement_invokes_a_command_only_when_it_starts_with_one(
    requirement: str, expected: Invocation | None
) -> None:
    assert invocation(requirement) == expected


def test_a_commands_file_is_named_after_it() -> None:
    assert Invocation("release-notes", "").path == ".claude/commands/release-notes.md"
    assert Invocation("frontend:component", "").path == ".claude/commands/frontend/component.md"


def test_the_arguments_are_put_in_where_the_command_says() -> None:
    text = """---
description: Release notes for a version
argument-hint: <version> <audience>
allowed-tools: Bash(git log:*)
---
Write the release notes for $1 for "$2" readers.
All arguments: $ARGUMENTS.
"""
    called = Invocation("release-notes", 'v2.1 "power users" $1')
    expanded = expand(text, called)
    assert expanded.text == (
        'Write the release notes for v2.1 for "power users" readers.\n'
        'All arguments: v2.1 "power users" $1.'
    )
    assert expanded.notes == [
        "the requirement is the repository's command /release-notes "
        "(.claude/commands/release-notes.md)"
    ]


def test_a_command_that_names_no_arguments_gets_them_on_a_line_of_their_own() -> None:
    expanded = expand("Tidy the imports.\n", Invocation("tidy", "src/app.py"))
    assert expanded.text == "Tidy the imports.\n\nARGUMENTS: src/app.py"
    assert expand("Tidy the imports.\n", Invocation("tidy", "")).text == "Tidy the imports."


def test_shell_lines_are_not_run_and_the_notes_say_so() -> None:
    text = "Current status: !`git status`\nFix what it shows.\n"
    expanded = expand(text, Invocation("fix", ""))
    assert "!`git status`" in expanded.text
    assert any("shell lines" in note and "not run" in note for note in expanded.notes)


@pytest.mark.parametrize(
    "text",
    ["", "---\ndescription: d\n---\n", "x" * 50_001, "---\nbroken"],
    ids=["empty", "front matter only", "too long", "front matter not closed"],
)
def test_a_file_that_cannot_be_a_command_says_why(text: str) -> None:
    with pytest.raises(InvalidRole):
        expand(text, Invocation("x", ""))
