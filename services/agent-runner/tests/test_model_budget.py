"""The metered model endpoint holds an attempt to its budget while calls are under way: the
real anthropic SDK calls the runner's endpoint (on its unix socket), which sends the calls
on to the local Messages API server. Each call reserves its worst case before it goes on,
so calls in flight together never pass the cost cap or the token limit; a streamed reply
whose spending passes a limit (a model endpoint that goes past ``max_tokens``) is cut off
there; and every call settles to exactly what its reply said it spent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from aether_agent_runner.domain import Limits, limit_passed, reservation_refused
from aether_agent_runner.runtimes import meter as budget
from aether_agent_runner.runtimes.meter import INPUT_ALLOWANCE
from aether_agent_runner.runtimes.model_endpoint import Meter, ModelEndpoint
from aether_events import Usage
from aether_llm import ApiError, Reply, load_prices, text_block
from aether_llm.messages_server import MessagesServer

from .test_command_runtime import until
from .test_model_endpoint import MODEL, REAL_KEY, Told

# A call's worst case here: the SDK's small body, the allowance, and ``MAX_TOKENS`` out.
MAX_TOKENS = 10_000


def worst_case(size: int, max_tokens: int) -> Usage:
    return budget.Meter(Limits(), Told(), load_prices()).worst_case(
        MODEL, budget.size_bound(size), max_tokens
    )


def priced(input_tokens: int, output_tokens: int) -> Usage:
    return load_prices().priced(
        MODEL, Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    )


@dataclass
class Served:
    """The model server, the endpoint in front of it, and an SDK client of the tool's."""

    server: MessagesServer
    meter: Meter
    told: Told
    client: anthropic.AsyncAnthropic
    # Requests the model has been sent, as they arrive (set in the test's loop).
    arrived: asyncio.Queue[dict[str, Any]]

    async def ask(self, text: str = "hi", max_tokens: int = MAX_TOKENS) -> anthropic.types.Message:
        return await self.client.messages.create(
            model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": text}]
        )

    async def stream(self, text: str, received: list[str]) -> None:
        """Ask for a streamed reply of up to 1,000 tokens; its text into ``received``."""
        async with self.client.messages.stream(
            model=MODEL, max_tokens=1_000, messages=[{"role": "user", "content": text}]
        ) as events:
            async for piece in events.text_stream:
                received.append(piece)


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Limits, Callable[[dict[str, Any]], Reply | ApiError]], Any]]:
    """``await served(limits, responder)``: the endpoint of an attempt with ``limits``
    before a Messages API server answering with ``responder``."""
    opened: list[tuple[MessagesServer, ModelEndpoint, Any]] = []
    loop = asyncio.get_running_loop()

    async def start(
        limits: Limits,
        responder: Callable[[dict[str, Any]], Reply | ApiError],
        count_tokens: Callable[[dict[str, Any]], int] | None = None,
    ) -> Served:
        arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def answer(request: dict[str, Any]) -> Reply | ApiError:
            loop.call_soon_threadsafe(arrived.put_nowait, request)
            return responder(request)

        server = MessagesServer(answer)
        if count_tokens is not None:
            server.count_tokens = count_tokens
        server.start()
        told = Told()
        meter = Meter(limits, told, load_prices())
        endpoint = ModelEndpoint(server.url, REAL_KEY, meter, frozenset({MODEL}))
        socket_path = tmp_path / f"model-{len(opened)}.sock"
        serving = endpoint.serving(socket_path)
        await serving.__aenter__()
        opened.append((server, endpoint, serving))
        client = anthropic.AsyncAnthropic(
            api_key=endpoint.placeholder,
            base_url="http://model",
            max_retries=0,
            http_client=httpx2.AsyncClient(
                transport=httpx2.AsyncHTTPTransport(uds=str(socket_path)), timeout=60
            ),
        )
        return Served(server, meter, told, client, arrived)

    yield start
    for server, _, serving in reversed(opened):
        await serving.__aexit__(None, None, None)
        server.stop()


def held_until(gate: threading.Event, reply: Reply) -> Callable[[dict[str, Any]], Reply]:
    def respond(request: dict[str, Any]) -> Reply:
        gate.wait(60)
        return reply

    return respond


