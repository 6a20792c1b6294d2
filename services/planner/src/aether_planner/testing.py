"""A scripted ``PlanningModel`` for handler tests: replies from a list, no HTTP.

Each call takes the next scripted reply: an ``aether_llm.Reply`` (the message the
Messages API would return, decoded exactly as the real adapter decodes it), an
``aether_llm.ApiError`` (raised as ``ModelUnavailable``, as the SDK's error is), or an
async function of the call that returns one of those (to hold a call back, or to answer
from what was asked). Every call is recorded in ``asked``. A step already in the
``journal`` is replayed from it, as the real adapter does. ``tests/test_model_contract.py``
runs the same assertions against this class and the real adapter over the SDK; a
behaviour it does not check is not promised.

What it leaves out: the prompt itself (system text, tools, the message layout and any
cache markers are the real adapter's and are tested there), and the SDK's retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aether_llm import ApiError, Reply
from aether_planner.adapters.journal import CallJournal
from aether_planner.adapters.model import (  # the one decoding of a reply, shared
    Decision,
    ModelUnavailable,
    journaled_decision,
)

if TYPE_CHECKING:
    from anthropic.types import Message


@dataclass(frozen=True)
class Asked:
    """One call as the model would see it: ``correction`` is the reason the previous
    reply was rejected (``None`` on a first call)."""

    model: str
    context: str
    mission: str
    plan_only: bool
    correction: str | None = None


Scripted = Reply | ApiError | Callable[[Asked], Awaitable[Reply | ApiError]]


class ScriptedPlannerModel:
    """The fake of ``PlanningModel``: answers each call with the next scripted reply."""

    def __init__(self, replies: Iterable[Scripted] = ()) -> None:
        self.replies: list[Scripted] = list(replies)
        self.asked: list[Asked] = []
        self.journal: CallJournal | None = None

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
        asked = Asked(model, context, mission, plan_only, correction and correction[1])
        return await journaled_decision(self.journal, key, model, lambda: self._reply(asked))

    async def _reply(self, asked: Asked) -> Message:
        from anthropic.types import Message

        self.asked.append(asked)
        if not self.replies:
            raise ModelUnavailable("the model endpoint answered 500: the script has no replies")
        scripted = self.replies.pop(0)
        reply = scripted if isinstance(scripted, Reply | ApiError) else await scripted(asked)
        if isinstance(reply, ApiError):
            raise ModelUnavailable(f"the model endpoint answered {reply.status}: {reply.message}")
        request: dict[str, Any] = {"model": asked.model}
        return Message.model_validate(reply.to_message(request))
