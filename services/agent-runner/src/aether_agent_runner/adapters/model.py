"""The agent's tool-use loop over one task, through the anthropic SDK (streaming, the
final reply folded from the events by ``aether_llm.streamed``).

The loop alternates between answering the latest reply's tool calls and asking the model
again, until the model calls ``finish`` or a limit ends the task. Every step is journaled
the moment it is done, so a conversation handed over from a dead runner resumes exactly
where it stopped: tool calls that already have a result are not run again and no model
call is repeated once its reply was recorded.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

from aether_agent_runner import metrics
from aether_agent_runner.adapters.conversation import Conversation, Record, param_of, tool_result
from aether_agent_runner.adapters.tools import FINISH, ToolBox, describe_call
from aether_agent_runner.domain import Limits, limit_reached, wall_time_reason
from aether_events import Usage
from aether_llm import usage_of
from aether_llm.streamed import StreamedReply, stream_reply

if TYPE_CHECKING:
    # The SDK comes with the client (``aether_llm.client``), when the first call is made.
    import anthropic
    from anthropic.types import MessageParam, TextBlockParam

log = logging.getLogger("aether.agent")

NUDGE = (
    "You stopped without calling a tool. If the task is done, call finish with a summary; "
    "otherwise continue with the tools."
)
CUT_OFF = (
    "Your reply reached the output limit before this call was complete, so it was not run. "
    "Make smaller changes per call (edit_file rather than rewriting a whole file)."
)
NOTHING_CHANGED = (
    "No file in the repository has changed, so finishing now would fail the task: an empty "
    "change is not a result. Make the change, or call finish again if the task truly needs "
    "no change."
)
FAILED_BESIDE = (
    "{calls} in the same reply as this finish failed (see {its} result), so the task was "
    "not finished: it would have ended on a change that did not happen. Deal with the "
    "failure, or call finish again if it does not matter."
)
MAX_NUDGES = 1
MAX_OBJECTIONS = 1


@dataclass
class Outcome:
    finished: bool
    summary: str = ""
    reason: str = ""
    retryable: bool = True
    turns: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    files_changed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    turns: int
    tool_calls: int
    files_changed: list[str]
    usage: Usage
    last_action: str


class Observer(Protocol):
    """Told about every model call (for usage events) and every step (for progress)."""

    async def model_called(self, turn: int, usage: Usage) -> None: ...

    async def progressed(self, progress: Progress, *, always: bool = False) -> None:
        """``always``: a notice that must not be dropped by the progress interval."""
        ...


@dataclass
class Agent:
    client: anthropic.AsyncAnthropic
    model: str
    system: list[TextBlockParam]
    toolbox: ToolBox
    limits: Limits
    journal: Callable[[Record], None]
    observer: Observer
    has_changes: Callable[[], Awaitable[bool]]
    max_output_tokens: int = 8192
    clock: Callable[[], float] = time.monotonic
    # Where the conversation's cache breakpoints go (a bench compares placements).
    breakpoints: Breakpoints = field(
        default=lambda messages, final: cache_breakpoints(messages, final)
    )
    # Told about every record once it is journaled (the attempt's transcript).
    on_record: Callable[[Record], Awaitable[None]] | None = None
    # Whether journaling a record waits for the disk; one that does not is written on the
    # event loop: reaching the operating system takes microseconds, a worker thread's
    # hand-off milliseconds on a loaded machine.
    journal_syncs: Callable[[Record], bool] = field(default=lambda record: True)
    # ``has_changes`` as a blocking call for a worker thread. Given, a reply whose only
    # call is ``finish`` is journaled and the worktree checked in one hand-off instead of
    # two; nothing runs between that check and the finish it answers.
    changes_now: Callable[[], bool] | None = None
    # Given, ``journal`` only writes a record to the operating system, and a record that
    # must reach the disk is synced by this in a worker thread while the agent goes on
    # (runs the reply's tools, checks the worktree): the sync is waited for before the
    # next model call, the effect a reply lost to a machine's stop would repeat, and
    # before the agent's outcome. Without it ``journal`` syncs such a record itself.
    sync: Callable[[], None] | None = None
    # What that check found, for the next ``_answer`` only.
    _checked: bool | None = field(default=None, init=False, repr=False)
    # The sync under way, if any.
    _syncing: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    async def run(self, conversation: Conversation) -> Outcome:
        """Work the conversation until ``finish`` or a limit; a wall-time limit cuts a model
        call or a command short."""
        if conversation.turns:
            # Resumed: a write the runner's death cut short may have left its file.
            removed = await asyncio.to_thread(self.toolbox.workspace.remove_debris)
            if removed:
                log.warning("removed what interrupted writes left", extra={"paths": removed})
        started = self.clock() - conversation.elapsed
        remaining = self.limits.max_seconds - conversation.elapsed
        if remaining <= 0:
            return self._ended(conversation, wall_time_reason(self.limits, conversation.elapsed))
        try:
            async with asyncio.timeout(remaining) as scope:
                return await self._loop(conversation, started)
        except TimeoutError:
            if not scope.expired():
                raise
            elapsed = self.clock() - started
            return self._ended(conversation, wall_time_reason(self.limits, elapsed))
        finally:
            await self._synced()

    async def _loop(self, conversation: Conversation, started: float) -> Outcome:
        while True:
            if conversation.awaiting_answers:
                outcome = await self._answer(conversation, started)
                if outcome is not None:
                    return outcome
            reason = limit_reached(
                self.limits, conversation.turns, conversation.usage, self.clock() - started
            )
            if reason is not None:
                return self._ended(conversation, reason)
            self._checked = None  # answered or not, it was of the reply before
            message = await self._call(conversation)
            usage = usage_of(self.model, message.usage)
            content = [param_of(block) for block in message.content]
            check = self._checks_finish(conversation, content, message.stop_reason)
            await self._record(
                conversation.reply(content, message.stop_reason, usage, self.clock() - started),
                check=check,
            )
            await self.observer.model_called(conversation.turns, usage)
            await self._progress(conversation, reply_action(content, message.stop_reason))

    async def _answer(self, conversation: Conversation, started: float) -> Outcome | None:
        """Answer the latest reply; an outcome when the task ends here."""
        stop = conversation.stop_reason
        uses = conversation.tool_uses()
        pending = [use for use in uses if use["id"] not in conversation.answered]
        checked, self._checked = self._checked, None

        def elapsed() -> float:
            return self.clock() - started

        if stop == "max_tokens":
            for use in pending:
                block = tool_result(use["id"], CUT_OFF, is_error=True)
                await self._record(conversation.answer(block, elapsed(), note="cut_off"))
            if not uses:
                text = {"type": "text", "text": CUT_OFF.replace("this call", "your reply")}
                await self._record(conversation.answer(text, elapsed(), note="cut_off"))
            return None
        if stop == "refusal":
            return self._ended(conversation, "the model refused the task", retryable=False)
        if stop == "model_context_window_exceeded":
            return self._ended(
                conversation,
                "the conversation outgrew the model's context window; the task may need splitting",
                retryable=False,
            )
        finish = next((use for use in pending if use["name"] == FINISH), None)
        for use in pending:
            if use["name"] == FINISH:
                continue
            arguments = use.get("input") if isinstance(use.get("input"), dict) else {}
            result = await self.toolbox.call(use["name"], cast(dict[str, Any], arguments))
            block = tool_result(use["id"], result.content, result.is_error)
            ran = result.ran
            command = None if ran is None else {"exit_code": ran.exit_code, "status": ran.status()}
            await self._record(
                conversation.answer(
                    block,
                    elapsed(),
                    tool_call=True,
                    changed=self.toolbox.workspace.changed,
                    command=command,
                )
            )
            await self._progress(conversation, result.action)
            if self.toolbox.over_disk is not None:
                return self._ended(conversation, self.toolbox.over_disk, retryable=False)
        if finish is not None:
            # Those answered before a restart count too.
            failed = [name for name in conversation.failed_calls() if name != FINISH]
            if failed and conversation.notes.get("failed_beside", 0) < MAX_OBJECTIONS:
                # The model called finish before it could see these results.
                calls = ", ".join(dict.fromkeys(failed))
                objection = FAILED_BESIDE.format(
                    calls=f"{len(failed)} call{'s' if len(failed) > 1 else ''} ({calls})",
                    its="their" if len(failed) > 1 else "its",
                )
                block = tool_result(finish["id"], objection, is_error=True)
                await self._record(
                    conversation.answer(block, elapsed(), tool_call=True, note="failed_beside")
                )
                return None
            objections = conversation.notes.get("nothing_changed", 0)
            if objections < MAX_OBJECTIONS and not (
                checked if checked is not None else await self.has_changes()
            ):
                block = tool_result(finish["id"], NOTHING_CHANGED, is_error=True)
                await self._record(
                    conversation.answer(block, elapsed(), tool_call=True, note="nothing_changed")
                )
                return None
            summary = str((finish.get("input") or {}).get("summary", "")).strip()
            return Outcome(
                True,
                summary or "(no summary)",
                turns=conversation.turns,
                tool_calls=conversation.tool_calls + 1,
                usage=conversation.usage,
                files_changed=list(conversation.changed),
            )
        if not uses and stop != "pause_turn":
            if conversation.notes.get("nudge", 0) >= MAX_NUDGES:
                return self._ended(
                    conversation, "the model stopped without calling finish", retryable=True
                )
            text = {"type": "text", "text": NUDGE}
            await self._record(conversation.answer(text, elapsed(), note="nudge"))
        return None

    async def _call(self, conversation: Conversation) -> StreamedReply:
        await self._synced()
        metrics.MODEL_CALLS.inc()
        return await stream_reply(
            self.client,
            model=self.model,
            max_tokens=self.max_output_tokens,
            system=self.system,
            tools=self.toolbox.definitions(),
            messages=self.breakpoints(
                conversation.messages, conversation.turns + 1 >= self.limits.max_turns
            ),
        )

    def _checks_finish(
        self, conversation: Conversation, content: list[Any], stop_reason: str | None
    ) -> bool:
        """Whether a reply's journaling also checks the worktree for changes: its only
        call is ``finish``, which the check answers unless it was already objected to."""
        if self.changes_now is None or stop_reason == "max_tokens":
            return False
        calls = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        return (
            len(calls) == 1
            and calls[0].get("name") == FINISH
            and conversation.notes.get("nothing_changed", 0) < MAX_OBJECTIONS
        )

    async def _record(self, record: Record, *, check: bool = False) -> None:
        if self.journal_syncs(record) and self.sync is not None:
            await self._synced()  # one at a time: each sync covers what came before
            self.journal(record)
            self._syncing = asyncio.ensure_future(asyncio.to_thread(self.sync))
            if check and self.changes_now is not None:
                self._checked = await asyncio.to_thread(self.changes_now)
        elif self.journal_syncs(record):
            changes_now = self.changes_now if check else None
            if changes_now is not None:
                self._checked = await asyncio.to_thread(self._journal_then, record, changes_now)
            else:
                await asyncio.to_thread(self.journal, record)
        else:
            self.journal(record)
        if self.on_record is not None:
            await self.on_record(record)

    def _journal_then(self, record: Record, check: Callable[[], bool]) -> bool:
        self.journal(record)
        return check()

    async def _synced(self) -> None:
        """Wait for the sync under way, if any; raises its failure."""
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            await syncing

    async def _progress(self, conversation: Conversation, action: str) -> None:
        await self.observer.progressed(
            Progress(
                turns=conversation.turns,
                tool_calls=conversation.tool_calls,
                files_changed=list(conversation.changed),
                usage=conversation.usage,
                last_action=action,
            )
        )

    def _ended(self, conversation: Conversation, reason: str, retryable: bool = False) -> Outcome:
        log.info("agent ended without finishing", extra={"reason": reason})
        return Outcome(
            False,
            reason=reason,
            retryable=retryable,
            turns=conversation.turns,
            tool_calls=conversation.tool_calls,
            usage=conversation.usage,
            files_changed=list(conversation.changed),
        )


Breakpoints: TypeAlias = "Callable[[list[MessageParam], bool], list[MessageParam]]"


def cache_breakpoints(messages: list[MessageParam], final: bool = False) -> list[MessageParam]:
    """The messages with the two cache breakpoints a turn needs (the third is on the
    system prompt, which caches the tools with it).

    - On the last block: the conversation so far is written, for the next turn to read;
      not on the ``final`` turn the limits allow, whose entry no turn would read.
    - On the last block of the message that ended the previous request, where that turn's
      entry was written: this turn reads it there, however many blocks the latest reply
      and its tool results added. With the last one alone the read depends on the API's
      look-back, which reaches only 20 blocks: one turn of ten parallel tool calls (a
      use and a result each) is past it, and every later turn then writes the whole
      conversation again instead of reading it.
    """
    if not messages:
        return messages
    marked = list(messages)
    if not final:
        _mark(marked, len(marked) - 1)
    replies = [i for i, m in enumerate(marked) if m["role"] == "assistant"]
    if replies and replies[-1] > 0:
        _mark(marked, replies[-1] - 1)
    return marked


def _mark(messages: list[MessageParam], index: int) -> None:
    """Put a breakpoint on the last block of ``messages[index]`` (a copy: the
    conversation itself, journaled as it is, keeps no markers)."""
    message = copy.copy(messages[index])
    content = message["content"]
    blocks: list[Any] = (
        [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    )
    # A thinking block cannot carry a marker; nor can an empty text block.
    if (
        blocks
        and isinstance(blocks[-1], dict)
        and blocks[-1].get("type") not in ("thinking", "redacted_thinking")
        and not (blocks[-1].get("type") == "text" and not blocks[-1].get("text"))
    ):
        blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
    message["content"] = blocks
    messages[index] = message


def reply_action(content: list[Any], stop_reason: str | None) -> str:
    """What a model reply asks for, for progress events: the tools and their files or
    commands (progress is sampled, so this is often the only action a watcher sees)."""
    calls = [
        describe_call(str(block.get("name")), block.get("input") or {})
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_use"
    ]
    return "model asks: " + ", ".join(calls) if calls else f"model reply ({stop_reason})"
