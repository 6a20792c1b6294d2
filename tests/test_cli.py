"""The command line's pure parts: the watch board, argument parsing, token lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether.cli import _parser
from aether.client import SseEvent, parse_sse
from aether.credentials import load_or_create_admin_token, resolve_token
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
    assert "> the plan waits for approval: `aether mission approve m-1`" in render(board)
    board.apply(ev(6, "mission_paused"))
    # An approval arriving while paused (the scheduler's automatic one) does not unpause.
    board.apply(ev(7, "plan_approved", version=1, automatic=True))
    assert board.status == "paused"
    board.apply(ev(8, "mission_resumed"))
    assert board.status == "running"
    assert "waits for approval" not in render(board)
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
