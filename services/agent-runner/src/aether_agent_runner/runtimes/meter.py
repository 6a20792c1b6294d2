"""An attempt's budget at the metered model endpoint (``model_endpoint``): each call reserves
its worst case before it is sent on, spends as its reply tells, and settles to what it
spent when it ends.

- **Worst case**: the input is bounded by the request's size (``size_bound``: every token
  the model reads is at least one byte of the request's JSON, and ``INPUT_ALLOWANCE``
  covers what the bytes do not show, such as the system prompt of tool use) or, when that
  bound leaves no room, by the model endpoint's own count of it with a margin
  (``counted_bound``); it is priced at the model's dearest input rate (a cache write). The
  output is bounded by the request's ``max_tokens``, at the output rate; both rates from
  the one price table. A model without a price reserves its tokens only.
- **Admission**: a call starts only when its worst case fits in what the attempt has left
  once the settled calls and every call in flight are counted (``reservation_refused``);
  so calls that all keep within their worst case never pass a limit together. One that
  could not fit even alone ends the attempt (the tool would only ask it again); one that
  does not fit beside the calls in flight is refused alone (it may fit once they end).
- **Spending**: a reply's usage so far (a stream's ``message_start`` and ``message_delta``,
  a whole reply's ``usage``) replaces its reservation where it is larger; once spending
  passes a limit (``limit_passed``: a model endpoint that went past the bound), every call
  still running is cut off and the attempt ends.
- **Settlement**: a call that ends (answered, cut off or failed) gives up its reservation
  and its usage, if any, is counted, priced once, and published (``Meter.replied``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aether_agent_runner.adapters.model import Observer
from aether_agent_runner.domain import Limits, limit_passed, limit_reached, reservation_refused
from aether_events import Usage, known_cost
from aether_llm import PriceTable

# Input tokens a request's bytes may not show: the system prompt the API adds for tool use
# and the definitions of its built-in tools (each a few hundred tokens, named in a few
# bytes).
INPUT_ALLOWANCE = 4_096


def size_bound(size: int) -> int:
    """The most input tokens a request of ``size`` bytes can hold."""
    return size + INPUT_ALLOWANCE


def counted_bound(counted: int) -> int:
    """The input tokens reserved for a request the model endpoint counted: its count is an
    estimate ("may differ by a small amount"), so a tenth more."""
    return counted + counted // 10 + 64


@dataclass(frozen=True)
class Refusal:
    """Why a call may not start; ``ends``: no call like it can, the attempt is over."""

    message: str
    ends: bool


@dataclass(eq=False)
class Call:
    """One metered call in flight: its reservation and what its reply has told so far."""

    model: str
    worst: Usage
    counts: dict[str, Any] = field(default_factory=dict)
    spent: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    # The task answering it, while cutting it off means cancelling that task.
    task: asyncio.Task[Any] | None = None
    # Why it was cut off, once it is.
    cut: str | None = None

    def held(self) -> tuple[int, float]:
        """The tokens and cost it holds: its worst case, or what it spent where that is
        more."""
        tokens = max(self.worst.total_tokens, self.spent.total_tokens)
        return tokens, max(known_cost(self.worst), known_cost(self.spent))


@dataclass
class Meter:
    """An attempt's model calls as they pass the endpoint: reserved, counted, priced,
    published (with ``publish``), and held to the attempt's limits. ``turns`` and
    ``usage`` start from what earlier runs of the attempt spent; ``record`` journals each
    reply before it is published (a resumed run counts it)."""

    limits: Limits
    observer: Observer
    prices: PriceTable
    turns: int = 0
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    publish: bool = True
    record: Callable[[str, Usage], Awaitable[None]] | None = None
    # The limit that refused or cut off a call; set, the attempt is over.
    reason: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Calls sent on and not yet settled: they count against every limit already.
    calls: list[Call] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return len(self.calls)

    def refusal(self) -> str | None:
        """The limit that forbids another call, or ``None``. The wall time is the
        sandbox's: a tool past it is killed, not refused."""
        if self.reason is None:
            self.reason = limit_reached(self.limits, self.turns + self.in_flight, self.usage, 0.0)
        return self.reason

    def worst_case(self, model: str, input_tokens: int, max_tokens: int) -> Usage:
        """The most a call of up to ``input_tokens`` asking for ``max_tokens`` may spend."""
        price = self.prices.price_of(model)
        cost = None
        if price is not None:
            dearest = max(price.input, price.cache_write, price.cache_read)
            cost = (input_tokens * dearest + max_tokens * price.output) / 1_000_000
        return Usage(input_tokens=input_tokens, output_tokens=max_tokens, cost_usd=cost)

    def reserve(self, model: str, input_tokens: int, max_tokens: int) -> Call | Refusal:
        """Reserve a call's worst case (see the module), or say why it may not start."""
        if (reason := self.refusal()) is not None:
            return Refusal(reason, ends=True)
        wanted = self.worst_case(model, input_tokens, max_tokens)
        alone = reservation_refused(self.limits, self.usage, Usage(cost_usd=0.0), wanted)
        if alone is not None:
            return Refusal(alone, ends=True)
        beside = reservation_refused(self.limits, self.usage, self._held(), wanted)
        if beside is not None:
            message = f"{beside} while {self.in_flight} other model call(s) are under way"
            return Refusal(message, ends=False)
        call = Call(model, wanted, task=asyncio.current_task())
        self.calls.append(call)
        return call

    def release(self, call: Call) -> None:
        """Give up a reservation no call was made on."""
        self.calls.remove(call)

    def end(self, reason: str) -> None:
        """The attempt is over: no more calls, and the tool is stopped."""
        if self.reason is None:
            self.reason = reason
        self.ended.set()

    def _held(self) -> Usage:
        tokens, cost = 0, 0.0
        for call in self.calls:
            held_tokens, held_cost = call.held()
            tokens += held_tokens
            cost += held_cost
        return Usage(input_tokens=tokens, cost_usd=cost)

    def progress(self, call: Call, counts: dict[str, Any]) -> str | None:
        """Take what a reply says it has spent so far (its usage object, cumulative
        figures merged). Returns the limit the attempt's spending has now passed, or
        ``None``; past one, every other call in flight is cut off (``cut_off``)."""
        call.counts = counts
        call.spent = self.prices.priced(call.model, _tokens(counts))
        spending = self.usage
        for each in self.calls:
            spending = spending.plus(each.spent)
        reason = limit_passed(self.limits, spending)
        if reason is not None:
            for other in self.calls:
                if other is not call:
                    self.cut_off(other, reason)
        return reason

    def cut_off(self, call: Call, reason: str) -> None:
        """End ``call`` short for ``reason``, if its reply is still coming: the attempt is
        over. Another task answering it is cancelled (it answers the tool with the
        reason)."""
        task, call.task = call.task, None
        if task is None or call.cut is not None:
            return
        call.cut = reason
        self.end(reason)
        if task is not asyncio.current_task():
            task.cancel()

    async def settle(self, call: Call) -> None:
        """A call ended: its reservation is given up and what it spent is counted."""
        call.task = None
        self.calls.remove(call)
        if call.counts:
            await self.replied(call.model, call.counts)

    async def replied(self, model: str, counts: dict[str, Any]) -> None:
        """Count one reply (its usage object, cumulative figures merged)."""
        tokens = _tokens(counts)
        priced = self.prices.priced(model, tokens)
        self.turns += 1
        self.usage = self.usage.plus(priced)
        if self.record is not None:
            await self.record(model, tokens)
        if self.publish:
            await self.observer.model_called(self.turns, priced)


def _tokens(counts: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=_count(counts, "input_tokens"),
        output_tokens=_count(counts, "output_tokens"),
        cache_creation_input_tokens=_count(counts, "cache_creation_input_tokens"),
        cache_read_input_tokens=_count(counts, "cache_read_input_tokens"),
    )


def _count(counts: dict[str, Any], key: str) -> int:
    value = counts.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
