"""The agent's conversation, and the records it is kept as.

Every step of the conversation (the opening prompt, each model reply, each tool result or
note sent back) is one JSON record. The agent appends each record to a journal as soon as
the step is done, and a runner that takes over a half-done attempt folds the same records
back into the same conversation, so it carries on from the last finished step instead of
asking the model again. Folding and recording share one code path (``apply``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from aether_events import Usage
from aether_llm import add_usage

if TYPE_CHECKING:
    from anthropic.types import ContentBlock, MessageParam

Record = dict[str, Any]
JSON = dict[str, Any]

VERSION = 1


def identity(mission_id: str, task_id: str, attempt: int, base_sha: str) -> JSON:
    """What a journal must belong to for a runner to continue it."""
    return {"mission_id": mission_id, "task_id": task_id, "attempt": attempt, "base_sha": base_sha}


def block_param(block: ContentBlock) -> JSON:
    """A reply's content block in the form it is sent back to the API (and journaled)."""
    return param_of(block.model_dump(mode="json", exclude_none=True))


def param_of(data: JSON) -> JSON:
    """``block_param`` of a content block given as the API's JSON, ``None`` values left
    out (``aether_llm.streamed``)."""
    match data.get("type"):
        case "text":
            kept = {"type": "text", "text": data.get("text", "")}
            if data.get("citations"):
                kept["citations"] = data["citations"]
            return kept
        case "tool_use":
            return {
                "type": "tool_use",
                "id": data["id"],
                "name": data["name"],
                "input": data.get("input") or {},
            }
        case "thinking":
            return {
                "type": "thinking",
                "thinking": data["thinking"],
                "signature": data["signature"],
            }
        case "redacted_thinking":
            return {"type": "redacted_thinking", "data": data["data"]}
    return data


def tool_result(tool_use_id: str, content: str, is_error: bool = False) -> JSON:
    block: JSON = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
    if is_error:
        block["is_error"] = True
    return block


