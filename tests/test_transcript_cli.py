"""``aether mission logs MISSION TASK``: transcript entries for people, each once."""

from __future__ import annotations

from aether.cli import _parser
from aether.transcript import BODY_LINES, TranscriptPrinter, entry_lines

AT = "2026-11-30T12:00:05Z"


def test_a_turn_a_tool_call_and_a_command_read_as_what_happened() -> None:
    turn = {
        "attempt": 2,
        "sequence": 1,
        "kind": "turn",
        "occurred_at": AT,
        "text": "Reading first.",
        "tool": "read_file",
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1200, "output_tokens": 30, "cache_read_input_tokens": 900},
    }
    assert entry_lines(turn) == [
        "12:00:05  a2 #1    model (tool_use)  asks read_file  [1200 in, 30 out, 900 cached]",
        "            Reading first.",
    ]
    call = {
        "attempt": 2,
        "sequence": 2,
        "kind": "tool_call",
        "tool": "read_file",
        "arguments": '{"path": "a.py"}',
        "result": "x = 1",
        "is_error": True,
    }
    assert entry_lines(call)[0].endswith('read_file {"path": "a.py"}  → error')
    assert entry_lines(call)[1] == "            → x = 1"
    output = "\n".join(f"line {n}" for n in range(30))
    command = {
        "attempt": 2,
        "sequence": 3,
        "kind": "command",
        "arguments": '{"command": "pytest -q"}',
        "result": output,
        "exit_code": 1,
        "truncated": True,
    }
    lines = entry_lines(command)
    assert lines[0].endswith("$ pytest -q  → exit 1  (excerpt)")
    assert lines[1] == "            | line 0"
    assert lines[-1].endswith(f"{30 - BODY_LINES} more lines (--full shows them)")
    assert len(entry_lines(command, full=True)) == 31
    stopped = {**command, "exit_code": None, "status": "timed out after 120.0 s"}
    assert entry_lines(stopped)[0].endswith("→ timed out after 120.0 s  (excerpt)")


def test_an_entry_listed_and_streamed_again_is_printed_once_and_moves_the_cursor() -> None:
    args = _parser().parse_args(["mission", "logs", "m-1", "t1"])
    printed: list[str] = []
    printer = TranscriptPrinter(args, out=printed.append)
    entry = {"task_id": "t1", "attempt": 1, "sequence": 4, "kind": "note", "text": "go on"}
    printer.show("transcript_recorded", entry)
    printer.show("transcript_recorded", entry)
    printer.show("transcript_recorded", {**entry, "task_id": "t2", "sequence": 5})
    printer.show("agent_progress", {**entry, "event_id": "e1"})
    assert printed == ["--:--:--  a1 #4    note", "            go on"]
    # Another task's entry does not move where the next page starts.
    assert (printer.after_attempt, printer.after) == (1, 4)
