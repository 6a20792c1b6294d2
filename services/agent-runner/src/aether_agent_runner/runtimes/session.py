"""What the runner's journal keeps of a Claude Code or ACP attempt, so a restarted runner
can resume its session: the session id (Claude Code's written before the CLI starts, so
it is known however early the runner dies; an ACP agent's once the agent has made it),
each tool call, and each turn's usage as it was reported (the result that would have
counted them never came)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from aether_events import ZERO_USAGE, Usage
from aether_llm import PriceTable

START = "claude-code"
# The first record of an ACP agent's session: the id is the agent's, any short string.
ACP_START = "acp"
# The first record of a command runtime's run whose model calls are metered: a run is
# never resumed (it starts over), but its calls count on from an earlier run's.
COMMAND_START = "command"
MAX_SESSION_ID = 256
TURN = "claude-code-turn"
# One per tool call, journalled before its progress is published: the progress of a later
# run counts on from these, so none of its event ids is one an earlier run published.
TOOL = "claude-code-tool"


@dataclass(frozen=True)
class Earlier:
    """A session of this attempt that a dead runner left: where progress counts from,
    and what its turns cost."""

    session_id: str
    turns: int
    tool_calls: int
    usage: Usage


def start_record(
    identity: dict[str, Any],
    session_id: str,
    carried: Earlier | None = None,
    *,
    kind: str = START,
) -> dict[str, Any]:
    """The journal's first record; ``carried``: what sessions of the attempt before this
    one (which could not be resumed) counted and cost, so a later resume still counts it."""
    record: dict[str, Any] = {"kind": kind, "identity": identity, "session_id": session_id}
    if carried is not None:
        record["carried"] = {
            "turns": carried.turns,
            "tool_calls": carried.tool_calls,
            "usage": msgspec.to_builtins(carried.usage),
        }
    return record


def tool_record() -> dict[str, Any]:
    return {"kind": TOOL}


def turn_record(model: str, usage: Usage) -> dict[str, Any]:
    return {
        "kind": TURN,
        "model": model,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
        },
    }


def earlier_run(
    records: list[dict[str, Any]],
    identity: dict[str, Any],
    prices: PriceTable,
    model: str,
    *,
    kind: str = START,
) -> Earlier | None:
    """The session of ``kind`` the journal holds for this attempt, or ``None`` (no
    journal, another attempt's, another runtime's, or a session id that is not one)."""
    if not records:
        return None
    begin = records[0]
    if begin.get("kind") != kind or begin.get("identity") != identity:
        return None
    session_id = _session_id(begin.get("session_id"), kind)
    if session_id is None:
        return None
    turns, tool_calls, usage = 0, 0, ZERO_USAGE
    carried = begin.get("carried")
    if isinstance(carried, dict):
        try:
            turns = _count(carried, "turns")
            tool_calls = _count(carried, "tool_calls")
            usage = msgspec.convert(carried.get("usage"), Usage)
        except (ValueError, msgspec.ValidationError):
            return None
    for record in records[1:]:
        if record.get("kind") == TOOL:
            tool_calls += 1
        if record.get("kind") != TURN:
            continue
        counts = record.get("usage")
        if not isinstance(counts, dict):
            continue
        try:
            tokens = Usage(
                input_tokens=_count(counts, "input_tokens"),
                output_tokens=_count(counts, "output_tokens"),
                cache_creation_input_tokens=_count(counts, "cache_creation_input_tokens"),
                cache_read_input_tokens=_count(counts, "cache_read_input_tokens"),
            )
        except ValueError:
            continue
        turns += 1
        named = record.get("model")
        usage = usage.plus(prices.priced(named if isinstance(named, str) else model, tokens))
    return Earlier(session_id, turns, tool_calls, usage)


def _session_id(value: object, kind: str) -> str | None:
    """Claude Code's session id (a UUID, the runner's choice), or an ACP agent's (its
    own: any non-empty string of printable characters, not too long)."""
    if kind == START:
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_ID:
        return None
    return value if value.isprintable() else None


def _count(counts: dict[str, Any], key: str) -> int:
    value = counts.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(key)
    return value