@pytest.mark.parametrize("limit", ["cost", "tokens"])
async def test_calls_in_flight_that_together_could_pass_a_limit_are_refused(
    limit: str, served: Any
) -> None:
    """Room for two calls' worst case and a half: with two calls at the model, a third is
    refused at once and never reaches it; the attempt goes on, and once the two settle to
    what they spent (far less than their worst case), the room is back."""
    worst = worst_case(200, MAX_TOKENS)
    assert worst.cost_usd
    limits = (
        Limits(max_cost_usd=2.5 * worst.cost_usd)
        if limit == "cost"
        else Limits(max_tokens=int(2.5 * worst.total_tokens))
    )
    gate = threading.Event()
    answered = Reply([text_block("done")], input_tokens=900, output_tokens=300)
    s = await served(limits, held_until(gate, answered))
    try:
        first = asyncio.ensure_future(s.ask())
        second = asyncio.ensure_future(s.ask())
        async with asyncio.timeout(30):
            await s.arrived.get()
            await s.arrived.get()
        assert s.meter.in_flight == 2

        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            await s.ask()
        assert refused.value.status_code == 403
        body: Any = refused.value.body
        assert body["error"]["type"] == "permission_error"
        word = "cost limit" if limit == "cost" else "token limit"
        assert word in body["error"]["message"]
        assert "2 other model call(s) are under way" in body["error"]["message"]
        assert s.meter.reason is None  # not the attempt's end: only no room beside the two
        assert not s.meter.ended.is_set()
    finally:
        gate.set()
    async with asyncio.timeout(30):
        replies = await asyncio.gather(first, second)
    assert [r.content[0].text for r in replies] == ["done", "done"]  # type: ignore[union-attr]
    assert len(s.server.requests) == 2  # the refused call never reached the model

    # Settled to exactly what each reply said, published once each; nothing held.
    each = priced(900, 300)
    assert s.told.calls == [(1, each), (2, each)]
    assert s.meter.usage == each.plus(each)
    assert s.meter.in_flight == 0
    assert s.meter.turns == 2
    third = await s.ask()  # the two settled far below their worst case: room again
    assert third.content[0].text == "done"  # type: ignore[union-attr]
    assert s.meter.usage == each.plus(each).plus(each)


async def test_a_call_whose_worst_case_cannot_fit_ends_the_attempt(served: Any) -> None:
    """A call whose ``max_tokens`` alone could pass the cap is refused before the model, and
    the attempt ends (the tool would only ask the same again)."""
    worst = worst_case(200, MAX_TOKENS)
    assert worst.cost_usd
    s = await served(
        Limits(max_cost_usd=worst.cost_usd / 2), lambda r: Reply([text_block("x")], "end_turn")
    )
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        await s.ask()
    body: Any = refused.value.body
    assert body["error"]["message"].startswith("Aether: cost limit: a call of up to $")
    assert s.meter.ended.is_set()
    assert s.meter.reason is not None
    assert s.server.requests == []
    assert s.told.calls == []


async def test_a_large_request_the_size_bound_leaves_no_room_for_fits_by_the_models_count(
    served: Any,
) -> None:
    """A long prompt's size, as tokens, is past the cap; the model's count of it (asked with
    the fields a count takes) is well within: the call goes on, and settles to its reply."""
    prompt = "word " * 8_000  # 40,000 bytes; the server counts about a quarter of that
    worst_by_size = worst_case(len(prompt) + 200, MAX_TOKENS)
    cap = (worst_by_size.cost_usd or 0.0) * 0.8
    s = await served(
        Limits(max_cost_usd=cap),
        lambda r: Reply([text_block("read it")], input_tokens=10_000, output_tokens=50),
    )
    reply = await s.ask(prompt)
    assert reply.content[0].text == "read it"  # type: ignore[union-attr]
    [counted] = s.server.counted
    assert set(counted) == {"model", "messages"}  # no max_tokens: the API refuses it there
    assert s.told.calls == [(1, priced(10_000, 50))]
    assert s.meter.in_flight == 0


async def test_a_request_too_large_even_by_the_models_count_ends_the_attempt(served: Any) -> None:
    prompt = "word " * 8_000
    worst_by_count = worst_case(0, MAX_TOKENS)  # far less than the prompt's count
    s = await served(
        Limits(max_cost_usd=worst_by_count.cost_usd),
        lambda r: Reply([text_block("x")], input_tokens=1, output_tokens=1),
    )
    with pytest.raises(anthropic.PermissionDeniedError):
        await s.ask(prompt)
    assert len(s.server.counted) == 1
    assert s.server.requests == []
    assert s.meter.ended.is_set()


