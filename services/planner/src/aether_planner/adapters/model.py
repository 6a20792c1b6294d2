"""The planner's model calls through the anthropic SDK: tool use and a journal.

No prompt caching: a cache write costs 1.25 times plain input and pays only when a later
call reads it within five minutes, and no planner call knows that one will. A mission is
usually planned in one call; the next call on the same repository context (an answer to
the planner's questions, feedback on a plan) waits on a person, mostly for longer than
the cache lives; a correction follows only a rejected reply, which is known after the
call; and tools and system prompt alone are shorter than the models' minimum cacheable
prefix. Measured in ``bench/caching.py``; the reasoning is in ``docs/caching.md``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from aether_events import Usage
from aether_llm import usage_of
from aether_llm.client import LazyClient, client_of
from aether_planner.adapters.journal import CallJournal
from aether_planner.domain import PLAN_TOOL_SCHEMA, PlanSubmission
from aether_planner.prompt import SYSTEM_PROMPT

if TYPE_CHECKING:
    # The SDK is imported when the planner first asks the model or replays a reply
    # (``aether_llm.client``), not when it starts.
    import anthropic
    from anthropic.types import (
        Message,
        MessageParam,
        TextBlockParam,
        ToolChoiceAnyParam,
        ToolChoiceToolParam,
        ToolParam,
        ToolUseBlock,
    )

PLAN_TOOL: ToolParam = {
    "name": "submit_plan",
    "description": "Submit the plan: the tasks, their files, dependencies and tiers.",
    "input_schema": PLAN_TOOL_SCHEMA,
}
QUESTIONS_TOOL: ToolParam = {
    "name": "ask_clarifying_questions",
    "description": "Ask the user what you need to know before you can plan.",
    "input_schema": {
        "type": "object",
        "properties": {
            "questions": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": 5,
            }
        },
        "required": ["questions"],
    },
}
ANSWER_TOOL: ToolParam = {
    "name": "answer_question",
    "description": "Answer a mission that is a question rather than a change; no tasks.",
    "input_schema": {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    },
}
# Always the same tools in the same order and the same system prompt: a prompt prefix
# that never varies is what a provider's automatic prefix reuse (or a later cache
# breakpoint) can match.
TOOLS: list[ToolParam] = [QUESTIONS_TOOL, ANSWER_TOOL, PLAN_TOOL]
SYSTEM: list[TextBlockParam] = [{"type": "text", "text": SYSTEM_PROMPT}]
ANY_TOOL: ToolChoiceAnyParam = {"type": "any"}
FORCE_PLAN: ToolChoiceToolParam = {"type": "tool", "name": "submit_plan"}

Kind = Literal["plan", "questions", "answer", "none"]


class ModelUnavailable(Exception):
    """The model could not be reached (after the SDK's retries) or refused the request."""


class Questions(msgspec.Struct):
    questions: list[str]


class Answer(msgspec.Struct):
    answer: str


@dataclass
class Decision:
    """One model call: what it decided, whether it decoded, and its usage."""

    kind: Kind
    message: Message
    usage: Usage
    submission: PlanSubmission | None = None
    questions: list[str] | None = None
    answer: str | None = None
    problem: str | None = None
    replayed: bool = False


class PlannerModel:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic | LazyClient,
        journal: CallJournal | None = None,
        max_tokens: int = 8192,
    ) -> None:
        self._client = client
        self.journal = journal
        self._max_tokens = max_tokens

    async def call(
        self,
        *,
        key: str,
        model: str,
        context: str,
        mission: str,
        plan_only: bool,
        correction: tuple[Message, str] | None = None,
    ) -> Decision:
        """Ask the model once for step ``key`` (or replay its journaled reply)."""
        return await journaled_decision(
            self.journal,
            key,
            model,
            lambda: self._create(model, context, mission, plan_only, correction),
        )

    async def _create(
        self,
        model: str,
        context: str,
        mission: str,
        plan_only: bool,
        correction: tuple[Message, str] | None,
    ) -> Message:
        messages: list[MessageParam] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": context},
                    {"type": "text", "text": mission},
                ],
            }
        ]
        if correction is not None:
            previous, errors = correction
            messages.append({"role": "assistant", "content": previous.content})
            used = _tool_use(previous)
            fix = (
                "That was rejected. Fix exactly these problems and call the tool again with "
                f"the whole answer:\n{errors}"
            )
            if used is not None:
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": used.id,
                                "is_error": True,
                                "content": fix,
                            }
                        ],
                    }
                )
            else:
                messages.append({"role": "user", "content": fix})
        client = await client_of(self._client)
        import anthropic  # imported with the client: here only to name its errors

        try:
            return await client.messages.create(
                model=model,
                max_tokens=self._max_tokens,
                system=SYSTEM,
                tools=TOOLS,
                tool_choice=FORCE_PLAN if plan_only else ANY_TOOL,
                messages=messages,
            )
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as error:
            raise ModelUnavailable(f"the model endpoint could not be reached: {error}") from error
        except anthropic.APIStatusError as error:
            raise ModelUnavailable(
                f"the model endpoint answered {error.status_code}: {error.message}"
            ) from error


async def journaled_decision(
    journal: CallJournal | None,
    key: str,
    model: str,
    ask: Callable[[], Awaitable[Message]],
) -> Decision:
    """The decision for step ``key``: its reply replayed from ``journal`` when the step
    was answered before, else ``ask``ed once and journaled before it is decoded (so a
    planner killed after the call does not ask again). The real adapter and the scripted
    fake both go through here, so replay behaves the same in both."""
    message = await journal.get(key) if journal else None
    replayed = message is not None
    if message is None:
        message = await ask()
        if journal:
            await journal.put(key, message)
    return _decision(model, message, replayed)


def _tool_use(message: Message) -> ToolUseBlock | None:
    from anthropic.types import ToolUseBlock

    for block in message.content:
        if isinstance(block, ToolUseBlock):
            return block
    return None


def _decision(model: str, message: Message, replayed: bool) -> Decision:
    usage = usage_of(model, message.usage)
    used = _tool_use(message)
    if used is None:
        return Decision(
            "none", message, usage, problem="the reply called no tool", replayed=replayed
        )
    payload: Any = used.input
    try:
        if used.name == "submit_plan":
            submission = msgspec.convert(payload, PlanSubmission, strict=False)
            return Decision("plan", message, usage, submission=submission, replayed=replayed)
        if used.name == "ask_clarifying_questions":
            asked = msgspec.convert(payload, Questions, strict=False)
            questions = [q.strip() for q in asked.questions if q.strip()][:5]
            if not questions:
                raise msgspec.ValidationError("no questions were asked")
            return Decision("questions", message, usage, questions=questions, replayed=replayed)
        if used.name == "answer_question":
            answer = msgspec.convert(payload, Answer, strict=False).answer.strip()
            if not answer:
                raise msgspec.ValidationError("the answer is empty")
            return Decision("answer", message, usage, answer=answer, replayed=replayed)
    except msgspec.ValidationError as error:
        problem = f"the {used.name} call does not fit its schema: {error}"
        return Decision("none", message, usage, problem=problem, replayed=replayed)
    return Decision(
        "none", message, usage, problem=f"unknown tool {used.name!r}", replayed=replayed
    )
