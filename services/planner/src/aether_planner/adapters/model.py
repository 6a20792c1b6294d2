"""The planner's model calls through the anthropic SDK (tool use, prompt caching)."""

from __future__ import annotations

from dataclasses import dataclass

import anthropic
import msgspec
from anthropic.types import (
    Message,
    MessageParam,
    TextBlockParam,
    ToolChoiceToolParam,
    ToolParam,
    ToolUseBlock,
)

from aether_events import MissionRequested, RepositoryPrepared, Usage
from aether_llm import usage_of
from aether_planner.domain import PLAN_TOOL_SCHEMA, PlanSubmission
from aether_planner.prompt import SYSTEM_PROMPT, repository_context, request_text

PLAN_TOOL: ToolParam = {
    "name": "submit_plan",
    "description": "Submit the plan: the tasks, their files, dependencies and tiers.",
    "input_schema": PLAN_TOOL_SCHEMA,
}
FORCE_PLAN: ToolChoiceToolParam = {"type": "tool", "name": "submit_plan"}
SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
]


class ModelUnavailable(Exception):
    """The model could not be reached (after the SDK's retries) or refused the request."""


@dataclass
class Attempt:
    """One model call: the submission it carried (if it decoded) and its usage."""

    submission: PlanSubmission | None
    decode_error: str | None
    usage: Usage
    message: Message


class PlannerModel:
    def __init__(self, client: anthropic.AsyncAnthropic, max_tokens: int = 8192) -> None:
        self._client = client
        self._max_tokens = max_tokens

    async def plan(
        self,
        model: str,
        request: MissionRequested,
        prepared: RepositoryPrepared,
        correction: tuple[Message, str] | None = None,
    ) -> Attempt:
        """Ask for a plan; with ``correction`` (the previous reply and its errors), ask again."""
        messages: list[MessageParam] = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": repository_context(prepared),
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": request_text(request)},
                ],
            }
        ]
        if correction is not None:
            previous, errors = correction
            tool_use = _tool_use(previous)
            messages.append({"role": "assistant", "content": previous.content})
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": tool_use.id if tool_use else "none",
                            "is_error": True,
                            "content": "The plan was rejected. Fix exactly these errors and "
                            f"submit the whole plan again:\n{errors}",
                        }
                    ],
                }
            )
        try:
            message = await self._client.messages.create(
                model=model,
                max_tokens=self._max_tokens,
                system=SYSTEM,
                tools=[PLAN_TOOL],
                tool_choice=FORCE_PLAN,
                messages=messages,
            )
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as error:
            raise ModelUnavailable(f"the model endpoint could not be reached: {error}") from error
        except anthropic.APIStatusError as error:
            raise ModelUnavailable(
                f"the model endpoint answered {error.status_code}: {error.message}"
            ) from error
        usage = usage_of(model, message.usage)
        tool_use = _tool_use(message)
        if tool_use is None:
            return Attempt(None, "the reply did not call submit_plan", usage, message)
        try:
            submission = msgspec.convert(tool_use.input, PlanSubmission, strict=False)
        except msgspec.ValidationError as error:
            return Attempt(
                None, f"the submitted plan does not fit the schema: {error}", usage, message
            )
        return Attempt(submission, None, usage, message)


def _tool_use(message: Message) -> ToolUseBlock | None:
    for block in message.content:
        if isinstance(block, ToolUseBlock) and block.name == "submit_plan":
            return block
    return None
