"""The services' log lines: one JSON object each, whatever the extras hold."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from aether_runtime.logs import JsonFormatter, log_context


def line(message: str, exc: bool = False, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("aether.test", logging.INFO, __file__, 1, message, None, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as error:
            record.exc_info = (type(error), error, error.__traceback__)
    record.__dict__.update(extra)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_a_line_holds_the_context_ids_and_the_extras() -> None:
    with log_context(mission_id="m1", task_id="t1", event_id=None):
        got = line("merged", result="fast_forward", files=["a.txt"], ms=1.5)
    assert got["msg"] == "merged" and got["level"] == "info" and got["logger"] == "aether.test"
    assert got["mission_id"] == "m1" and got["task_id"] == "t1" and "event_id" not in got
    assert got["result"] == "fast_forward" and got["files"] == ["a.txt"] and got["ms"] == 1.5
    assert datetime.fromisoformat(str(got["ts"])).tzinfo is not None


def test_uvicorns_coloured_copy_of_the_message_is_left_out() -> None:
    got = line(
        "Started server process [1]", color_message="Started server process [\x1b[36m%d\x1b[0m]"
    )
    assert "color_message" not in got
    assert got["msg"] == "Started server process [1]"


def test_values_json_has_no_form_for_are_written_as_text() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    got = line(
        "odd",
        path=Path("/tmp/x"),
        error=KeyError("k"),
        when=when,
        pair=("a", 1),
        by_number={1: "one"},
        by_tuple={("a", 1): "pair"},
    )
    assert got["path"] == "/tmp/x" and got["error"] == "'k'"
    assert datetime.fromisoformat(str(got["when"])) == when
    assert got["pair"] == ["a", 1] and got["by_number"] == {"1": "one"}
    # A key JSON cannot hold: the line is written all the same, the key as text.
    assert got["by_tuple"] == {"('a', 1)": "pair"}


def test_an_exception_goes_with_its_traceback() -> None:
    got = line("failed", exc=True)
    assert "ValueError: boom" in str(got["exc"]) and "Traceback" in str(got["exc"])
