"""The command line's pure parts: the watch board, argument parsing, token lookup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aether.cli import _attach_secrets, _parser
from aether.client import SseEvent, parse_sse, whole_messages
from aether.credentials import load_or_create_admin_token, new_secret, resolve_token
from aether.gitview import create_sample_repository
from aether.locate import find_target, remember_home
from aether.repocheck import RepositoryProblem, check_repository
from aether.watch import Board, render

META = {
    "event_id": "e",
    "mission_id": "m-1",
    "occurred_at": "2026-01-01T00:00:00Z",
    "correlation_id": "c",
}
PREPARED = {
    "repository_path": "/r",
    "base_branch": "main",
    "base_sha": "0" * 40,
    "integration_branch": "aether/m-1",
}
COMPLETED = {"final_sha": "1" * 40, "integration_branch": "aether/m-1", "tasks_merged": 2}


def ev(seq: int | None, kind: str, **data: object) -> SseEvent:
    """An SSE message as the gateway sends it: the whole event, tagged."""
    return SseEvent(None if seq is None else str(seq), kind, {"type": kind, **META, **data})


PLAN = {
    "version": 1,
    "model": "m",
    "offline": True,
    "tasks": [
        {"id": "a", "title": "Write a", "depends_on": []},
        {"id": "b", "title": "Write b", "depends_on": ["a"]},
    ],
}


def test_the_board_follows_tasks_costs_and_activity():
    board = Board("m-1")
    for event in [
        ev(1, "mission_requested", budget_usd=1.0),
        ev(2, "repository_prepared", **PREPARED),
        ev(3, "plan_produced", **PLAN),
        ev(4, "plan_approved", version=1),
        ev(5, "task_ready", task={"id": "a", "title": "Write a"}, attempt=1, model="x", wave=1),
        ev(6, "agent_started", task_id="a", attempt=1, runner_id="r-1", model="x"),
        ev(None, "agent_progress", task_id="a", attempt=1, turns=2, last_action="write a.py"),
        ev(7, "usage_recorded", task_id="a", attempt=1, usage={"cost_usd": 0.25}),
        ev(8, "usage_recorded", usage={"cost_usd": 0.5}),
    ]:
        board.apply(event)
    assert board.status == "running"
    assert board.last_id == "8"
    assert board.cost == 0.75
    a, b = board.tasks["a"], board.tasks["b"]
    assert (a.status, a.wave, a.cost, a.activity) == ("running", 1, 0.25, "turn 2: write a.py")
    assert (b.status, b.depends_on) == ("pending", ["a"])
    text = render(board)
    assert "m-1  running  plan v1  cost $0.7500 of $1.00  [OFFLINE model]" in text
    assert "Write b (after a)" in text
    assert "turn 2: write a.py" in text

    board.apply(ev(9, "mission_paused"))
    assert board.status == "paused"
    board.apply(ev(10, "mission_resumed"))
    assert board.status == "running"
    # Late news of an earlier attempt does not move the task back.
    board.apply(ev(11, "task_ready", task={"id": "a", "title": "Write a"}, attempt=2, model="x"))
    board.apply(ev(12, "agent_failed", task_id="a", attempt=1, reason="old"))
    assert (board.tasks["a"].status, board.tasks["a"].attempt) == ("ready", 2)
    board.apply(ev(13, "mission_completed", **COMPLETED))
    assert board.finished and board.status == "completed"


def test_the_board_shows_a_plan_awaiting_approval_and_a_paused_mission_as_paused():
    board = Board("m-1")
    for event in [
        ev(1, "mission_requested", repository="/r", requirement="x"),
        ev(2, "repository_prepared", **PREPARED),
        ev(3, "plan_clarification_requested", questions=["which file?"]),
    ]:
        board.apply(event)
    assert board.status == "awaiting_input"
    board.apply(ev(4, "mission_message_posted", text="a.py"))
    assert board.status == "preparing"  # the planner plans again
    board.apply(ev(5, "plan_produced", **PLAN))
    assert board.status == "awaiting_approval"
    assert "m-1  awaiting approval  plan v1" in render(board)
    assert "» awaiting approval — approve with `aether mission approve m-1`" in render(board)
    board.apply(ev(6, "mission_paused"))
    # An approval arriving while paused (the scheduler's automatic one) does not unpause.
    board.apply(ev(7, "plan_approved", version=1, automatic=True))
    assert board.status == "paused"
    board.apply(ev(8, "mission_resumed"))
    assert board.status == "running"
    assert "approve with" not in render(board)
    board.apply(ev(81, "task_escalated", task_id="a", attempt=3, reason="failed 3 times"))
    assert "> task a is escalated: `aether mission retry m-1 a`" in render(board)
    # A finished mission stays finished whatever arrives late.
    board.apply(ev(9, "mission_cancelled"))
    board.apply(ev(10, "mission_completed", **COMPLETED))
    assert board.finished and board.status == "cancelled"


def test_the_board_marks_a_cost_with_an_unknown_part_as_a_lower_bound():
    board = Board("m-1")
    board.apply(ev(1, "usage_recorded", usage={"cost_usd": 0.5}))
    board.apply(ev(2, "usage_recorded", usage={"cost_usd": None, "input_tokens": 9}))
    assert (board.cost, board.cost_complete) == (0.5, False)
    assert "cost $0.5000+" in render(board)


def test_sse_parsing_keeps_ids_and_skips_comments():
    lines = iter(
        [": keep-alive", "", "id: 7", "event: x", 'data: {"a": 1}', "", "event: y", "data: {}", ""]
    )
    parsed = list(parse_sse(lines))
    assert [(e.id, e.event, e.data) for e in parsed] == [("7", "x", {"a": 1}), (None, "y", {})]


def test_events_a_result_carried_are_given_only_with_the_result():
    def sse(event_id, event):
        return SseEvent(event_id, event, {})

    stream = [
        sse("4", "workspace_ready"),
        sse(None, "agent_started"),
        sse(None, "transcript_recorded"),
        sse(None, "usage_recorded"),
        sse("5", "agent_completed"),
    ]
    given = [(e.id, e.event) for e in whole_messages(iter(stream))]
    # Telemetry as it comes; the start and usage right before their result.
    assert given == [
        ("4", "workspace_ready"),
        (None, "transcript_recorded"),
        (None, "agent_started"),
        (None, "usage_recorded"),
        ("5", "agent_completed"),
    ]
    # Cut before the result: what it carried is not given (the resumed stream sends it
    # again, with the result).
    cut = [(e.id, e.event) for e in whole_messages(iter(stream[:4]))]
    assert cut == [("4", "workspace_ready"), (None, "transcript_recorded")]


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "mission", "list"],
        ["mission", "list", "--json"],
        ["--url", "http://x", "mission", "list", "--json"],
    ],
)
def test_json_and_url_may_come_before_or_after_the_command(argv):
    args = _parser().parse_args(argv)
    assert args.json is True
    assert args.url in (None, "http://x")


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_token_beginning_with_a_dash_is_taken_as_the_tokens_value(where):
    """One ``secrets.token_urlsafe`` in 64 begins with "-", which argparse takes for an
    option ("argument --token: expected one argument")."""
    token = "-Xy_secret"
    command = ["mission", "show", "m-1"]
    argv = ["--token", token, *command] if where == "before" else [*command, "--token", token]
    args = _parser().parse_args(_attach_secrets(argv))
    assert args.token == token
    assert _attach_secrets(["mission", "show", "--", "--token", "x"])[-2:] == ["--token", "x"]


def test_generated_secrets_never_begin_with_a_dash():
    secrets = [new_secret() for _ in range(3000)]
    assert not [s for s in secrets if s.startswith("-")]
    assert len(set(secrets)) == len(secrets)
    assert all(len(s) == 43 for s in secrets)


def test_options_after_the_command_do_not_reset_those_before():
    args = _parser().parse_args(["--url", "http://gw", "--token", "t", "mission", "show", "m-1"])
    assert (args.url, args.token, args.json) == ("http://gw", "t", False)


def test_token_lookup_order(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("AETHER_TOKEN", raising=False)
    assert resolve_token(None, tmp_path) is None
    made = load_or_create_admin_token(tmp_path)
    assert load_or_create_admin_token(tmp_path) == made
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert resolve_token(None, tmp_path) == made
    monkeypatch.setenv("AETHER_TOKEN", "from-env")
    assert resolve_token(None, tmp_path) == "from-env"
    assert resolve_token("explicit", tmp_path) == "explicit"


def test_a_completed_missions_cost_with_an_unknown_part_is_told_as_a_lower_bound():
    from aether.render import describe

    usage = {"cost_usd": 1.25, "cost_complete": False}
    line = describe(ev(5, "mission_completed", **COMPLETED, usage=usage))
    assert "cost $1.2500+" in line
    assert "cost unknown" in describe(ev(6, "mission_completed", **COMPLETED, usage={}))


def test_the_board_says_what_to_do_when_the_mission_waits_and_uses_the_width():
    board = Board("m-2")
    long_title = "Write the greeting module with a greet function and its documentation"
    plan = {**PLAN, "tasks": [{"id": "a", "title": long_title, "depends_on": []}]}
    board.apply(ev(1, "mission_requested", occurred_at="2026-01-01T10:00:00Z"))
    board.apply(ev(2, "plan_produced", **plan))
    text = render(board, 160)
    assert "» awaiting approval — approve with `aether mission approve m-2`" in text
    assert long_title in text  # a wide terminal shows the whole title
    assert long_title not in render(board, 80)
    board.apply(ev(3, "plan_approved", version=1))
    board.apply(ev(4, "mission_paused"))
    assert "» paused — resume with `aether mission resume m-2`" in render(board, 160)
    board.apply(ev(5, "mission_resumed"))
    board.apply(
        ev(
            None,
            "agent_progress",
            task_id="a",
            attempt=1,
            turns=3,
            last_action="model asks: write_file src/greeting.py",
            files_changed=["src/greeting.py", "docs/x.md"],
        )
    )
    board.apply(
        ev(6, "usage_recorded", usage={"input_tokens": 100, "cache_read_input_tokens": 300})
    )
    later = datetime(2026, 1, 1, 10, 2, 5, tzinfo=UTC)
    text = render(board, 200, now=later)
    assert "turn 3: model asks: write_file src/greeting.py; changed docs/x.md (+1)" in text
    assert "elapsed 2m05s  merged 0/1  tokens in 400 (75% from cache) out 0" in text
    assert "»" not in text  # running: nothing for the watcher to do
    assert "! cannot connect" in render(board, 120, notice="cannot connect to the gateway")


def _repository(path: Path, branch: str) -> str:
    from dulwich.refs import Ref
    from dulwich.repo import Repo

    sha = create_sample_repository(path)
    with Repo(str(path)) as repo:
        if branch != "main":
            repo.refs[Ref(f"refs/heads/{branch}".encode())] = sha.encode()
            repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(f"refs/heads/{branch}".encode()))
            del repo.refs[Ref(b"refs/heads/main")]
    return sha


def test_a_repository_is_checked_locally_before_a_mission(tmp_path: Path):
    repo = tmp_path / "r"
    sha = _repository(repo, "master")
    checked = check_repository(repo)
    assert (checked.base, checked.head, checked.uncommitted) == ("master", sha, [])
    (repo / "README.md").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    assert check_repository(repo).uncommitted == ["? new.txt", "M README.md"]
    with pytest.raises(RepositoryProblem, match="has no branch 'main' \\(it has: master\\)"):
        check_repository(repo, "main")
    with pytest.raises(RepositoryProblem, match="does not exist"):
        check_repository(tmp_path / "missing")
    with pytest.raises(RepositoryProblem, match="is not a git repository"):
        check_repository(tmp_path)


def test_the_cli_finds_the_url_and_token_of_its_home_from_anywhere(tmp_path: Path, monkeypatch):
    for name in ("AETHER_HOME", "AETHER_URL", "AETHER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    home = tmp_path / "somewhere" / "home"
    home.mkdir(parents=True)
    (home / "stack.json").write_text('{"gateway_url": "http://127.0.0.1:9123"}')
    token = load_or_create_admin_token(home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    given = find_target(None, None, home)
    assert (given.url, given.token, given.token_source) == (
        "http://127.0.0.1:9123",
        token,
        f"{home.resolve() / 'admin-token'} (--home)",
    )
    nothing = find_target(None, None, None)
    assert (nothing.url, nothing.token) == ("http://127.0.0.1:8100", None)
    assert "no --token, $AETHER_TOKEN or" in nothing.token_source
    remember_home(home)  # what `aether up` does
    found = find_target(None, None, None)
    assert (found.url, found.token) == ("http://127.0.0.1:9123", token)
    monkeypatch.setenv("AETHER_URL", "http://gw:1")
    assert find_target(None, None, None).url == "http://gw:1"
    explicit = find_target("http://x:2", "t", None)
    assert (explicit.url, explicit.url_source, explicit.token, explicit.token_source) == (
        "http://x:2",
        "--url",
        "t",
        "--token",
    )


def test_the_stacks_admin_token_goes_only_to_the_stacks_own_gateway(tmp_path: Path, monkeypatch):
    """``--url`` or ``$AETHER_URL`` naming another gateway must not be sent the local
    stack's admin token: whoever answers there would hold the stack's admin rights."""
    for name in ("AETHER_HOME", "AETHER_URL", "AETHER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "stack.json").write_text('{"gateway_url": "http://127.0.0.1:9123"}')
    token = load_or_create_admin_token(home)

    for own in ("http://127.0.0.1:9123", "http://localhost:9123/", None):
        assert find_target(own, None, home).token == token, own
    for other in ("http://evil.test:9123", "http://127.0.0.1:9124", "https://127.0.0.1:9123"):
        refused = find_target(other, None, home)
        assert refused.token is None, other
        assert "admin token of the gateway at http://127.0.0.1:9123" in refused.token_source
    monkeypatch.setenv("AETHER_URL", "http://evil.test:9123")
    assert find_target(None, None, home).token is None
    # A token the user names goes wherever they send it.
    assert find_target("http://evil.test:9123", "t", home).token == "t"
    (home / "stack.json").unlink()
    assert find_target("http://127.0.0.1:9123", None, home).token is None


def test_show_prints_the_graph_each_tasks_files_tier_and_criteria_and_the_plan_change():
    from aether.render import mission_detail

    v1 = [
        {"id": "t1", "title": "Add greet", "files": ["src/g.py"], "depends_on": []},
        {"id": "t2", "title": "Add bye", "files": ["src/b.py"], "depends_on": []},
    ]
    v2 = [
        {
            "id": "t1",
            "title": "Add greet",
            "files": ["src/g.py"],
            "depends_on": [],
            "tier": "small",
            "acceptance_criteria": ["greet('Ada') returns 'Hello, Ada'"],
        },
        {"id": "t3", "title": "Document both", "files": ["docs/u.md"], "depends_on": ["t1"]},
    ]
    mission = {
        "id": "m-1",
        "status": "awaiting_approval",
        "repository": "/r",
        "base_branch": "master",
        "requirement": "r",
        "plans": [{"version": 1, "tasks": v1}, {"version": 2, "tasks": v2}],
        "graph": {"layers": [["t1"], ["t3"]]},
    }
    text = mission_detail(mission)
    assert "    wave 1  t1\n    wave 2  t3 ← t1" in text
    assert (
        "  plan v2 against v1:\n    ~ t1: tier, acceptance_criteria changed\n"
        "    - t2: Add bye\n    + t3: Document both\n"
    ) in text
    assert "    t1         [small] Add greet\n      files   src/g.py\n" in text
    assert "      accept  greet('Ada') returns 'Hello, Ada'" in text


def test_show_says_why_no_task_starts_when_the_next_one_does_not_fit_the_budget():
    from aether.render import mission_detail

    base = {"id": "m-1", "status": "running", "repository": "/r", "base_branch": "main"}
    base["requirement"] = "r"
    short_of = {**base, "budget_usd": 0.5, "cost_usd": 0.1137, "budget_exceeded": True}
    assert (
        "$0.1137 of $0.50 (the next task does not fit): no task starts until "
        "`aether mission budget m-1 USD` raises it;"
    ) in mission_detail(short_of)
    spent = {**short_of, "cost_usd": 0.52}
    assert "$0.5200 of $0.50 EXCEEDED: no task starts until" in mission_detail(spent)


def test_show_names_the_runtime_asked_for_and_each_tasks_by_its_tier():
    from aether.render import mission_detail

    mission = {"id": "m-1", "status": "running", "repository": "/r", "base_branch": "main"}
    mission |= {"requirement": "r", "runtime": "codex", "runtime_overrides": {"small": "aider"}}
    task = {"status": "pending", "attempt": 0, "title": "T", "tier": "standard"}
    mission["tasks"] = [
        {**task, "task_id": "t1"},
        {**task, "task_id": "t2", "tier": "small"},
        {**task, "task_id": "t3", "status": "running", "runtime": "builtin"},
    ]
    text = mission_detail(mission)
    assert "\n  runtime      codex (small: aider)\n" in text
    tasks = [line.split()[:5] for line in text.splitlines() if " try " in line]
    assert [t[4] for t in tasks] == ["codex", "aider", "builtin"]


def test_show_says_a_spent_daily_budget_holds_a_running_missions_tasks():
    from aether.render import mission_detail

    mission = {"id": "m-1", "status": "running", "repository": "/r", "base_branch": "main"}
    mission["requirement"] = "r"
    text = mission_detail(mission, ["daily:2026-12-05"])
    assert (
        "  budget       the daily budget across all missions (2026-12-05) is spent: "
        "no task starts until the day turns (UTC)"
    ) in text
    assert "budget  " not in mission_detail({**mission, "status": "completed"}, ["daily:x"])


def test_show_prints_each_planned_tasks_estimate_from_the_gateway():
    from aether.render import mission_detail

    tasks = [
        {"id": "t1", "title": "Add greet", "depends_on": [], "tier": "small"},
        {"id": "t2", "title": "Add bye", "depends_on": ["t1"], "tier": "complex"},
    ]
    mission = {
        "id": "m-1",
        "status": "awaiting_approval",
        "repository": "git://example.com/r.git",
        "base_branch": "",
        "requirement": "r",
        "plans": [{"version": 1, "tasks": tasks}],
        "plan_estimates": [
            {"version": 1, "tasks": {"t1": 0.05, "t2": 1.5}, "total_usd": 1.55},
        ],
        "graph": {"layers": [["t1"], ["t2"]]},
    }
    text = mission_detail(mission)
    assert "  plan v1 tasks, estimated ≈ $1.55:\n" in text
    assert "    t1         [small] ≈ $0.05 Add greet\n" in text
    assert "    t2         [complex] ≈ $1.50 Add bye" in text


def test_show_says_what_the_planner_could_not_do_as_asked():
    from aether.render import mission_detail

    repair = (
        "the repository has no command /release-note (.claude/commands/release-note.md); "
        "planned from the requirement as written"
    )
    mission = {
        "id": "m-1",
        "status": "awaiting_approval",
        "repository": "/r",
        "base_branch": "main",
        "requirement": "/release-note v2.1",
        "plans": [
            {
                "version": 1,
                "tasks": [{"id": "t1", "title": "/release-note v2.1", "depends_on": []}],
                "repairs": [repair],
            }
        ],
    }
    assert f"\n  plan note    {repair}" in mission_detail(mission)


def test_the_cli_reference_is_generated_from_the_current_parser():
    from aether.clidoc import reference

    checked_in = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert checked_in == reference(), "regenerate: python -m aether.clidoc > docs/cli.md"


def test_the_board_shows_the_plans_estimated_cost_at_approval(monkeypatch):
    monkeypatch.delenv("AETHER_ESTIMATE_USD_COMPLEX", raising=False)
    monkeypatch.setenv("AETHER_ESTIMATE_USD_SMALL", "0.10")
    board = Board("m-3")
    board.apply(ev(1, "mission_requested", budget_usd=5.0))
    tasks = [
        {"id": "a", "title": "A", "depends_on": [], "tier": "small"},
        {"id": "b", "title": "B", "depends_on": [], "tier": "complex"},
    ]
    board.apply(ev(2, "plan_produced", version=1, model="claude-opus-5-5", tasks=tasks))
    text = render(board, 120)
    assert "estimated cost ≈ $1.60 of the $5.00 budget (real model claude-opus-5-5)" in text
    board.apply(ev(3, "plan_approved", version=1))
    assert "estimated cost" not in render(board, 120)


def test_up_names_the_real_model_and_the_default_budget_when_a_key_is_set() -> None:
    from aether.localstack import model_line

    assert model_line({}).startswith("OFFLINE model")
    line = model_line({"ANTHROPIC_API_KEY": "k", "AETHER_MODEL_STANDARD": "claude-x"})
    assert line.startswith("real model: claude-x (small claude-haiku-5-5")
    assert line.endswith("default mission budget $5.00 (--budget at submit)")
    unbounded = model_line({"ANTHROPIC_API_KEY": "k", "AETHER_DEFAULT_MISSION_BUDGET_USD": "none"})
    assert "NO default mission budget" in unbounded


def test_show_says_where_the_result_was_delivered_or_why_not():
    from aether.client import SseEvent
    from aether.render import describe, mission_detail

    mission = {
        "id": "m-1",
        "status": "completed",
        "repository": "/r",
        "base_branch": "main",
        "requirement": "r",
        "integration_branch": "aether/m-1",
        "final_sha": "e" * 40,
    }
    assert "deliver" not in mission_detail(mission)
    where = {"branch": "aether/m-1", "sha": "e" * 40, "remote": "https://git.example/app"}
    pushed = {**mission, "delivery": {"status": "pushed", **where, "already_there": False}}
    assert "  delivered    aether/m-1 @ eeeeeeeeee to https://git.example/app\n" in (
        mission_detail(pushed) + "\n"
    )
    failed = {**mission, "delivery": {"status": "failed", **where, "reason": "someone moved it"}}
    text = mission_detail(failed)
    assert "  delivery     FAILED: someone moved it\n" in text
    assert "aether/m-1 @ eeeeeeeeee to https://git.example/app" in text
    assert "once that is fixed, push it again with `aether mission deliver m-1`" in text
    retrying = {**mission, "delivery": {**failed["delivery"], "status": "retrying"}}
    assert "  delivery     pushing again (it failed: someone moved it)" in mission_detail(retrying)
    announced = {**mission, "status": "running", "final_sha": None}
    announced["delivery"] = {"status": "pending", **where, "sha": ""}
    assert "  delivery     to https://git.example/app once the mission completes" in (
        mission_detail(announced)
    )
    pushing = {**mission, "delivery": {"status": "pending", **where}}
    assert "  delivery     pushing aether/m-1 @ eeeeeeeeee to https://git.example/app" in (
        mission_detail(pushing)
    )
    event = SseEvent(
        event="branch_push_failed",
        id="9",
        data={"integration_branch": "aether/m-1", "sha": "e" * 40, **where, "reason": "refused"},
    )
    assert describe(event).endswith(
        "branch_push_failed                to https://git.example/app: refused"
    )


def test_show_says_what_a_task_does_now_not_its_agents_last_sampled_action():
    from aether.render import mission_detail

    asked = {"last_action": "model asks: read_file src/g.py"}
    tasks = [
        {"task_id": "t1", "status": "merged", "title": "Add greet", "merge_sha": "1f14cf1797ab"},
        {"task_id": "t2", "status": "running", "title": "Add bye"},
        {"task_id": "t3", "status": "escalated", "title": "Add doc", "error": "tests fail"},
        {"task_id": "t4", "status": "completed", "title": "Add more"},
    ]
    mission = {
        "id": "m-1",
        "status": "running",
        "repository": "/r",
        "base_branch": "main",
        "requirement": "r",
        "tasks": [{**task, "attempt": 1, "agent": asked} for task in tasks],
    }
    lines = {line.split()[0]: line for line in mission_detail(mission).splitlines()[1:]}
    assert lines["t1"].endswith("Add greet  — merged 1f14cf1797")
    assert lines["t2"].endswith("Add bye  — model asks: read_file src/g.py")
    assert lines["t3"].endswith("Add doc  — tests fail")
    assert lines["t4"].endswith("Add more")  # done, its merge not yet: nothing to add


def test_the_feed_the_board_and_show_count_waves_alike_from_one():
    from aether.render import describe, mission_detail

    # Events number waves from 0; people read them from 1, as `show` and the web board do.
    ready = ev(5, "task_ready", task={"id": "a", "title": "Write a"}, attempt=1, model="x", wave=0)
    assert "attempt 1, wave 1, model x" in describe(ready)
    assert "wave 1: a, b" in describe(ev(6, "wave_started", wave=0, task_ids=["a", "b"]))
    assert describe(ev(7, "wave_completed", wave=1)).endswith("wave 2")
    board = Board("m-1")
    for event in [ev(3, "plan_produced", **PLAN), ev(4, "plan_approved", version=1), ready]:
        board.apply(event)
    row = next(line for line in render(board).splitlines() if "Write a" in line)
    assert row.split()[1:4] == ["ready", "1", "1"]  # status, try, wave
    graph = mission_detail(
        {
            "id": "m-1",
            "status": "running",
            "repository": "/r",
            "base_branch": "main",
            "requirement": "r",
            "plans": [{"version": 1, "tasks": PLAN["tasks"]}],
            "graph": {"layers": [["a"], ["b"]]},
        }
    )
    assert "    wave 1  a\n    wave 2  b ← a" in graph


def test_an_unreachable_default_gateway_names_the_home_looked_in(tmp_path, monkeypatch, capsys):
    import socket

    from aether import locate
    from aether.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(locate, "DEFAULT_URL", closed)
    for name in ("AETHER_URL", "AETHER_TOKEN", "AETHER_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "no stack here"
    assert main(["mission", "list", "--home", str(home)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"error: cannot reach the gateway at {closed} (from the default)")
    assert lines[1] == (
        f"  no stack is running on {home} (the home from --home): start one with "
        f"`aether up --home '{home}'`, or point --url / $AETHER_URL at a running one"
    )
    # A URL given is not a guess: the plain hint.
    assert main(["mission", "list", "--url", closed]) == 1
    assert capsys.readouterr().err.splitlines()[1].startswith("  start a stack with `aether up`")


def test_the_mission_list_has_a_header_over_its_columns():
    from aether.render import mission_lines

    mission = {
        "id": "m-0a6fb914d37d4361",
        "status": "awaiting_approval",
        "created_at": "2026-12-03T04:25:42Z",
        "cost_usd": 0.0,
        "repository": "/tmp/tour",
        "requirement": "Add a greeting",
    }
    header, line = mission_lines([mission])
    for column, value in [
        ("status", "awaiting_approval"),
        ("created", "2026-12-03 04:25:42"),
        ("repository", "/tmp/tour"),
        ("requirement", "Add a greeting"),
    ]:
        assert header.index(column) == line.index(value), (column, header, line)
    assert header.index("cost") + len("cost") == line.index("$0.0000") + len("$0.0000")
    assert mission_lines([]) == []


def test_a_command_starts_without_httpxs_own_command_line_or_dulwich() -> None:
    """httpx's command line (click, rich, pygments) was about a third of a short command's
    start; dulwich is imported only by the commands that read a repository."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, aether.cli, httpx\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'click', 'rich', 'pygments', 'dulwich'}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr


