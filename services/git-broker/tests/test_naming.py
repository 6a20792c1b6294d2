from __future__ import annotations

import pytest

from aether_git_broker.naming import (
    InvalidName,
    Naming,
    check_ref_name,
    component_problem,
    ref_name_problem,
)


@pytest.mark.parametrize(
    "name",
    ["main", "feature/login", "aether/m-1234", "v1.2", "task_3", "a-b.c", "x@y", "ünïcode"],
)
def test_valid_branch_names_pass(name: str) -> None:
    assert ref_name_problem(name) is None
    assert check_ref_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a..b", "'..'"),
        ("has space", "space"),
        ("tilde~1", "'~'"),
        ("caret^", "'^'"),
        ("co:lon", "':'"),
        ("what?", "'?'"),
        ("star*", "'*'"),
        ("br[acket", "'['"),
        ("back\\slash", "'\\\\'"),
        ("-leading-dash", "starts with '-'"),
        ("branch.lock", ".lock"),
        ("dir/name.lock/x", ".lock"),
        (".hidden", "starts with '.'"),
        ("dir/.hidden", "starts with '.'"),
        ("trailing.", "ends with '.'"),
        ("trailing/", "empty path component"),
        ("/leading", "empty path component"),
        ("double//slash", "empty path component"),
        ("at@{brace", "'@{'"),
        ("@", "'@'"),
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
    ],
)
def test_invalid_branch_names_are_rejected_with_the_reason(name: str, reason: str) -> None:
    problem = ref_name_problem(name)
    assert problem is not None
    assert reason in problem
    with pytest.raises(InvalidName, match="not a valid git branch name"):
        check_ref_name(name)


def test_a_task_id_must_be_a_single_short_component() -> None:
    assert component_problem("add-login") is None
    assert component_problem("a/b") == "it contains '/'"
    problem = component_problem("x" * 101)
    assert problem is not None
    assert "longer than" in problem
    for shell_bait in ("$(id)", "`id`", "a;b", "a|b", "a'b", "ünï"):
        problem = component_problem(shell_bait)
        assert problem is not None and "only letters" in problem


def test_names_of_branches_and_worktrees() -> None:
    naming = Naming(branch_prefix="aether", worktrees_dir="/var/wt")
    assert naming.integration_branch("m-1") == "aether/m-1"
    assert naming.task_branch("m-1", "t1", 2) == "aether-tasks/m-1/t1/a2"
    assert naming.worktree_path("m-1", "t1", 2) == "/var/wt/m-1/t1-a2"
    assert naming.mission_worktrees("m-1") == "/var/wt/m-1"


def test_task_branches_never_nest_under_the_integration_branch() -> None:
    # git cannot hold refs/heads/p/m and refs/heads/p/m/... at once.
    naming = Naming(branch_prefix="p", worktrees_dir="/wt")
    integration = naming.integration_branch("m")
    assert not naming.task_branch("m", "t", 1).startswith(integration + "/")


def test_a_prefix_git_refuses_is_rejected_at_start_up() -> None:
    with pytest.raises(InvalidName):
        Naming(branch_prefix="bad prefix", worktrees_dir="/wt")
    with pytest.raises(InvalidName, match="not absolute"):
        Naming(branch_prefix="aether", worktrees_dir="relative/dir")
