"""Roles the repository defines in .claude/agents are offered to the planning model, and a
plan may assign them; a template that cannot be used is a warning on the plan."""

from __future__ import annotations

import subprocess

from aether_events import PlanProduced
from aether_planner.testing import ScriptedPlannerModel

from .conftest import Planner, plan_reply
from .test_service import of

REVIEWER = """---
name: reviewer
description: Reviews a change and adds the missing tests
model: opus
---
You review code.
"""


async def test_a_plan_assigns_a_repository_role_and_bad_templates_are_warnings(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    planner = fake_planner
    agents = planner.repo / ".claude" / "agents"
    agents.mkdir(parents=True)
    (agents / "reviewer.md").write_text(REVIEWER)
    (agents / "broken.md").write_text("no front matter here\n")
    subprocess.run(["git", "add", "."], cwd=planner.repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "roles"],
        cwd=planner.repo,
        check=True,
    )
    tasks = [
        {
            "id": "t1",
            "title": "Export JSON",
            "description": "add --json",
            "files": ["src/export.py"],
            "depends_on": [],
            "tier": "standard",
        },
        {
            "id": "t2",
            "title": "Review",
            "description": "review the export",
            "files": ["tests/test_export.py"],
            "depends_on": ["t1"],
            "tier": "standard",
            "role": "reviewer",
        },
        {
            "id": "t3",
            "title": "Docs",
            "description": "document it",
            "files": ["README.md"],
            "depends_on": [],
            "tier": "small",
            "role": "ghost-writer",
        },
    ]
    fake.replies.append(plan_reply(tasks))

    await planner.request(extra_files=(".claude/agents/reviewer.md", ".claude/agents/broken.md"))
    plan = of(await planner.wait_for(PlanProduced), PlanProduced)[0]

    context = fake.asked[0].context
    assert "<roles>\n- reviewer: Reviews a change and adds the missing tests\n</roles>" in context
    assert [t.role for t in plan.tasks] == [None, "reviewer", None]
    assert any("role template .claude/agents/broken.md ignored" in r for r in plan.repairs)
    assert any("dropped role 'ghost-writer'" in r for r in plan.repairs)


NOTES_SKILL = """---
name: release-notes
description: >-
  Writes the release notes
  from CHANGES.md
---
Read CHANGES.md and write docs/release.md.
"""


async def test_the_repositorys_skills_are_offered_to_the_planning_model(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    planner = fake_planner
    skills = planner.repo / ".claude" / "skills"
    (skills / "release-notes").mkdir(parents=True)
    (skills / "release-notes" / "SKILL.md").write_text(NOTES_SKILL)
    (skills / "broken").mkdir()
    (skills / "broken" / "SKILL.md").write_text("no front matter here\n")
    subprocess.run(["git", "add", "."], cwd=planner.repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "skills"],
        cwd=planner.repo,
        check=True,
    )
    task = {
        "id": "t1",
        "title": "Release notes",
        "description": "use the release-notes skill",
        "files": ["docs/release.md"],
        "depends_on": [],
        "tier": "small",
    }
    fake.replies.append(plan_reply([task]))

    await planner.request(
        extra_files=(".claude/skills/release-notes/SKILL.md", ".claude/skills/broken/SKILL.md")
    )
    await planner.wait_for(PlanProduced)

    context = fake.asked[0].context
    assert "<skills>\n- release-notes: Writes the release notes from CHANGES.md\n</skills>" in (
        context
    )
    assert "broken" not in context.split("<skills>")[1]


RELEASE_COMMAND = """---
description: Release notes for a version
argument-hint: <version>
---
Write docs/release.md: the release notes for version $1, from CHANGES.md.
"""


async def test_a_requirement_invoking_a_repository_command_is_planned_from_its_text(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    """``/release-notes v2.1``: the planning model is given the command's text with the
    arguments put in, the plan carries it (the agents are told it), and the plan's notes
    say where it came from."""
    planner = fake_planner
    commands = planner.repo / ".claude" / "commands"
    commands.mkdir(parents=True)
    (commands / "release-notes.md").write_text(RELEASE_COMMAND)
    subprocess.run(["git", "add", "."], cwd=planner.repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a command"],
        cwd=planner.repo,
        check=True,
    )
    task = {
        "id": "t1",
        "title": "Release notes",
        "description": "write them",
        "files": ["docs/release.md"],
        "depends_on": [],
        "tier": "small",
    }
    fake.replies.append(plan_reply([task]))

    await planner.request("/release-notes v2.1", extra_files=(".claude/commands/release-notes.md",))
    plan = of(await planner.wait_for(PlanProduced), PlanProduced)[0]

    expanded = "Write docs/release.md: the release notes for version v2.1, from CHANGES.md."
    assert f"<requirement>\n{expanded}\n</requirement>" in fake.asked[0].mission
    assert plan.requirement == expanded
    assert any("the repository's command /release-notes" in r for r in plan.repairs)


async def test_a_command_the_repository_lacks_is_planned_as_written_and_noted(
    fake_planner: Planner, fake: ScriptedPlannerModel
) -> None:
    task = {
        "id": "t1",
        "title": "Notes",
        "description": "write them",
        "files": ["docs/release.md"],
        "depends_on": [],
        "tier": "small",
    }
    fake.replies.append(plan_reply([task]))

    await fake_planner.request("/release-notes v2.1")
    plan = of(await fake_planner.wait_for(PlanProduced), PlanProduced)[0]

    assert "<requirement>\n/release-notes v2.1\n</requirement>" in fake.asked[0].mission
    assert plan.requirement is None
    assert any("has no command /release-notes" in r for r in plan.repairs)
