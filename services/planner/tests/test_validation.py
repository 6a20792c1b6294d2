"""Plan validation and repair of what models really produce."""

from __future__ import annotations

import pytest

from aether_planner.domain import InvalidPlan, PlanSubmission, SubmittedTask, validate_plan


def plan(*tasks: SubmittedTask) -> PlanSubmission:
    return PlanSubmission(tasks=list(tasks), rationale="r")


def test_numeric_and_title_dependencies_are_repaired_and_recorded() -> None:
    tasks, repairs = validate_plan(
        plan(
            SubmittedTask(id="t1", title="Parser"),
            SubmittedTask(id="t2", title="Printer"),
            SubmittedTask(id="t3", title="CLI", depends_on=[1, "printer", "ghost"]),
        ),
        max_tasks=10,
    )
    assert tasks[2].depends_on == ["t1", "t2"]
    assert any("ghost" in r for r in repairs)
    assert any("'printer'" in r for r in repairs)


def test_cycle_is_rejected_with_its_path() -> None:
    with pytest.raises(InvalidPlan) as raised:
        validate_plan(
            plan(
                SubmittedTask(id="a", title="A", depends_on=["b"]),
                SubmittedTask(id="b", title="B", depends_on=["a"]),
            ),
            max_tasks=10,
        )
    assert "dependency cycle: a -> b -> a" in raised.value.errors


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "src/../../x", ".git/config"])
def test_files_outside_the_repository_are_rejected(path: str) -> None:
    with pytest.raises(InvalidPlan, match="outside the repository"):
        validate_plan(plan(SubmittedTask(id="a", title="A", files=[path])), max_tasks=10)


def test_duplicate_ids_empty_tasks_and_too_many_tasks_are_all_reported() -> None:
    with pytest.raises(InvalidPlan) as raised:
        validate_plan(
            plan(
                SubmittedTask(id="a", title="A"),
                SubmittedTask(id="a", title="again"),
                SubmittedTask(id="c"),
            ),
            max_tasks=2,
        )
    errors = " | ".join(raised.value.errors)
    assert "3 tasks" in errors and "duplicate task id 'a'" in errors and "'c' is empty" in errors


def test_empty_plan_is_invalid() -> None:
    with pytest.raises(InvalidPlan, match="no tasks"):
        validate_plan(plan(), max_tasks=5)


def test_paths_are_normalised_and_unknown_tier_defaults() -> None:
    tasks, repairs = validate_plan(
        plan(SubmittedTask(id=1, title="A", files=["./src//a.py", "src/a.py"], tier="huge")),
        max_tasks=5,
    )
    assert tasks[0].id == "1" and tasks[0].files == ["src/a.py"] and tasks[0].tier == "standard"
    assert repairs == ["task '1': unknown tier 'huge' read as 'standard'"]


def test_ids_that_cannot_name_a_branch_are_renamed_and_their_dependents_follow() -> None:
    tasks, repairs = validate_plan(
        plan(
            SubmittedTask(id="Parse input!", title="Parse"),
            SubmittedTask(id="cli/wire", title="CLI", depends_on=["Parse input!"]),
            SubmittedTask(id="..", title="Dots"),
        ),
        max_tasks=10,
    )
    assert [t.id for t in tasks] == ["Parse-input", "cli-wire", "t3"]
    assert tasks[1].depends_on == ["Parse-input"]
    assert "task id 'Parse input!' became 'Parse-input'" in repairs
    assert "task 3 had no usable id; named it t3" in repairs