async def test_a_document_named_by_url_is_reserved_by_the_models_count_not_the_size(
    served: Any,
) -> None:
    """A request naming a document by URL is a few bytes that may be many tokens: its input
    is the model's count, so it is refused when that count leaves no room."""
    worst_by_size = worst_case(400, MAX_TOKENS)
    s = await served(
        Limits(max_cost_usd=(worst_by_size.cost_usd or 0.0) * 2),  # room by the size alone
        lambda r: Reply([text_block("x")], input_tokens=1, output_tokens=1),
        lambda r: 500_000,  # a long PDF
    )
    # A tool taking a URL is not a source named by one: no count for it.
    fetch = {
        "name": "fetch",
        "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}},
    }
    await s.client.messages.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        tools=[fetch],  # type: ignore[list-item]
        messages=[{"role": "user", "content": 'get "url" at {"type": "url"}'}],
    )
    assert s.server.counted == []

    document = {
        "type": "document",
        "source": {"type": "url", "url": "https://example.com/long.pdf"},
    }
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        await s.client.messages.create(
            model=MODEL,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": [document]}],  # type: ignore[list-item]
        )
    assert "cost limit: a call of up to $1." in refused.value.body["error"]["message"]  # type: ignore[index]
    assert len(s.server.counted) == 1
    assert len(s.server.requests) == 1  # the first call only
    assert s.meter.in_flight == 0


