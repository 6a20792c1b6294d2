"""``aether mission logs MISSION TASK``: transcript entries for people, each once."""

from __future__ import annotations

import json
from typing import cast

import pytest

from aether.cli import _parser
from aether.client import GatewayClient
from aether.transcript import BODY_LINES, TranscriptPrinter, entry_lines, task_transcript

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
    printer.flush()  # no start of the attempt seen: its entries wait for it until then
    assert printed == ["--:--:--  a1 #4    note", "            go on"]
    # Another task's entry does not move where the next page starts.
    assert (printer.after_attempt, printer.after) == (1, 4)


class _EndsWhileListed:
    """The gateway's side of ``logs -f`` for a mission that ends right after its first
    listing: a last entry and the attempt's end come in before the status is read."""

    def __init__(self) -> None:
        self.entries = [self._entry(1), self._entry(2)]
        self.steps = [self._step("agent_started", "e-1", "2026-11-30T12:00:00Z")]
        self.status = "running"

    @staticmethod
    def _entry(sequence: int) -> dict[str, object]:
        return {
            "attempt": 1,
            "sequence": sequence,
            "kind": "note",
            "text": f"step {sequence}",
            "occurred_at": f"2026-11-30T12:00:0{sequence}Z",
        }

    @staticmethod
    def _step(kind: str, event_id: str, at: str) -> dict[str, object]:
        data = {"task_id": "t1", "attempt": 1, "event_id": event_id}
        return {"type": kind, "occurred_at": at, "data": data}

    def activity(self, mission_id: str, task_id: str, attempt: int | None) -> dict[str, object]:
        listed = {"entries": list(self.steps), "position": 7}
        if self.status == "running":  # the mission ends as the listing is answered
            self.entries.append(self._entry(3))
            self.steps.append(self._step("agent_completed", "e-2", "2026-11-30T12:00:04Z"))
            self.status = "completed"
        return listed

    def transcript(
        self,
        mission_id: str,
        task_id: str,
        attempt: int | None,
        after_attempt: int | None,
        after: int | None,
    ) -> dict[str, object]:
        held = (after_attempt or 0, after or 0)
        new = [e for e in self.entries if (e["attempt"], e["sequence"]) > held]
        return {"entries": new, "next": None}

    def show(self, mission_id: str) -> dict[str, object]:
        return {"status": self.status}

    def events(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("a stream from an ended mission's position never ends")


def test_following_a_mission_that_ends_while_it_is_listed_prints_what_came_in_between(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parser().parse_args(["--json", "mission", "logs", "m-1", "t1", "-f"])
    gateway = _EndsWhileListed()
    assert task_transcript(cast(GatewayClient, gateway), args) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["type"], p.get("sequence")) for p in printed] == [
        ("agent_started", None),
        ("transcript_recorded", 1),
        ("transcript_recorded", 2),
        ("transcript_recorded", 3),
        ("agent_completed", None),
    ]
