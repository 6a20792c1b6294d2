"""``aether mission logs``: one line per agent step, each printed once."""

from __future__ import annotations

import argparse

from aether.agentlog import StepPrinter, step_line
from aether.cli import _parser

AT = "2026-11-30T12:00:05Z"


def test_each_step_names_the_attempt_the_tool_and_its_file_or_command() -> None:
    started = {"task_id": "t1", "attempt": 2, "runner_id": "r-1", "model": "m", "sandbox": "bwrap"}
    assert step_line("agent_started", {**started, "occurred_at": AT}) == (
        "12:00:05  t1 a2  started    on r-1 with m, commands in bwrap"
    )
    # The runtime it ran with, from a runner that says (v1.4).
    through = {**started, "runtime": "claude-code", "occurred_at": AT}
    assert step_line("agent_started", through) == (
        "12:00:05  t1 a2  started    on r-1 with m through claude-code, commands in bwrap"
    )
    wrote = {"task_id": "t1", "attempt": 2, "turns": 3, "last_action": "write_file src/a.py"}
    assert step_line("agent_progress", wrote).endswith("t1 a2  turn 3     write_file     src/a.py")
    ran = {"task_id": "t1", "attempt": 2, "turns": 4, "last_action": "run_command pytest -q"}
    assert step_line("agent_progress", ran).endswith("run_command    pytest -q")
    asked = {"task_id": "t1", "attempt": 2, "turns": 1, "last_action": "model asks: read_file a"}
    assert step_line("agent_progress", asked).endswith("turn 1     model asks     read_file a")
    done = {"task_id": "t1", "attempt": 2, "commit_sha": "c" * 40, "files_changed": ["a.py"]}
    assert "completed  commit cccccccccc, 1 file: a.py" in step_line("agent_completed", done)
    failed = {"task_id": "t1", "attempt": 2, "reason": "no finish", "retryable": False}
    assert step_line("agent_failed", failed).endswith("failed     no finish (not retryable)")


def test_a_step_listed_and_streamed_again_is_printed_once_and_only_for_the_task() -> None:
    args = _parser().parse_args(["mission", "logs", "m-1", "t1"])
    assert isinstance(args, argparse.Namespace) and not args.follow
    printed: list[str] = []
    printer = StepPrinter(args, out=printed.append)
    step = {"event_id": "e1", "task_id": "t1", "attempt": 1, "last_action": "read_file a"}
    printer.show("agent_progress", step)
    printer.show("agent_progress", step)
    printer.show("agent_progress", {**step, "event_id": "e2", "task_id": "t2"})
    printer.show("task_ready", {**step, "event_id": "e3"})
    assert len(printed) == 1 and "read_file" in printed[0]
