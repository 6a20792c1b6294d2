"""What the journal keeps of a Claude Code session (pure: records in, counts out)."""

from __future__ import annotations

import uuid

from aether_agent_runner.runtimes.session import (
    Earlier,
    earlier_run,
    start_record,
    tool_record,
    turn_record,
)
from aether_events import ZERO_USAGE, Usage
from aether_llm import load_prices

ME = {"mission_id": "m", "task_id": "t1", "attempt": 1, "base_sha": "abc"}
MODEL = "claude-sonnet-5-5"


def test_a_journal_gives_the_session_its_turns_tool_calls_and_priced_usage() -> None:
    prices = load_prices()
    session = str(uuid.uuid4())
    reply = Usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=50)
    records = [
        start_record(ME, session),
        turn_record(MODEL, reply),
        tool_record(),
        turn_record(MODEL, reply),
        tool_record(),
        tool_record(),
        {"kind": "claude-code-turn", "model": MODEL, "usage": {"input_tokens": -3}},
    ]

    earlier = earlier_run(records, ME, prices, MODEL)

    assert earlier is not None
    assert (earlier.session_id, earlier.turns, earlier.tool_calls) == (session, 2, 3)
    assert earlier.usage == ZERO_USAGE.plus(prices.priced(MODEL, reply)).plus(
        prices.priced(MODEL, reply)
    )


def test_what_a_fresh_session_carries_over_counts_on_a_later_resume() -> None:
    prices = load_prices()
    spent = prices.priced(MODEL, Usage(input_tokens=500, output_tokens=50))
    carried = Earlier(session_id="", turns=4, tool_calls=7, usage=spent)
    session = str(uuid.uuid4())
    records = [start_record(ME, session, carried), tool_record()]

    earlier = earlier_run(records, ME, prices, MODEL)

    assert earlier == Earlier(session_id=session, turns=4, tool_calls=8, usage=spent)


def test_another_attempts_or_runtimes_journal_is_not_resumed() -> None:
    prices = load_prices()
    session = str(uuid.uuid4())
    assert earlier_run([], ME, prices, MODEL) is None
    assert earlier_run([start_record({**ME, "attempt": 2}, session)], ME, prices, MODEL) is None
    assert earlier_run([{"kind": "begin", "identity": ME}], ME, prices, MODEL) is None
    assert earlier_run([start_record(ME, "../../etc")], ME, prices, MODEL) is None
