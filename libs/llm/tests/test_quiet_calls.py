"""A service's logs hold no line per model call from the SDK's HTTP client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from aether_llm import LLMSettings, MessagesServer, Reply, make_client, text_block
from aether_runtime.logs import configure_logging


def reply(request: dict[str, Any]) -> Reply:
    return Reply([text_block("hello")], input_tokens=10, output_tokens=2)


@pytest.fixture
def service_logging(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The services' logging, writing to the captured stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("test")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_model_call_logs_no_request_line(
    capfd: pytest.CaptureFixture[str], service_logging: None
) -> None:
    server = MessagesServer(reply).start()
    address = server.url.split("//")[1]
    try:
        client = make_client(LLMSettings(api_key="test", base_url=server.url, max_retries=0))

        async def call() -> None:
            await client.messages.create(
                model="claude-haiku-5-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
            )
            logging.getLogger("aether.test").info("after the call")

        asyncio.run(call())
    finally:
        server.stop()
    logged = capfd.readouterr().err
    assert "after the call" in logged  # the service's own records still reach stderr
    assert "HTTP Request" not in logged
    assert address not in logged
