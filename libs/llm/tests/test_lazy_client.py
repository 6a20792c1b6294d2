"""``LazyClient``: the client ``make_client`` builds, built (and the anthropic SDK
imported) only when it is first asked for, and the same in every way that shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from aether_llm import LLMSettings, make_client
from aether_llm.client import LazyClient, client_of, endpoint_of


def test_holding_a_client_does_not_import_the_sdk_and_building_it_does() -> None:
    script = (
        "import sys\n"
        "from aether_llm import LLMSettings\n"
        "from aether_llm.client import LazyClient, endpoint_of\n"
        "held = LazyClient(LLMSettings(api_key='k', base_url='http://127.0.0.1:9'))\n"
        "endpoint_of(held)\n"
        "print('anthropic' in sys.modules)\n"
        "held.now()\n"
        "print('anthropic' in sys.modules)\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert ran.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "settings",
    [
        LLMSettings(api_key="k", base_url="http://127.0.0.1:9"),
        LLMSettings(api_key="k", base_url="http://127.0.0.1:9/"),
        LLMSettings(api_key="k", base_url="http://Models.Example:443/v1//"),
        LLMSettings(api_key="", base_url="https://models.example", offline_mode=False),
        LLMSettings(api_key=None, base_url=None),  # the offline model's server
        LLMSettings(api_key="k", base_url=None),  # the SDK's default URL
    ],
)
def test_the_endpoint_is_the_built_client_s(settings: LLMSettings) -> None:
    assert endpoint_of(LazyClient(settings)) == endpoint_of(make_client(settings))


async def test_the_client_is_built_once() -> None:
    held = LazyClient(LLMSettings(api_key="k", base_url="http://127.0.0.1:9", max_retries=3))
    first = await client_of(held)
    assert first is held.now()
    assert await client_of(held) is first
    assert await client_of(first) is first
    assert first.max_retries == 3


def test_the_configured_models_series_are_at_zero_before_the_client_is_built() -> None:
    tiers = {"small": "lazy-small", "standard": "lazy-standard", "complex": "lazy-complex"}
    LazyClient(LLMSettings(api_key="k", base_url="http://127.0.0.1:9", tiers=tiers))
    for model in tiers.values():
        labels = {"model": model, "outcome": "ok"}
        assert REGISTRY.get_sample_value("aether_model_requests_total", labels) == 0.0


def test_the_sdk_gathers_no_span_attributes_when_no_span_could_be_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from aether_llm.client import sdk_spans

    # This environment has the OpenTelemetry API (the SDK's dependency) and no
    # OpenTelemetry SDK: every span would be a no-op, so the client is built without.
    assert importlib.util.find_spec("opentelemetry.sdk") is None
    assert sdk_spans() is False
    client = make_client(LLMSettings(api_key="k", base_url="http://127.0.0.1:9"))
    assert client._open_telemetry["traces"]["enabled"] is False
    assert client._tracer is None
    # With an OpenTelemetry SDK installed: the SDK's default, its spans on.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: object() if name == "opentelemetry.sdk" else find_spec(name, *rest),
    )
    assert sdk_spans() is None
    client = make_client(LLMSettings(api_key="k", base_url="http://127.0.0.1:9"))
    assert client._open_telemetry["traces"]["enabled"] is True


async def test_calls_go_through_aiohttp_and_close_with_the_client() -> None:
    import aiohttp

    from aether_llm import MessagesServer, Reply, text_block
    from aether_llm.streamed import stream_reply

    server = MessagesServer(lambda request: Reply([text_block("done")], "end_turn", 3, 1)).start()
    try:
        held = LazyClient(LLMSettings(api_key="k", base_url=server.url, max_retries=0))
        client = await client_of(held)
        reply = await stream_reply(
            client,
            model="claude-haiku-4-5",
            max_tokens=16,
            system=[],
            tools=[],
            messages=[{"role": "user", "content": "finish"}],
        )
        assert reply.content == [{"type": "text", "text": "done"}]
        session = client._client._transport._inner.client  # the meter, then aiohttp's
        assert isinstance(session, aiohttp.ClientSession) and not session.closed
        await held.aclose()
        assert session.closed
        # Asked again, a client is built again; closing twice is closing once.
        assert await client_of(held) is not client
        await held.aclose()
        await held.aclose()
    finally:
        server.stop()