@pytest.mark.parametrize("lines", [3, 5000])
def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path, lines: int) -> None:
    """``aether … | head``: the pipe's reader is gone before the command has written all
    (a write fails at once, or only the flush at the end); the command stops without a
    traceback, with the status a closed pipe gives."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "gateway.log").write_text("".join(f"line {i}\n" for i in range(lines)))
    read, write = os.pipe()
    os.close(read)
    argv = ["--home", str(tmp_path), "logs", "gateway", "--raw", "-n", str(lines)]
    try:
        ended = subprocess.run(
            [sys.executable, "-c", "import sys, aether.cli; sys.exit(aether.cli.main())", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert ended.stderr == ""
    assert ended.returncode == 128 + signal.SIGPIPE


def test_show_gives_a_task_not_yet_worked_no_cost_and_an_unpriced_one_as_unknown() -> None:
    from aether.render import mission_detail

    def task(task_id: str, cost: float | None, complete: bool = True) -> dict[str, object]:
        return {
            "task_id": task_id,
            "title": task_id,
            "status": "pending",
            "cost_usd": cost,
            "cost_complete": complete,
        }

    mission = {
        "id": "m-1",
        "status": "running",
        "repository": "/r",
        "base_branch": "main",
        "requirement": "r",
        "tasks": [task("t1", None), task("t2", 0.25), task("t3", None, False)],
    }
    rows = {
        line.split()[0]: line for line in mission_detail(mission).splitlines() if " try " in line
    }
    assert rows["t1"].split()[4] == "-"
    assert rows["t2"].split()[4] == "$0.2500"
    assert rows["t3"].split()[4] == "unknown"


def test_a_mission_that_failed_before_any_model_call_cost_nothing() -> None:
    """The gateway has no cost for a mission no model call was made for (its repository
    was refused): $0, not "unknown", which the CLI keeps for a call it found no price for."""
    from aether.render import mission_detail, mission_lines

    failed = {
        "id": "m-1",
        "status": "failed",
        "created_at": "2026-12-03T04:25:42Z",
        "cost_usd": None,
        "repository": "/nonexistent",
        "base_branch": "main",
        "requirement": "x",
        "budget_usd": 5.0,
        "error": "repository '/nonexistent' does not exist",
    }
    unpriced = failed | {"id": "m-2", "cost_complete": False}
    first, second = mission_lines([failed, unpriced])[1:]
    assert first.split()[4] == "$0.0000"
    assert second.split()[4] == "unknown"
    assert "  cost         $0.0000 of $5.00;" in mission_detail(failed)


def test_counts_of_one_are_singular_in_the_feed_and_the_diff_stat():
    from aether.gitview import FileStat, format_stat
    from aether.render import describe

    plan = {**PLAN, "tasks": PLAN["tasks"][:1]}  # type: ignore[index]
    assert "v1: 1 task by m [OFFLINE model]" in describe(ev(3, "plan_produced", **plan))
    done = describe(ev(9, "mission_completed", **{**COMPLETED, "tasks_merged": 1}))
    assert ", 1 task, cost" in done
    stat = format_stat([FileStat("a.md", added=1, removed=0)])
    assert stat.endswith(" 1 file changed, 1 insertion(+), 0 deletions(-)")
    two = format_stat([FileStat("a.md", 2, 1), FileStat("b.md", 0, 1)])
    assert two.endswith(" 2 files changed, 2 insertions(+), 2 deletions(-)")


def test_the_watch_ends_a_failed_delivery_with_how_to_push_again():
    from aether.commands import _outcome

    board = Board("m-1")
    board.apply(ev(1, "mission_requested", repository="/nowhere", budget_usd=1.0))
    board.apply(ev(2, "repository_prepared", **{**PREPARED, "delivery_remote": "/remote"}))
    board.apply(ev(3, "mission_completed", **COMPLETED))
    board.apply(ev(4, "branch_push_failed", remote="/remote", reason="no repository there"))
    assert _outcome(board).endswith(
        "delivery FAILED: no repository there\n"
        "  once that is fixed, push it again with `aether mission deliver m-1`"
    )


def test_a_merge_that_resolved_a_conflict_says_so_wherever_it_is_shown():
    from aether.render import describe, task_note

    merged = {"task_id": "a", "attempt": 2, "merge_sha": "d" * 40, "resolution": True}
    assert "(resolution of a conflict)" in describe(ev(9, "branch_merged", **merged))
    plain = {**merged, "attempt": 1, "resolution": False}
    assert "resolution" not in describe(ev(9, "branch_merged", **plain))
    assert task_note({"status": "merged", "merge_sha": "d" * 40, "resolution": True}) == (
        "merged dddddddddd (resolution of a conflict)"
    )
    assert task_note({"status": "merged", "merge_sha": "d" * 40}) == "merged dddddddddd"
    board = Board("m-1")
    board.apply(ev(1, "plan_produced", **PLAN))
    board.apply(ev(2, "task_ready", task={"id": "a", "title": "Write a"}, attempt=2, model="x"))
    board.apply(ev(3, "branch_merged", **merged))
    assert board.tasks["a"].activity == "merged dddddddddd (resolution of a conflict)"