def _first_past(cap: float, input_tokens: int, output_tokens: int, marks: int) -> Usage:
    """The usage the long reply reports (after each of its ``marks`` pieces) that is the
    first past ``cap``."""
    for done in range(1, marks + 1):
        usage = priced(input_tokens, max(1, output_tokens * done // marks))
        if (usage.cost_usd or 0.0) > cap:
            return usage
    raise AssertionError("the reply never passes the cap")


async def test_a_long_streamed_reply_is_cut_off_when_its_spending_passes_the_cap(
    served: Any,
) -> None:
    """The model goes on far past the request's ``max_tokens`` (reporting its usage as it
    goes): the endpoint ends the tool's stream with an error event at the first usage past
    the cap, closes the model's connection, ends the attempt, and counts exactly that
    usage, once."""
    pieces = 2_000
    long = Reply(
        [text_block("x" * pieces)],
        input_tokens=1_000,
        output_tokens=200_000,
        pieces=pieces,
        piece_seconds=0.005,  # the whole reply would take ten seconds
    )
    cap = 0.5
    s = await served(Limits(max_cost_usd=cap), lambda r: long)
    pieces_received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as cut:
        await s.stream("write", pieces_received)
    received = "".join(pieces_received)
    body: Any = cut.value.body
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["message"].startswith("Aether: cost limit reached: $")
    assert "the reply was cut off" in body["error"]["message"]
    assert 0 < len(received) < pieces // 2  # a quarter of the way: the cap's share of it

    expected = _first_past(cap, 1_000, 200_000, pieces)
    assert s.told.calls == [(1, expected)]
    assert s.meter.usage == expected
    assert s.meter.in_flight == 0
    assert s.meter.ended.is_set()
    assert s.meter.reason is not None
    assert s.meter.reason.startswith("cost limit reached")
    # The model's connection was closed: it noticed before the reply's end.
    await until(lambda: s.server.streams_cut == 1, timeout=30)


async def test_a_reply_read_in_bunches_is_cut_at_its_first_usage_past_the_cap(
    served: Any,
) -> None:
    """The same reply written all at once: the endpoint reads many of its events in one
    chunk (as a loaded machine does), and still counts the first usage past the cap and
    passes nothing after it, not the chunk's last usage."""
    pieces = 2_000
    burst = Reply(
        [text_block("x" * pieces)], input_tokens=1_000, output_tokens=200_000, pieces=pieces
    )
    cap = 0.5
    s = await served(Limits(max_cost_usd=cap), lambda r: burst)
    pieces_received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as cut:
        await s.stream("write", pieces_received)
    body: Any = cut.value.body
    assert "the reply was cut off" in body["error"]["message"]
    expected = _first_past(cap, 1_000, 200_000, pieces)
    assert s.told.calls == [(1, expected)]
    assert s.meter.usage == expected
    # Passed on: the text up to that usage, none after it.
    assert len("".join(pieces_received)) <= expected.output_tokens * pieces // 200_000


async def test_a_call_under_way_is_cut_off_when_another_passes_the_limit(served: Any) -> None:
    """One whole call waits at the model while a long stream passes the token limit: both
    end then (the waiting one with a ``403``), and only what was reported counts."""
    gate = threading.Event()
    pieces = 1_000
    long = Reply(
        [text_block("y" * pieces)],
        input_tokens=100,
        output_tokens=50_000,
        pieces=pieces,
        piece_seconds=0.005,
    )
    waiting = Reply([text_block("late")], input_tokens=10, output_tokens=10)

    def respond(request: dict[str, Any]) -> Reply:
        return long if request.get("stream") else held_until(gate, waiting)(request)

    limits = Limits(max_tokens=30_000)
    s = await served(limits, respond)
    try:
        whole = asyncio.ensure_future(s.ask(max_tokens=100))
        async with asyncio.timeout(30):
            await s.arrived.get()
        with pytest.raises(anthropic.APIStatusError):
            await s.stream("go", [])
        with pytest.raises(anthropic.PermissionDeniedError) as cut:
            async with asyncio.timeout(30):
                await whole
    finally:
        gate.set()
    message: str = cut.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("Aether: token limit reached:")
    assert message.endswith("the call was cut off")
    # Only the stream reported usage: the first figure past the limit, counted once.
    spent = s.meter.usage
    assert [turn for turn, _ in s.told.calls] == [1]
    assert s.told.calls[0][1] == spent
    assert spent.input_tokens == 100
    assert spent.total_tokens > 30_000
    assert spent.total_tokens - 50_000 // pieces <= 30_000  # one piece past, no more
    assert s.meter.in_flight == 0


# --- the rules themselves -----------------------------------------------------------------


def test_a_reservation_fits_up_to_the_limit_and_not_past_it() -> None:
    limits = Limits(max_tokens=1_000, max_cost_usd=1.0)
    spent = Usage(input_tokens=300, cost_usd=0.25)
    held = Usage(input_tokens=200, cost_usd=0.25)
    assert reservation_refused(limits, spent, held, Usage(input_tokens=500, cost_usd=0.5)) is None
    too_many = reservation_refused(limits, spent, held, Usage(input_tokens=501, cost_usd=0.1))
    assert (
        too_many == "token limit: a call of up to 501 tokens does not fit in the 500 of 1,000 left"
    )
    too_dear = reservation_refused(limits, spent, held, Usage(input_tokens=1, cost_usd=0.51))
    assert (
        too_dear
        == "cost limit: a call of up to $0.5100 does not fit in the $0.5000 of $1.0000 left"
    )
    # A model without a price reserves its tokens only, as its calls count.
    assert reservation_refused(limits, spent, held, Usage(input_tokens=5, cost_usd=None)) is None


def test_a_limit_is_passed_only_beyond_it() -> None:
    limits = Limits(max_tokens=1_000, max_cost_usd=1.0)
    assert limit_passed(limits, Usage(input_tokens=1_000, cost_usd=1.0)) is None
    assert limit_passed(limits, Usage(input_tokens=1_001, cost_usd=0.0)) == (
        "token limit reached: 1,001 tokens of 1,000 allowed"
    )
    assert limit_passed(limits, Usage(input_tokens=1, cost_usd=1.5)) == (
        "cost limit reached: $1.5000 spent of $1.0000 allowed"
    )


def test_the_worst_case_is_the_input_bound_and_max_tokens_at_the_dearest_rates() -> None:
    prices = load_prices()
    price = prices.price_of(MODEL)
    assert price is not None
    assert budget.size_bound(1_000) == 1_000 + INPUT_ALLOWANCE
    assert budget.counted_bound(1_000) > 1_000
    worst = Meter(Limits(), Told(), prices).worst_case(MODEL, 5_000, 2_000)
    assert worst.input_tokens == 5_000
    assert worst.output_tokens == 2_000
    dearest = max(price.input, price.cache_write, price.cache_read)
    assert worst.cost_usd == pytest.approx((5_000 * dearest + 2_000 * price.output) / 1e6)
    unpriced = Meter(Limits(), Told(), prices).worst_case("no-such-model", 10, 10)
    assert unpriced.cost_usd is None