@dataclass
class Conversation:
    """The messages so far and what they cost; ``answered``: ids of the tool calls of the
    latest reply that have a result."""

    prompt: str
    messages: list[MessageParam] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    stop_reason: str | None = None
    elapsed: float = 0.0
    notes: dict[str, int] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    # Where the latest model reply is in ``messages`` (None before the first).
    reply_index: int | None = None
    # Each reply's turn, when it was journaled (seconds into the attempt) and its usage.
    replies: list[tuple[int, float, Usage]] = field(default_factory=list)

    @classmethod
    def fresh(cls, prompt: str) -> Conversation:
        return cls(prompt=prompt, messages=[{"role": "user", "content": prompt}])

    @classmethod
    def from_records(cls, records: list[Record], expected: JSON) -> Conversation | None:
        """The conversation the records describe, or ``None`` when they do not begin with
        this attempt's identity (another attempt's journal, or an unknown format)."""
        if not records:
            return None
        begin = records[0]
        if (
            begin.get("kind") != "begin"
            or begin.get("version") != VERSION
            or begin.get("identity") != expected
        ):
            return None
        conversation = cls.fresh(str(begin.get("prompt", "")))
        for record in records[1:]:
            conversation.apply(record)
        return conversation

    def begin_record(self, attempt_identity: JSON) -> Record:
        return {
            "kind": "begin",
            "version": VERSION,
            "identity": attempt_identity,
            "prompt": self.prompt,
        }

    # --- recording ----------------------------------------------------------------

    def reply(
        self, content: list[JSON], stop_reason: str | None, usage: Usage, elapsed: float
    ) -> Record:
        """Add a model reply; returns its record."""
        record: Record = {
            "kind": "reply",
            "content": content,
            "stop_reason": stop_reason,
            "usage": msgspec.to_builtins(usage),
            "elapsed": elapsed,
        }
        self.apply(record)
        return record

    def answer(
        self,
        block: JSON,
        elapsed: float,
        *,
        tool_call: bool = False,
        note: str = "",
        changed: list[str] | None = None,
        command: JSON | None = None,
    ) -> Record:
        """Add a block sent back to the model (a tool result or a note); returns its record.
        ``command``: how a command the call ran ended (for the transcript)."""
        record: Record = {
            "kind": "answer",
            "block": block,
            "tool_call": tool_call,
            "note": note,
            "changed": list(changed or []),
            "elapsed": elapsed,
        }
        if command is not None:
            record["command"] = command
        self.apply(record)
        return record

    def apply(self, record: Record) -> None:
        """Fold one record into the conversation."""
        kind = record.get("kind")
        if kind == "reply":
            usage = msgspec.convert(record.get("usage") or {}, Usage)
            self.messages.append({"role": "assistant", "content": record["content"]})
            self.reply_index = len(self.messages) - 1
            self.turns += 1
            self.usage = add_usage(self.usage, usage)
            self.replies.append((self.turns, float(record.get("elapsed") or 0.0), usage))
            self.stop_reason = record.get("stop_reason")
            self.answered = set()
        elif kind == "answer":
            block = record["block"]
            last = self.messages[-1]
            if last["role"] == "assistant":
                self.messages.append({"role": "user", "content": [block]})
            else:
                content = last["content"]
                assert isinstance(content, list)
                content.append(block)
            if block.get("type") == "tool_result":
                self.answered.add(block["tool_use_id"])
            if record.get("tool_call"):
                self.tool_calls += 1
            note = record.get("note") or ""
            if note:
                self.notes[note] = self.notes.get(note, 0) + 1
            for path in record.get("changed") or []:
                if path not in self.changed:
                    self.changed.append(path)
        else:
            return
        self.elapsed = max(self.elapsed, float(record.get("elapsed") or 0.0))

    # --- reading ------------------------------------------------------------------

    def last_replies(self, seconds: float) -> list[tuple[int, Usage]]:
        """The turn and usage of the last reply and of every reply journaled less than
        ``seconds`` before it, in order."""
        if not self.replies:
            return []
        *earlier, (turn, last, usage) = self.replies
        return [(t, u) for t, at, u in earlier if last - at < seconds] + [(turn, usage)]

    @property
    def awaiting_answers(self) -> bool:
        """Whether the latest model reply still has calls to answer: it is the latest
        message, or some of its calls have no result yet (a runner that died between two
        calls of one reply journaled the first one's result)."""
        if self.messages[-1]["role"] == "assistant":
            return True
        return any(block["id"] not in self.answered for block in self._reply_uses())

    def latest_reply(self) -> list[JSON]:
        """The latest model reply's blocks while it awaits answers, else none."""
        return self._reply_blocks() if self.awaiting_answers else []

    def failed_calls(self) -> list[str]:
        """The names of the latest reply's calls whose results are errors, in order."""
        if self.reply_index is None:
            return []
        errors = {
            block.get("tool_use_id")
            for message in self.messages[self.reply_index + 1 :]
            if isinstance(message["content"], list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
            if block.get("is_error")
        }
        return [str(use["name"]) for use in self._reply_uses() if use["id"] in errors]

    def _reply_blocks(self) -> list[JSON]:
        if self.reply_index is None:
            return []
        content: Any = self.messages[self.reply_index]["content"]
        return [block for block in content if isinstance(block, dict)]

    def _reply_uses(self) -> list[JSON]:
        return [block for block in self._reply_blocks() if block.get("type") == "tool_use"]

    def tool_uses(self) -> list[JSON]:
        return [block for block in self.latest_reply() if block.get("type") == "tool_use"]

    def finish_summary(self) -> str | None:
        """The summary of the last ``finish`` call in the conversation, if any."""
        for message in reversed(self.messages):
            if message["role"] != "assistant" or not isinstance(message["content"], list):
                continue
            for block in message["content"]:
                if (
                    isinstance(block, dict)
                    and block.get("type") == "tool_use"
                    and block.get("name") == "finish"
                ):
                    return str((block.get("input") or {}).get("summary", "")).strip()
        return None
