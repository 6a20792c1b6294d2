"""Model-call metrics through the real anthropic SDK against a local Messages API server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from prometheus_client import REGISTRY

from aether_llm import ApiError, LLMSettings, MessagesServer, Reply, make_client, text_block
from aether_llm.metrics import _model_of

MODEL = "claude-haiku-5-5"  # priced in the bundled table


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reply(request: dict[str, Any]) -> Reply:
    return Reply(
        [text_block("hello")],
        input_tokens=100,
        output_tokens=20,
        cache_creation_input_tokens=300,
        cache_read_input_tokens=4000,
    )


@pytest.fixture
def server() -> Iterator[MessagesServer]:
    running = MessagesServer(reply).start()
    yield running
    running.stop()


def client_for(server: MessagesServer, retries: int = 0) -> anthropic.AsyncAnthropic:
    return make_client(LLMSettings(api_key="test", base_url=server.url, max_retries=retries))


def snapshot(model: str) -> dict[str, float]:
    return {
        "ok": value("aether_model_requests_total", model=model, outcome="ok"),
        "overloaded": value("aether_model_requests_total", model=model, outcome="overloaded"),
        "input": value("aether_model_tokens_total", model=model, kind="input"),
        "output": value("aether_model_tokens_total", model=model, kind="output"),
        "cache_write": value("aether_model_tokens_total", model=model, kind="cache_write"),
        "cache_read": value("aether_model_tokens_total", model=model, kind="cache_read"),
        "cost": value("aether_model_cost_usd_total", model=model),
        "unpriced": value("aether_model_unpriced_responses_total", model=model),
        "calls_timed": value("aether_model_request_duration_seconds_count", model=model),
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: round(after[key] - before[key], 10) for key in before}


async def test_a_whole_reply_counts_one_call_its_tokens_by_kind_and_its_cost(
    server: MessagesServer,
) -> None:
    before = snapshot(MODEL)
    message = await client_for(server).messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    change = delta(before, snapshot(MODEL))
    assert message.usage.input_tokens == 100  # the SDK still reads the body it expects
    assert change["ok"] == 1
    assert change["calls_timed"] == 1
    assert (change["input"], change["output"]) == (100, 20)
    assert (change["cache_write"], change["cache_read"]) == (300, 4000)
    assert change["cost"] > 0
    assert change["unpriced"] == 0


async def test_a_streamed_reply_counts_its_final_usage_once(server: MessagesServer) -> None:
    before = snapshot(MODEL)
    async with client_for(server).messages.stream(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = await stream.get_final_message()
    change = delta(before, snapshot(MODEL))
    assert final.content[0].type == "text"
    assert change["ok"] == 1
    assert change["calls_timed"] == 1
    # message_start carries the input side, message_delta the cumulative output.
    assert (change["input"], change["output"]) == (100, 20)
    assert (change["cache_write"], change["cache_read"]) == (300, 4000)


async def test_a_model_without_a_price_is_counted_as_unpriced_not_guessed(
    server: MessagesServer,
) -> None:
    model = "some-model-nobody-prices"
    before = snapshot(model)
    await client_for(server).messages.create(
        model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    change = delta(before, snapshot(model))
    assert change["input"] == 100
    assert change["cost"] == 0
    assert change["unpriced"] == 1


async def test_every_retry_of_an_overloaded_endpoint_is_a_counted_call() -> None:
    answers = iter(
        [ApiError(529, "overloaded_error", "busy"), ApiError(529, "overloaded_error", "busy")]
    )

    def flaky(request: dict[str, Any]) -> Reply | ApiError:
        return next(answers, None) or reply(request)

    server = MessagesServer(flaky).start()
    try:
        before = snapshot(MODEL)
        await client_for(server, retries=2).messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        change = delta(before, snapshot(MODEL))
    finally:
        server.stop()
    assert change["overloaded"] == 2
    assert change["ok"] == 1
    assert change["calls_timed"] == 3
    assert change["input"] == 100  # only the reply that succeeded reports usage


async def test_an_unreachable_endpoint_is_counted_as_a_connection_error() -> None:
    client = make_client(LLMSettings(api_key="test", base_url="http://127.0.0.1:9", max_retries=0))
    before = value("aether_model_requests_total", model=MODEL, outcome="connection_error")
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    after = value("aether_model_requests_total", model=MODEL, outcome="connection_error")
    assert after - before == 1


def test_a_client_exports_its_configured_models_series_at_zero_before_any_call() -> None:
    tiers = {"small": "zero-small", "standard": "zero-standard", "complex": "zero-complex"}
    make_client(LLMSettings(api_key="test", base_url="http://127.0.0.1:9", tiers=tiers))
    for model in tiers.values():
        labels = {"model": model}
        get = REGISTRY.get_sample_value
        assert get("aether_model_requests_total", {**labels, "outcome": "ok"}) == 0.0
        assert get("aether_model_requests_total", {**labels, "outcome": "overloaded"}) == 0.0
        assert get("aether_model_tokens_total", {**labels, "kind": "cache_read"}) == 0.0
        assert get("aether_model_cost_usd_total", labels) == 0.0
        assert get("aether_model_unpriced_responses_total", labels) == 0.0
        assert get("aether_model_request_duration_seconds_count", labels) == 0.0


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"messages": [{"role": "user", "content": "model"}], "model": "claude-x"}', "claude-x"),
        (b'{"model": "", "max_tokens": 1}', "unknown"),
        (b'{"model": 7}', "unknown"),
        (b'["model", "claude-x"]', "unknown"),
        (b'{"model": "claude-x"', "unknown"),
    ],
)
def test_a_call_is_labelled_with_its_requests_model_or_unknown(body: bytes, model: str) -> None:
    request = httpx2.Request("POST", "http://model.invalid/v1/messages", content=body)
    assert _model_of(request) == model
